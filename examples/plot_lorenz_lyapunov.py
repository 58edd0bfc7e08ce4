"""
Lyapunov exponents of the Lorenz system
=======================================

The Lorenz system at $\\sigma = 10, \\rho = 28, \\beta = 8/3$ is chaotic: its largest
Lyapunov exponent is about $0.906$, the others about $0$ and $-14.57$ (they sum to the
trace of the Jacobian, $-(\\sigma + 1 + \\beta)$). `odenet.analysis.lyapunov_exponents`
integrates the state and a set of tangent vectors and re-orthonormalises them (Benettin's
QR method).
"""

# %%
import os

import matplotlib.pyplot as plt
import torch

from odenet.analysis import Lorenz, lyapunov_exponents

QUICK = os.environ.get("ODENET_EXAMPLES_QUICK", "1") != "0"
t_end = 30.0 if QUICK else 1000.0
res = lyapunov_exponents(Lorenz(), torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), t_end=t_end,
                         dt=0.01, transient=10.0)
l1, l2, l3 = res["exponents"]
print(f"exponents over t = {res['time']:.0f}: {l1:.3f}, {l2:.3f}, {l3:.3f}   (reference 0.906, 0, -14.57)")
print(f"sum {res['sum']:.3f}   (exactly -(sigma + 1 + beta) = {-(10 + 1 + 8 / 3):.3f})")

# %%
# The running estimate of the largest exponent, one value per unit-time window: it wanders
# around the limit; longer runs (`ODENET_EXAMPLES_QUICK=0`) average more windows.
w = torch.tensor(res["window_lambda1"])
running = torch.cumsum(w, 0) / torch.arange(1, len(w) + 1)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(w, ".", alpha=0.4, label="per window")
ax.plot(running, label="running mean")
ax.axhline(0.906, color="k", ls="--", lw=1, label="reference 0.906")
ax.set_xlabel("window (unit time)")
ax.set_ylabel(r"$\lambda_1$ estimate")
ax.legend()
fig.tight_layout()
plt.show()
