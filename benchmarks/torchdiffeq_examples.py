"""torchdiffeq's example scripts, side by side: the core training loop of each one run
with ``torchdiffeq`` and with ``solvers`` (only the import changes), same seed, short mode.

What it compares (one process, CPU): for each example (``ode_demo``, ``odenet_mnist``,
``latent_ode``, ``cnf``), with and without the adjoint, the loss each library reaches after
N iterations and the wall time. The loops are re-written here in the shape of the scripts in
``rtqichen/torchdiffeq/examples`` (same models, losses, optimisers, solver calls and
options), at small sizes and without downloads: ``odenet_mnist`` trains on scikit-learn's
bundled 8x8 digits upsampled to 28x28, ``cnf`` on ``make_circles``, ``latent_ode`` on
synthetic spirals generated here.

Agreement is expected to the solvers' tolerance, not bit for bit: the two libraries take
slightly different steps (initial step, controller details), and training amplifies small
differences a little over the iterations.

Run ``python -m benchmarks.torchdiffeq_examples`` (``--iters N``, ``--only NAME``).
Prints a table; ``docs/migrating-from-torchdiffeq.md`` records one run.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torchdiffeq
from tqdm.auto import tqdm

import solvers


def lib_odeint(lib, adjoint: bool):
    return lib.odeint_adjoint if adjoint else lib.odeint


# --------------------------------------------------------------------------- ode_demo


def ode_demo(lib, adjoint: bool, iters: int) -> float:
    """Fit ``dy/dt = net(y^3)`` to a cubic spiral (``examples/ode_demo.py``)."""
    odeint = lib_odeint(lib, adjoint)
    rng = np.random.RandomState(42)
    true_y0 = torch.tensor([[2.0, 0.0]])
    t = torch.linspace(0.0, 25.0, 1000)
    true_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])

    class Truth(nn.Module):
        def forward(self, t, y):
            return torch.mm(y**3, true_A)

    with torch.no_grad():
        true_y = lib.odeint(Truth(), true_y0, t, method="dopri5")

    class Func(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))
            for m in self.net.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, mean=0, std=0.1)
                    nn.init.constant_(m.bias, val=0)

        def forward(self, t, y):
            return self.net(y**3)

    func = Func()
    opt = torch.optim.RMSprop(func.parameters(), lr=1e-3)
    batch_time, batch_size = 10, 20
    for _ in range(iters):
        opt.zero_grad()
        s = torch.from_numpy(rng.choice(np.arange(1000 - batch_time, dtype=np.int64), batch_size, replace=False))
        batch_y0, batch_t = true_y[s], t[:batch_time]
        batch_y = torch.stack([true_y[s + i] for i in range(batch_time)], dim=0)  # (T, M, 1, D)
        loss = torch.mean(torch.abs(odeint(func, batch_y0, batch_t) - batch_y))
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(torch.mean(torch.abs(odeint(func, true_y0, t) - true_y)))


# --------------------------------------------------------------------------- odenet_mnist


def _digits(n: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    x = nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)  # (N, 1, 28, 28)
    return x, torch.tensor(d.target[:n], dtype=torch.long)


def odenet_mnist(lib, adjoint: bool, iters: int) -> float:
    """The ODE-Net classifier (``examples/odenet_mnist.py``), conv downsampling, tol 1e-3."""
    odeint = lib_odeint(lib, adjoint)

    def norm(dim):
        return nn.GroupNorm(min(32, dim), dim)

    class ConcatConv2d(nn.Module):
        def __init__(self, dim_in, dim_out):
            super().__init__()
            self.layer = nn.Conv2d(dim_in + 1, dim_out, 3, 1, 1)

        def forward(self, t, x):
            return self.layer(torch.cat([torch.ones_like(x[:, :1]) * t, x], 1))

    class ODEfunc(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.norm1, self.norm2, self.norm3 = norm(dim), norm(dim), norm(dim)
            self.conv1, self.conv2 = ConcatConv2d(dim, dim), ConcatConv2d(dim, dim)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, t, x):
            out = self.conv1(t, self.relu(self.norm1(x)))
            out = self.conv2(t, self.relu(self.norm2(out)))
            return self.norm3(out)

    class ODEBlock(nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f
            self.integration_time = torch.tensor([0, 1]).float()

        def forward(self, x):
            return odeint(self.f, x, self.integration_time.type_as(x), rtol=1e-3, atol=1e-3)[1]

    class Flatten(nn.Module):
        def forward(self, x):
            return x.view(x.shape[0], -1)

    model = nn.Sequential(
        nn.Conv2d(1, 64, 3, 1), norm(64), nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 4, 2, 1), norm(64), nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 4, 2, 1),
        ODEBlock(ODEfunc(64)),
        norm(64), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)), Flatten(), nn.Linear(64, 10),
    )
    x, y = _digits(32 * iters)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    loss = None
    for i in range(iters):
        opt.zero_grad()
        loss = crit(model(x[32 * i : 32 * (i + 1)]), y[32 * i : 32 * (i + 1)])
        loss.backward()
        opt.step()
    return float(loss)


# --------------------------------------------------------------------------- latent_ode


def _spirals(n: int, total: int, nsample: int, rng):
    """Noisy samples of clockwise/counter-clockwise Archimedean spirals (as the script's)."""
    orig_ts = np.linspace(0, 6 * np.pi, total)
    samp_ts = orig_ts[:nsample]
    zs_cw = 0.5 + orig_ts
    rs_cw = zs_cw / (2 * np.pi)
    cw = np.stack((rs_cw * np.cos(zs_cw) - 5.0, rs_cw * np.sin(zs_cw)), axis=1)
    zs_cc = 0.5 + 6 * np.pi - orig_ts
    rw_cc = zs_cc / (2 * np.pi)
    cc = np.stack((rw_cc * np.cos(zs_cc) + 5.0, rw_cc * np.sin(zs_cc)), axis=1)[::-1]
    samp = []
    for _ in range(n):
        t0 = rng.randint(nsample, total - 2 * nsample)
        base = cc if rng.rand() > 0.5 else cw
        traj = base[t0 : t0 + nsample].copy()
        samp.append(traj + rng.randn(*traj.shape) * 0.1)
    return torch.tensor(np.stack(samp), dtype=torch.float32), torch.tensor(samp_ts, dtype=torch.float32)


def latent_ode(lib, adjoint: bool, iters: int) -> float:
    """The latent ODE on spirals (``examples/latent_ode.py``): RNN encoder, ODE, decoder, ELBO."""
    odeint = lib_odeint(lib, adjoint)
    rng = np.random.RandomState(0)
    latent, nhidden, rnn_hidden, obs = 4, 20, 25, 2
    trajs, samp_ts = _spirals(64, 500, 50, rng)  # (N, T, 2), (T,)

    class Func(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(latent, nhidden), nn.Linear(nhidden, nhidden), nn.Linear(nhidden, latent)
            self.elu = nn.ELU(inplace=True)

        def forward(self, t, x):
            return self.fc3(self.elu(self.fc2(self.elu(self.fc1(x)))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.i2h, self.h2o = nn.Linear(obs + rnn_hidden, rnn_hidden), nn.Linear(rnn_hidden, 2 * latent)

        def forward(self, x, h):
            h = torch.tanh(self.i2h(torch.cat((x, h), dim=1)))
            return self.h2o(h), h

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(latent, nhidden), nn.Linear(nhidden, obs)

        def forward(self, z):
            return self.fc2(torch.relu(self.fc1(z)))

    func, rec, dec = Func(), Encoder(), Decoder()
    params = list(func.parameters()) + list(dec.parameters()) + list(rec.parameters())
    opt = torch.optim.Adam(params, lr=0.01)
    noise_logvar = 2.0 * torch.log(torch.tensor(0.3))
    loss = None
    for _ in range(iters):
        opt.zero_grad()
        h = torch.zeros(trajs.shape[0], rnn_hidden)
        for k in reversed(range(trajs.shape[1])):
            out, h = rec(trajs[:, k], h)
        qz0_mean, qz0_logvar = out[:, :latent], out[:, latent:]
        z0 = torch.randn(qz0_mean.size()) * torch.exp(0.5 * qz0_logvar) + qz0_mean
        pred_z = odeint(func, z0, samp_ts).permute(1, 0, 2)  # (N, T, latent)
        pred_x = dec(pred_z)
        logpx = (-0.5 * (math.log(2 * math.pi) + noise_logvar + (trajs - pred_x) ** 2 / torch.exp(noise_logvar))).sum(-1).sum(-1)
        analytic_kl = (-0.5 * (1 + qz0_logvar - qz0_mean**2 - torch.exp(qz0_logvar))).sum(-1)
        loss = torch.mean(-logpx + analytic_kl, dim=0)
        loss.backward()
        opt.step()
    return float(loss)


# --------------------------------------------------------------------------- cnf


def cnf(lib, adjoint: bool, iters: int) -> float:
    """A continuous normalising flow with a hypernetwork (``examples/cnf.py``): tuple state
    ``(z, logp)``, decreasing time ``[t1, t0]``, the trace by autograd inside the field."""
    odeint = lib_odeint(lib, adjoint)
    from sklearn.datasets import make_circles

    in_out, hidden, width, t0, t1 = 2, 32, 64, 0.0, 10.0

    class HyperNetwork(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(1, hidden), nn.Linear(hidden, hidden)
            self.fc3 = nn.Linear(hidden, 3 * width * in_out + width)
            self.blocksize = width * in_out

        def forward(self, t):
            p = self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(t.reshape(1, 1)))))).reshape(-1)
            W = p[: self.blocksize].reshape(width, in_out, 1)
            U = p[self.blocksize : 2 * self.blocksize].reshape(width, 1, in_out)
            G = torch.sigmoid(p[2 * self.blocksize : 3 * self.blocksize].reshape(width, 1, in_out))
            return W, U * G, p[3 * self.blocksize :].reshape(width, 1, 1)

    class CNF(nn.Module):
        def __init__(self):
            super().__init__()
            self.hyper = HyperNetwork()

        def forward(self, t, states):
            z = states[0]
            with torch.set_grad_enabled(True):
                z.requires_grad_(True)
                W, U, B = self.hyper(t)
                Z = torch.unsqueeze(z, 0).repeat(width, 1, 1)
                h = torch.tanh(torch.matmul(Z, W) + B)
                dz_dt = torch.matmul(h, U).mean(0)
                trace = sum(torch.autograd.grad(dz_dt[:, i].sum(), z, create_graph=True)[0][:, i] for i in range(in_out))
                dlogp_dt = -trace.view(z.shape[0], 1)
            return dz_dt, dlogp_dt

    func = CNF()
    opt = torch.optim.Adam(func.parameters(), lr=1e-3)
    p_z0 = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2) * 0.1)
    loss = None
    for i in range(iters):
        opt.zero_grad()
        pts, _ = make_circles(n_samples=128, noise=0.06, factor=0.5, random_state=i)
        x = torch.tensor(pts, dtype=torch.float32)
        logp_diff_t1 = torch.zeros(128, 1)
        kw = dict(atol=1e-5, rtol=1e-5, method="dopri5")
        if adjoint:
            kw["adjoint_params"] = tuple(func.parameters())
        z_t, logp_diff_t = odeint(func, (x, logp_diff_t1), torch.tensor([t1, t0]).type(torch.float32), **kw)
        logp_x = p_z0.log_prob(z_t[-1]) - logp_diff_t[-1].view(-1)
        loss = -logp_x.mean(0)
        loss.backward()
        opt.step()
    return float(loss)


