"""
A bouncing ball with events, and the gradient of its impact times
=================================================================

A ball dropped from height $h$ falls as $\\ddot x = -g$ and hits the ground at
$t_1 = \\sqrt{2h/g}$. At each impact its velocity is reversed and scaled by the
coefficient of restitution $e$, so the $n$-th impact comes at
$t_n = t_1\\,(1 + 2e + \\dots + 2e^{n-1})$.

`solvers.odeint_event` (torchdiffeq's function, with the same signature) integrates until
the event function $x(t)$ crosses zero, locates the root on the method's own dense
output, and differentiates the event time by the implicit-function theorem, so
$\\partial t_n / \\partial h$ comes out of `backward()`.
"""

# %%
import os

import matplotlib.pyplot as plt
import torch

import solvers

QUICK = os.environ.get("ODENET_EXAMPLES_QUICK", "1") != "0"
n_bounces = 4 if QUICK else 8
g, e = 9.81, 0.8
h = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)


def fall(t, state):
    x, v = state
    return v, torch.full_like(x, -g)


def ground(t, state):
    return state[0]


# %%
# Integrate bounce by bounce; each event restarts the solve from the reflected state.
t0 = torch.tensor(0.0, dtype=torch.float64)
state = (h, torch.tensor(0.0, dtype=torch.float64))
impacts, curves = [], []
for k in range(n_bounces):
    t_hit, sol = solvers.odeint_event(fall, state, t0, event_fn=ground, method="dopri5", rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # the trajectory for the plot (the events above carry the gradients)
        ts = torch.linspace(t0.item(), t_hit.item(), 50, dtype=torch.float64)
        curves.append((ts, solvers.odeint(fall, tuple(s.detach() for s in state), ts, method="dopri5",
                                          rtol=1e-10, atol=1e-10)[0]))
    impacts.append(t_hit)
    x_hit, v_hit = sol[0][-1], sol[1][-1]
    # a tiny lift keeps the next solve from starting exactly on the event surface
    state = (x_hit + 1e-12, -e * v_hit)
    t0 = t_hit

t1 = (2 * h.detach() / g).sqrt()
closed = [t1 * (1 + 2 * sum(e**j for j in range(1, n + 1))) for n in range(n_bounces)]
for n, (tn, cn) in enumerate(zip(impacts, closed), 1):
    print(f"impact {n}: t = {tn.item():.9f}  closed form {cn.item():.9f}")

# %%
# The gradient of the last impact time with respect to the drop height, against the
# closed form dt_n/dh = t_n / (2h).
impacts[-1].backward()
print(f"d t_{n_bounces} / d h = {float(h.grad):.9f}  closed form {float(closed[-1] / (2 * h.detach())):.9f}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for ts, xs in curves:
    ax.plot(ts, xs, color="tab:blue")
ax.plot([t.item() for t in impacts], [0.0] * len(impacts), "o", color="tab:red", label="located events")
ax.set_xlabel("t")
ax.set_ylabel("height x(t)")
ax.legend()
fig.tight_layout()
plt.show()
