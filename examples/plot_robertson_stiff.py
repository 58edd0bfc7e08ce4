"""
A stiff chemistry problem: Robertson
====================================

Robertson's three-species reaction has rate constants spanning nine orders of magnitude:

$$
\\dot y_1 = -0.04 y_1 + 10^4 y_2 y_3,\\quad
\\dot y_2 = 0.04 y_1 - 10^4 y_2 y_3 - 3\\cdot 10^7 y_2^2,\\quad
\\dot y_3 = 3\\cdot 10^7 y_2^2 .
$$

An explicit method's step is bounded by stability, not accuracy; an L-stable implicit
method (`radau5`, `kvaerno5`) takes steps as long as accuracy allows.
"""

# %%
import os

import matplotlib.pyplot as plt
import torch

import solvers

QUICK = os.environ.get("ODENET_EXAMPLES_QUICK", "1") != "0"


def robertson(t, y):
    y1, y2, y3 = y.unbind(-1)
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3,
                        0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2,
                        3e7 * y2**2], dim=-1)


y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
t_end = 40.0 if QUICK else 1e5
t = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-5, torch.log10(torch.tensor(t_end)), 60, dtype=torch.float64)])

# %%
# The same tolerance for all three; `dopri5` gets a step budget and reports how far it got.
results = {}
for method in ("radau5", "kvaerno5", "dopri5"):
    opts = dict(max_num_steps=2000 if QUICK else 200000) if method == "dopri5" else None
    sol = solvers.solve(robertson, y0, t, method=method, rtol=1e-6, atol=1e-10, options=opts, raise_on_failure=False)
    results[method] = sol
    print(f"{method:9s} status {sol.status.name:20s} steps {sol.stats.n_accepted:6d} "
          f"rejected {sol.stats.n_rejected:5d} f-evals {sol.stats.n_f_evals:7d}"
          + (f"  (stopped at t = {sol.t_fail:.3g})" if sol.t_fail is not None else ""))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
sol = results["radau5"]
for i, scale in enumerate((1, 1e4, 1)):
    ax1.semilogx(t[1:], sol.ys[1:, i] * scale, label=f"y{i + 1}" + (" x 1e4" if scale != 1 else ""))
ax1.set_xlabel("t")
ax1.set_title("radau5 solution")
ax1.legend()
ax2.bar(list(results), [r.stats.n_f_evals for r in results.values()], color=["C2", "C2", "C3"])
ax2.set_yscale("log")
ax2.set_ylabel("function evaluations")
ax2.set_title("work (red: did not reach the end)" if results["dopri5"].t_fail is not None else f"work to reach t = {t_end:g}")
fig.tight_layout()
plt.show()