EXAMPLES = {"ode_demo": (ode_demo, 20), "odenet_mnist": (odenet_mnist, 3), "latent_ode": (latent_ode, 10), "cnf": (cnf, 3)}


class _Field(nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, t, y):
        return torch.tanh(self.lin(y))


def run(name: str, lib, adjoint: bool, iters: int):
    torch.manual_seed(0)
    t0 = time.perf_counter()
    value = EXAMPLES[name][0](lib, adjoint, iters)
    return value, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=None, help="iterations per example (default: each example's short count)")
    ap.add_argument("--only", choices=sorted(EXAMPLES), action="append")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for lib in (torchdiffeq, solvers):  # warm-up: one-time import and dispatch costs stay out of the times
        lib.odeint_adjoint(_Field(nn.Linear(2, 2)), torch.ones(1, 2), torch.linspace(0, 1, 3)).sum().backward()
    rows = []
    jobs = [(n, a) for n in (args.only or EXAMPLES) for a in (False, True)]
    for name, adjoint in tqdm(jobs, desc="examples"):
        iters = args.iters or EXAMPLES[name][1]
        ref, t_ref = run(name, torchdiffeq, adjoint, iters)
        ours, t_ours = run(name, solvers, adjoint, iters)
        rows.append((name, adjoint, iters, ref, ours, t_ref, t_ours))
        tqdm.write(f"{name} adjoint={adjoint}: torchdiffeq {ref:.6f} ({t_ref:.1f}s), odenet {ours:.6f} ({t_ours:.1f}s)")
    print("\n| example | adjoint | iterations | torchdiffeq loss | odenet loss | rel. diff | torchdiffeq time (s) | odenet time (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, adjoint, iters, ref, ours, t_ref, t_ours in rows:
        rel = abs(ours - ref) / max(abs(ref), 1e-12)
        print(f"| {name} | {'yes' if adjoint else 'no'} | {iters} | {ref:.6f} | {ours:.6f} | {rel:.1e} | {t_ref:.1f} | {t_ours:.1f} |")


if __name__ == "__main__":
    main()
