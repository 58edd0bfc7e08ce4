"""
A Neural CDE on JapaneseVowels with dropped observations
========================================================

JapaneseVowels (the UEA archive copy bundled in sktime's wheel: no download): 12 LPC
channels per utterance, 9 speakers. 30 % of each series' points are dropped at random,
so every series has its own irregular grid. The Neural CDE $dz = g_\\theta(z)\\,dX$ is
driven by a Hermite-cubic path through the observations.
"""

# %%
import os

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import odenet

QUICK = os.environ.get("ODENET_EXAMPLES_QUICK", "1") != "0"
torch.manual_seed(0)
data = odenet.load_uea("JapaneseVowels").dropped(0.3, seed=0)
train, y_train = data.train, data.y_train
if QUICK:  # a subset keeps the quick mode under a few seconds
    keep = torch.randperm(len(train))[:90]
    train, y_train = train.index(keep), y_train[keep]
print(f"{len(train)} training series, {train.channels} channels, {data.num_classes} classes")

model = odenet.NeuralCDE(train.channels, hidden=16, num_classes=data.num_classes, units=32)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
epochs, batch = (5, 45) if QUICK else (30, 32)
losses = []
for epoch in range(epochs):
    perm = torch.randperm(len(train))
    for i in range(0, len(train), batch):
        idx = perm[i:i + batch]
        loss = F.cross_entropy(model(train.index(idx)), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
model.eval()
with torch.no_grad():
    acc = float((model(data.test).argmax(1) == data.y_test).float().mean())
print(f"test accuracy after {epochs} epochs: {acc:.3f} (chance {1 / data.num_classes:.3f})")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
s = data.test.index(torch.tensor([0]))
n = int(s.lengths[0])
for c in range(3):
    ax1.plot(s.times[0, :n], s.values[0, :n, c], ".-", label=f"channel {c + 1}")
ax1.set_title("one test series, 30 % dropped")
ax1.set_xlabel("sample index")
ax1.legend(fontsize=8)
ax2.plot(losses)
ax2.set_title("training loss")
ax2.set_xlabel("batch")
fig.tight_layout()
plt.show()
