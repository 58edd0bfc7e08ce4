"""Dense output on a per-sample time grid (``t`` of shape ``[B, T]``).

The per-sample loops accept different steps for different samples, so the interpolant of
sample ``b`` is made of *its own* accepted steps. :class:`BatchedDenseRecorder` (the loops'
``on_batch_step`` hook) keeps every batched step with its ``[B]`` start/end times and
acceptance mask; :class:`BatchedDenseOutput` turns them, once, into a per-sample table of
accepted steps (padded to the longest sample) and answers a query ``[B, Q]`` with one
``searchsorted`` and one gather: no Python loop over samples or queries.

The interpolant is the method's own (``b_dense`` of its tableau, with the dense-only stages
``a_extra`` where it has them), else cubic Hermite from ``y0, f0, y1, f1``: the very
polynomial a shared-grid solve of that sample alone evaluates. Like the shared-grid dense
output it is differentiable with respect to ``y0``, the field's parameters and the query
times. Memory is O(batched steps x B).
"""

from __future__ import annotations

from typing import List, Optional

import torch

__all__ = ["BatchedDenseRecorder", "BatchedDenseOutput"]


class BatchedDenseRecorder:
    """``on_batch_step(res, accepted, tn, t1, f1)`` hook: keeps every batched step.

    ``f1 is None`` (a fixed-step method without FSAL) is filled from the next step's ``f0``,
    which the loop evaluates at ``(t1, y1)`` of every sample that moved; after the last step
    it is evaluated once when the table is built. Nothing here synchronises with the host.
    """

    def __init__(self):
        self.entries: List[list] = []  # [res, accepted (B,), tn (B,), t1 (B,), f1 or None]

    def __call__(self, res, accepted, tn, t1, f1) -> None:
        if self.entries and self.entries[-1][4] is None:
            self.entries[-1][4] = res.f0
        self.entries.append([res, accepted.detach(), tn.detach().to(torch.float64), t1.detach().to(torch.float64), f1])


