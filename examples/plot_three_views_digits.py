"""
One field, three views, on digits
=================================

`odenet.compare` trains one shared parabolic vector field, from one initialisation, as a
ResNet (4 explicit Euler steps), an implicit ResNet (4 backward-Euler steps, gradients by
the implicit-function theorem) and a Neural ODE (adaptive `dopri5`), then evaluates each
trained model under every view's solver. The quick mode trains on 128 images for one
epoch, so the accuracies only show the mechanics; `odenet compare --out
runs/compare` is the full job (see [One field, three views](../../three-views.md)).
"""

# %%
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import odenet

QUICK = os.environ.get("ODENET_EXAMPLES_QUICK", "1") != "0"
out = tempfile.mkdtemp(prefix="odenet-compare-")
report = odenet.compare(limit_train=128 if QUICK else None, limit_test=100 if QUICK else None,
                        epochs=1 if QUICK else 4, epsilons=(0.0,) if QUICK else (0.0, 0.05), out=out, quiet=True,
                        plots=False)
print(odenet.format_table(report))

# %%
# Rows: the view a model was trained as; columns: the solver it is evaluated with.
views = list(report["models"])
acc = np.array([[report["models"][m]["cross_solver"][v] for v in views] for m in views])
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
im = ax1.imshow(acc, vmin=0, vmax=1, cmap="viridis")
ax1.set_xticks(range(len(views)), [f"as {v}" for v in views])
ax1.set_yticks(range(len(views)), [f"trained {v}" for v in views])
for i in range(len(views)):
    for j in range(len(views)):
        ax1.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", color="w")
ax1.set_title("test accuracy across solvers")
nfe = [report["models"][m]["nfe_forward_per_batch"] for m in views]
ax2.bar(views, nfe)
ax2.set_ylabel("field evaluations per batch (forward)")
fig.tight_layout()
plt.show()
