"""
A Latent ODE on irregularly sampled sines
=========================================

Rubanova et al.'s periodic sines: each series is $\\sin(2\\pi f t)$ with its own
frequency, observed at its own irregular times on the first half of $[0, 5]$; the task
is to extrapolate the second half. The Latent ODE encodes the observations backwards in
time with an ODE-RNN, samples an initial latent state and decodes it with one ODE solve
over each series' own query times.
"""

# %%
import os

import matplotlib.pyplot as plt
import torch

import odenet

QUICK = os.environ.get("ODENET_EXAMPLES_QUICK", "1") != "0"
torch.manual_seed(0)
data = odenet.periodic_sines(n=120 if QUICK else 1000, task="extrapolation", seed=0)
train, target = data.train, data.target_train  # SeriesBatch: values (B, T, C), times (B, T), mask, lengths
print(f"{len(train)} training series, {train.channels} channel, up to {train.values.shape[1]} observed points each")

model = odenet.LatentODE(train.channels, hidden=16, latent=8, units=32, method="rk4", steps=1)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
epochs, batch = (10, 60) if QUICK else (60, 64)
for epoch in range(epochs):
    perm = torch.randperm(len(train))
    for i in range(0, len(train), batch):
        idx = perm[i:i + batch]
        loss, _ = model(train.index(idx), target.index(idx))  # negative ELBO
        opt.zero_grad()
        loss.backward()
        opt.step()
model.eval()
with torch.no_grad():
    _, pred = model(data.test, data.target_test)
    mse = (((pred - data.target_test.values) ** 2) * data.target_test.mask).sum() / data.target_test.mask.sum()
print(f"after {epochs} epochs: test MSE on the extrapolated half {float(mse):.4f}")

# %%
# Three test series: observed points (dots), targets (crosses) and the prediction at the
# target times.
fig, axes = plt.subplots(1, 3, figsize=(11, 3), sharey=True)
for k, ax in enumerate(axes):
    obs, tgt = data.test, data.target_test
    m, mt = obs.mask[k, :, 0] > 0, tgt.mask[k, :, 0] > 0
    ax.plot(obs.times[k][m], obs.values[k, m, 0], "k.", label="observed")
    ax.plot(tgt.times[k][mt], tgt.values[k, mt, 0], "x", color="C1", label="target")
    ax.plot(tgt.times[k][mt], pred[k, mt, 0], "-", color="C0", label="Latent ODE")
    ax.set_xlabel("t")
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()