class BatchedDenseOutput:
    """The per-sample interpolant of a finished solve; sample ``b`` on its own span.

    ``t_loop`` is the loop's (increasing) ``[B, T]`` grid; ``reverse`` says that the user's
    time is its negation.
    """

    def __init__(self, rec: BatchedDenseRecorder, method, field, y0: torch.Tensor, t_loop: torch.Tensor, reverse: bool, stats):
        self.rec, self.method, self.field, self.y0, self.reverse, self.stats = rec, method, field, y0, reverse, stats
        self.tdtype = t_loop.dtype
        self.u0 = t_loop.detach().to(torch.float64)[:, 0]  # (B,)
        self._tab = None

    @property
    def span(self) -> torch.Tensor:
        """``[B, 2]``: each sample's ``(t_start, t_end)`` in the user's time."""
        tab = self._table()
        s = torch.stack([self.u0, tab["u1"]], dim=1)
        return -s if self.reverse else s

    # ------------------------------------------------------------------ the table (built once)

    def _table(self) -> dict:
        if self._tab is not None:
            return self._tab
        B = self.y0.shape[0]
        ent = self.rec.entries
        dev = self.y0.device
        if not ent:  # every row has a single time: each span is one point
            self._tab = dict(u1=self.u0.clone(), R=0)
            return self._tab
        last = ent[-1]
        if last[4] is None:  # f(t1, y1) after the last step (one evaluation for the batch)
            res = last[0]
            last[4] = self.field(last[3].to(self.tdtype), res.y1)
        acc = torch.stack([e[1] for e in ent])  # (R, B)
        starts = torch.stack([e[2] for e in ent])  # (R, B)
        ends = torch.stack([e[3] for e in ent])  # (R, B)
        cnt = acc.sum(dim=0)  # (B,) accepted steps per sample
        K = max(int(cnt.max()), 1)  # the one synchronisation
        pos = torch.cumsum(acc.to(torch.long), dim=0) - 1  # (R, B): place among the sample's steps
        r_i, b_i = torch.nonzero(acc, as_tuple=True)
        p_i = pos[r_i, b_i]
        comp = torch.zeros(B, K, dtype=torch.long, device=dev)  # (B, K): batched step of each own step
        comp[b_i, p_i] = r_i
        cstart = torch.full((B, K), float("inf"), dtype=torch.float64, device=dev)  # padded with +inf
        cstart[b_i, p_i] = starts[r_i, b_i]
        u1 = torch.where(acc, ends, torch.full_like(ends, -float("inf"))).amax(dim=0)
        u1 = torch.where(cnt > 0, u1, self.u0)
        tab = self.method.tableau if getattr(self.method, "tableau", None) is not None else None
        dense = tab is not None and tab.b_dense is not None
        if dense:
            stages = []
            for res, a, tn, t1, _ in ent:
                ks = list(res.ks)
                if tab.a_extra is not None:
                    ks = res.cache if res.cache is not None else _extra(self.method, self.field, res, ks, tn, t1 - tn, self.tdtype, self.stats, a)
                stages.append(torch.stack(ks).reshape(len(ks), B, -1))  # (s, B, N)
            basis = torch.stack(stages).transpose(1, 2)  # (R, B, s, N)
            bd = torch.as_tensor(tab.b_dense, dtype=self.y0.real.dtype, device=dev)  # (s, p)
        else:  # cubic Hermite: y0, f0, y1, f1
            basis = torch.stack([torch.stack([r.y0.reshape(B, -1), r.f0.reshape(B, -1), r.y1.reshape(B, -1), f1.reshape(B, -1)], dim=1) for r, _, _, _, f1 in ent])  # (R, B, 4, N)
            bd = None
        y0s = torch.stack([e[0].y0.reshape(B, -1) for e in ent])  # (R, B, N)
        self._tab = dict(u1=u1, R=len(ent), cnt=cnt, comp=comp, cstart=cstart, starts=starts, ends=ends, basis=basis, y0s=y0s, bd=bd)
        self.rec.entries = []  # the table holds what is needed; drop the step objects
        return self._tab

    # ------------------------------------------------------------------ queries

    def evaluate(self, t):
        """The interpolant at ``t`` ``[B, Q]`` (row ``b``: sample ``b``'s times) -> ``[Q, B, ...]``."""
        B = self.y0.shape[0]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"on a per-sample solve `t` must be a tensor of query times of shape [B, Q] = [{B}, Q], got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"`t` must be a floating-point tensor, got {t.dtype}")
        if t.ndim != 2 or t.shape[0] != B:
            raise ValueError(
                f"on a per-sample solve `t` must have shape [B, Q] = [{B}, Q] (row b holds sample b's query times), got shape "
                f"{tuple(t.shape)}; use t[:, None] for one time per sample, or t.expand({B}, -1) for times shared by all samples"
            )
        tab = self._table()
        Q = t.shape[1]
        tt = t.to(device=self.y0.device, dtype=torch.float64)
        u = -tt if self.reverse else tt  # (B, Q) loop time
        ud = u.detach()
        lo, hi = self.u0[:, None], tab["u1"][:, None]
        bad_nan = ~torch.isfinite(ud)
        bad_out = (ud < lo) | (ud > hi)
        if Q and any(torch.stack([bad_nan.any(), bad_out.any()]).tolist()):
            self._raise_bad(tt, bad_nan, bad_out)
        if Q == 0 or tab["R"] == 0:
            return self.y0.unsqueeze(0).expand(Q, *self.y0.shape)
        comp, cstart, cnt = tab["comp"], tab["cstart"], tab["cnt"]
        idx = torch.searchsorted(cstart, ud.contiguous(), right=True) - 1  # (B, Q) own step
        idx = torch.minimum(idx.clamp(min=0), (cnt - 1).clamp(min=0)[:, None])
        k = comp.gather(1, idx)  # (B, Q) batched step
        bidx = torch.arange(B, device=k.device)[:, None].expand_as(k)
        a, b = tab["starts"][k, bidx], tab["ends"][k, bidx]  # (B, Q)
        rdt = self.y0.real.dtype
        h64 = b - a
        theta = (u - a) / torch.where(h64 > 0, h64, torch.ones_like(h64))  # carries the grad of t
        th = theta.to(rdt)
        h = h64.to(rdt)[..., None]  # (B, Q, 1)
        basis = tab["basis"][k, bidx]  # (B, Q, m, N)
        y0 = tab["y0s"][k, bidx]  # (B, Q, N)
        if tab["bd"] is not None:
            powers = torch.arange(1, tab["bd"].shape[1] + 1, device=th.device, dtype=rdt)
            w = (th[..., None] ** powers) @ tab["bd"].T  # (B, Q, s)
            if basis.is_complex():
                w = w.to(basis.dtype)
            out = y0 + h * torch.einsum("bqs,bqsn->bqn", w, basis)
        else:
            th2 = th * th
            th3 = th2 * th
            w = torch.stack([2 * th3 - 3 * th2 + 1, (th3 - 2 * th2 + th), -2 * th3 + 3 * th2, (th3 - th2)], dim=-1)  # (B, Q, 4)
            scale = torch.cat([torch.ones_like(h), h, torch.ones_like(h), h], dim=-1)  # h on the slopes
            w = w * scale
            if basis.is_complex():
                w = w.to(basis.dtype)
            out = torch.einsum("bqm,bqmn->bqn", w, basis)
        empty = (cnt == 0)[:, None, None]  # a sample whose span is one point: its y0
        out = torch.where(empty, self.y0.reshape(B, 1, -1), out)
        return out.transpose(0, 1).reshape(Q, *self.y0.shape)  # (Q, B, ...)

    def _raise_bad(self, tt, bad_nan, bad_out) -> None:
        if bool(bad_nan.any()):
            b = int(torch.nonzero(bad_nan.any(dim=1))[0, 0])
            raise ValueError(f"`t` contains NaN or inf in row {b} (sample {b}); query times must be finite")
        b, q = (int(v) for v in torch.nonzero(bad_out)[0])
        lo, hi = (float(v) for v in self.span[b])
        lo, hi = min(lo, hi), max(lo, hi)
        raise ValueError(
            f"`t`[{b}, {q}]={float(tt[b, q]):.6g} is outside the solved span [{lo:.6g}, {hi:.6g}] of sample {b}; "
            "on a per-sample solve each row is queried within its own sample's span"
        )


def _extra(method, field, res, ks, tn, hstep, tdt, stats, counted):
    from ._grids_adaptive import _extra_stages

    return _extra_stages(method, field, res, ks, tn, hstep, tdt, stats, counted)
