"""
Fitting a spiral with a Neural ODE
==================================

torchdiffeq's classic `ode_demo`: learn the vector field of a damped cubic oscillator from
one trajectory. The only change from torchdiffeq's script is the import:
`from solvers import odeint`.
"""

# %%
# The data: one trajectory of $\dot y = A^\top y^3$ (elementwise cube), a spiral.
import os

import matplotlib.pyplot as plt
import torch
from torch import nn

from solvers import odeint  # was: from torchdiffeq import odeint

QUICK = os.environ.get("ODENET_EXAMPLES_QUICK", "1") != "0"
torch.manual_seed(0)

true_y0 = torch.tensor([[2.0, 0.0]])
t = torch.linspace(0.0, 25.0, 1000)
true_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])


class Lambda(nn.Module):
    def forward(self, t, y):
        return torch.mm(y**3, true_A)


with torch.no_grad():
    true_y = odeint(Lambda(), true_y0, t, method="dopri5")  # (1000, 1, 2)

# %%
# The model: an MLP on $y^3$, fitted on random short windows of the trajectory (batch
# time 10), as in the original demo.
batch_time, batch_size = 10, 20


def get_batch():
    s = torch.randperm(len(t) - batch_time)[:batch_size]
    batch_y0 = true_y[s]  # (M, 1, 2)
    batch_t = t[:batch_time]  # (T,)
    batch_y = torch.stack([true_y[s + i] for i in range(batch_time)], dim=0)  # (T, M, 1, 2)
    return batch_y0, batch_t, batch_y


class ODEFunc(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))
        for m in self.net.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0, std=0.1)
                nn.init.constant_(m.bias, val=0)

    def forward(self, t, y):
        return self.net(y**3)


func = ODEFunc()
optimizer = torch.optim.RMSprop(func.parameters(), lr=1e-3)
niters = 100 if QUICK else 2000
for itr in range(1, niters + 1):
    optimizer.zero_grad()
    batch_y0, batch_t, batch_y = get_batch()
    pred_y = odeint(func, batch_y0, batch_t)
    loss = torch.mean(torch.abs(pred_y - batch_y))
    loss.backward()
    optimizer.step()

with torch.no_grad():
    pred_y = odeint(func, true_y0, t)
    total = torch.mean(torch.abs(pred_y - true_y)).item()
print(f"{niters} iterations, mean |error| over the whole trajectory: {total:.3f}")

# %%
# The learned trajectory against the true one, and the learned vector field.
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4))
ax1.plot(true_y[:, 0, 0], true_y[:, 0, 1], "g-", label="true")
ax1.plot(pred_y[:, 0, 0], pred_y[:, 0, 1], "b--", label="learned")
ax1.set_title("Phase portrait")
ax1.legend()
yy, xx = torch.meshgrid(torch.linspace(-2, 2, 21), torch.linspace(-2, 2, 21), indexing="ij")
with torch.no_grad():
    dydt = func(0, torch.stack([xx, yy], -1).reshape(-1, 2)).reshape(21, 21, 2)
mag = dydt.norm(dim=-1, keepdim=True).clamp_min(1e-9)
ax2.streamplot(xx.numpy(), yy.numpy(), (dydt / mag)[..., 0].numpy(), (dydt / mag)[..., 1].numpy(), color="k")
ax2.set_title("Learned vector field")
fig.tight_layout()
plt.show()
