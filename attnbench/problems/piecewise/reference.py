"""The one reference of piecewise attention (fp32 truth, same-dtype baseline), chunked like
attention's."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention.reference import chunked_reference, ref_dtype, repeat_kv, softmax_rows
from .case import PiecewiseCase
from .inputs import PiecewiseInputs


@dataclass
class PiecewiseRef:
    out: torch.Tensor
    lse: torch.Tensor
    dq1: torch.Tensor | None = None
    dk1: torch.Tensor | None = None
    dq2: torch.Tensor | None = None
    dk2: torch.Tensor | None = None
    dv: torch.Tensor | None = None


def piecewise_ref(
    q1,
    k1,
    q2,
    k2,
    v,
    *,
    dist_threshold: int,
    causal: bool = False,
    softmax_scale: float | None = None,
    upcast: bool = True,
    q_start: int = 0,
    seqlen_q: int | None = None,
):
    """Differentiable reference piecewise attention, (B, S, H, D) layout. Returns ``(out, lse)``
    (lse fp32, (B, Hq, rows)). ``q1``/``q2`` may be rows ``[q_start, q_start + rows)`` of a query
    sequence of length ``seqlen_q``, as for :func:`attnbench.problems.attention.reference.attention_ref`."""
    dtype = ref_dtype(q1.dtype, upcast)
    _, rows, hq, d = q1.shape
    sk = k1.shape[1]
    sq = rows if seqlen_q is None else seqlen_q
    scale = softmax_scale if softmax_scale is not None else d**-0.5
    q1, k1, q2, k2, v = (t.to(dtype) for t in (q1, k1, q2, k2, v))
    k1, k2, v = repeat_kv(hq, k1, k2, v)
    s1 = torch.einsum("bqhd,bkhd->bhqk", q1 * scale, k1)
    s2 = torch.einsum("bqhd,bkhd->bhqk", q2 * scale, k2)
    i = torch.arange(q_start, q_start + rows, device=q1.device)[:, None] + (sk - sq)
    j = torch.arange(sk, device=q1.device)[None, :]
    s = torch.where(i - j >= dist_threshold, s2, s1)
    return softmax_rows(s, v, (j <= i) if causal else None)


def case_kwargs(case: PiecewiseCase) -> dict:
    """The case's arguments of :func:`piecewise_ref` (and of the kernels' interface)."""
    return dict(dist_threshold=case.dist_threshold, causal=case.causal, softmax_scale=case.scale)


def reference(
    inp: PiecewiseInputs, case: PiecewiseCase, *, upcast=True, grads=True, budget_bytes=None
):
    """Reference out, lse (and dq1, dk1, dq2, dk2, dv for ``inp.dout``) for a whole case,
    chunked like attention's (:func:`attnbench.problems.attention.reference.chunked_reference`)."""

    def fn(qs, kvs, *, bs, hqs, **where):
        (q1, q2), (k1, k2, v) = qs, kvs
        return piecewise_ref(q1, k1, q2, k2, v, upcast=upcast, **case_kwargs(case), **where)

    out, lse, gs = chunked_reference(
        fn,
        (inp.q1, inp.q2),
        (inp.k1, inp.k2, inp.v),
        inp.dout,
        upcast=upcast,
        grads=grads,
        budget_bytes=budget_bytes,
        score_mats=2,
    )
    if not grads:
        return PiecewiseRef(out, lse)
    dq1, dq2, dk1, dk2, dv = gs
    return PiecewiseRef(out, lse, dq1, dk1, dq2, dk2, dv)
