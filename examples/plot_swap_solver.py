"""
Swapping the solver of a trained model
======================================

Train a classifier whose hidden layer is an `ODEBlock` with 4 forward-Euler steps (a
ResNet), then evaluate the same weights under other integrators without retraining:
more Euler steps, RK4, adaptive Dormand–Prince, backward Euler. The block's solver is a
setting, not part of the weights.
"""

# %%
import os

import matplotlib.pyplot as plt
import torch

import odenet

QUICK = os.environ.get("ODENET_EXAMPLES_QUICK", "1") != "0"
torch.manual_seed(0)
data = odenet.load_dataset("circles", n_samples=600 if QUICK else 2000)
model = odenet.MLPClassifier(2, data.num_classes, hidden=32, method="euler", steps=4)
result = odenet.fit(model, data, epochs=15 if QUICK else 60, lr=1e-2, quiet=True, device="cpu")
print(f"trained as a ResNet (euler, 4 steps) for {len(result.metrics)} epochs in {result.train_time:.1f} s")

# %%
# The same weights under other solvers: `using_solver` swaps every block's configuration
# inside the `with` and restores it on exit.
settings = {
    "euler, 4 steps (trained)": dict(method="euler", steps=4),
    "euler, 64 steps": dict(method="euler", steps=64),
    "rk4, 4 steps": dict(method="rk4", steps=4),
    "dopri5, tol 1e-6": dict(method="dopri5", rtol=1e-6, atol=1e-8),
    "implicit_euler, 4 steps": dict(method="implicit_euler", steps=4),
}
acc = {}
for label, cfg in settings.items():
    with model.using_solver(**cfg):
        acc[label] = odenet.evaluate(model, data.x_test, data.y_test)["accuracy"]
    print(f"{label:26s} test accuracy {acc[label]:.3f}")

# %%
# A model trained with few Euler steps is a *discrete* map: a finer solver computes a
# different function (the ODE the weights define), and accuracy can move either way.
fig, ax = plt.subplots(figsize=(7, 3))
ax.barh(list(acc), list(acc.values()), color=["C0"] + ["C1"] * (len(acc) - 1))
ax.set_xlim(0, 1)
ax.set_xlabel("test accuracy")
ax.invert_yaxis()
fig.tight_layout()
plt.show()
