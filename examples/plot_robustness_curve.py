"""
A robustness curve: accuracy against attack size
================================================

Train the same small MLP classifier on two circles as a ResNet and as an implicit ResNet,
and measure its test accuracy under FGSM attacks and
Gaussian noise of growing size with `odenet.accuracy_vs_epsilon` and
`odenet.noise_accuracy`. The `odenet robustness` job does this for every view with PGD,
transfer and Square attacks over several seeds (see
[Stability and robustness](../../stability-and-robustness.md)).
"""

# %%
import os

import matplotlib.pyplot as plt
import torch

import odenet

QUICK = os.environ.get("ODENET_EXAMPLES_QUICK", "1") != "0"
torch.manual_seed(0)
data = odenet.load_dataset("circles", n_samples=600 if QUICK else 2000)
eps = [0.0, 0.02, 0.05, 0.1, 0.2]
sigmas = [0.0, 0.1, 0.2, 0.4]
fgsm, noise = {}, {}
for view in ("resnet", "implicit"):  # the same initial weights for both views
    torch.manual_seed(0)
    model = odenet.build_view_model(view, data, width=16)
    odenet.fit(model, data, epochs=10 if QUICK else 40, lr=1e-2, quiet=True, device="cpu")
    fgsm[view] = odenet.accuracy_vs_epsilon(model, data, eps)
    noise[view] = odenet.noise_accuracy(model, data, sigmas)
    print(f"{view:9s} FGSM " + "  ".join(f"{e:g}: {a:.2f}" for e, a in zip(eps, fgsm[view])))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
for view in fgsm:
    ax1.plot(eps, fgsm[view], "o-", label=view)
    ax2.plot(sigmas, noise[view], "o-", label=view)
ax1.set_xlabel("FGSM epsilon (fraction of the input range)")
ax1.set_ylabel("test accuracy")
ax2.set_xlabel("Gaussian noise sigma")
ax1.legend()
fig.tight_layout()
plt.show()
