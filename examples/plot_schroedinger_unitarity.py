"""
Schrödinger: unitarity, explicit Euler against implicit midpoint
================================================================

The discretised Schrödinger equation $i\\,\\dot\\psi = H\\psi$ with Hermitian $H$ keeps
$\\|\\psi\\|$ constant. Explicit Euler multiplies the norm by $|1 - i h \\lambda|
= \\sqrt{1 + h^2\\lambda^2} > 1$ every step; the implicit midpoint rule (a Gauss
collocation method) preserves quadratic invariants, so the norm stays 1 to round-off.
"""

# %%
import os

import matplotlib.pyplot as plt
import torch

import solvers

QUICK = os.environ.get("ODENET_EXAMPLES_QUICK", "1") != "0"
n = 32 if QUICK else 128
x = torch.linspace(-10, 10, n, dtype=torch.float64)
dx = float(x[1] - x[0])
# H = -1/2 d^2/dx^2 + x^2/2 (harmonic oscillator), second-order finite differences
lap = (torch.diag(torch.full((n - 1,), 1.0, dtype=torch.float64), 1) - 2 * torch.eye(n, dtype=torch.float64)
       + torch.diag(torch.full((n - 1,), 1.0, dtype=torch.float64), -1)) / dx**2
H = (-0.5 * lap + torch.diag(0.5 * x**2)).to(torch.complex128)


def schroedinger(t, psi):
    return -1j * (H @ psi)


psi0 = torch.exp(-((x - 2.0) ** 2)).to(torch.complex128)
psi0 = psi0 / psi0.norm()
t = torch.linspace(0, 2 if QUICK else 10, 51, dtype=torch.float64)

# %%
norms = {}
for method in ("euler", "implicit_midpoint"):
    ys = solvers.odeint(schroedinger, psi0, t, method=method, options=dict(step_size=0.01))
    norms[method] = ys.abs().pow(2).sum(-1).sqrt()
    print(f"{method:18s} |psi(t_end)| = {float(norms[method][-1]):.6g}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for method, nrm in norms.items():
    ax.plot(t, nrm, label=method)
ax.set_yscale("log")
ax.set_xlabel("t")
ax.set_ylabel(r"$\|\psi(t)\|$")
ax.legend()
fig.tight_layout()
plt.show()
