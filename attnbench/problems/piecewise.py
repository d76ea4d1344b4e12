"""Piecewise attention (FlagAttention's operator): two query/key pairs, chosen per (query, key)
pair by their distance.

With ``Sq``, ``Sk`` the query/key lengths and the signed distance ``d(i, j) = i + (Sk - Sq) - j``
(aligned bottom-right, like causal), the score is ``scale * q2_i . k2_j`` where ``d >= w`` (far
keys) and ``scale * q1_i . k1_j`` elsewhere (near keys, and future keys when not causal, whose
``d < 0``); causal keeps ``j <= i + Sk - Sq``; a row with no visible key gives out 0, lse +inf.
Graded: out, lse, dq1, dk1, dq2, dk2, dv. FLOPs: flash-attention's convention, 4 x attended
pairs x head_dim x heads (one QK and one PV product per pair, whichever q/k pair it uses).

Config grids take ``dist_threshold: 512`` or ``dist_threshold_frac: 0.5`` (``w = int(0.5 *
seqlen_k)``: "half the sequence" across a seqlen sweep)::

    problem: piecewise
    cases:
      - {tokens: 32768, model_dim: 2048, seqlen: [512, 1024], head_dim: 128,
         dist_threshold_frac: 0.5, causal: [false, true]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import model_validator

from ..case import Case, case_flops
from ..config import BaseGrid, Config, CpuVariant
from ..inputs import seeded_randn
from ..reference import chunked_reference, ref_dtype, repeat_kv, softmax_rows
from . import Problem


@dataclass(frozen=True)
class PiecewiseCase(Case):
    problem = "piecewise"
    dist_threshold: int = 0  # w: q2.k2 where d(i, j) >= w, else q1.k1

    @property
    def id(self) -> str:
        """e.g. ``B2-H8-S1000x1000-D64-bf16-causal-w500``."""
        return f"{super().id}-w{self.dist_threshold}"

    def validate(self) -> None:
        super().validate()
        if self.varlen or self.windowed or self.softcap or self.alibi:
            raise ValueError(f"{self.id}: piecewise cases take no varlen/window/softcap/ALiBi")


@dataclass
class PiecewiseInputs:
    q1: torch.Tensor  # (B, Sq, Hq, D)
    k1: torch.Tensor  # (B, Sk, Hkv, D)
    q2: torch.Tensor
    k2: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor  # (B, Sq, Hq, D)

    @property
    def differentiable(self) -> tuple[torch.Tensor, ...]:
        return (self.q1, self.k1, self.q2, self.k2, self.v)


@dataclass
class PiecewiseRef:
    out: torch.Tensor
    lse: torch.Tensor
    dq1: torch.Tensor | None = None
    dk1: torch.Tensor | None = None
    dq2: torch.Tensor | None = None
    dk2: torch.Tensor | None = None
    dv: torch.Tensor | None = None


def make_inputs(case: PiecewiseCase, device="cpu", seed: int = 0) -> PiecewiseInputs:
    """Standard-normal q1, k1, q2, k2, v, dout in the case's dtype, seeded by (case, seed)."""
    randn = seeded_randn(case, device, seed)
    b, sq, sk, d = case.batch, case.seqlen_q, case.seqlen_k, case.head_dim
    hq, hkv = case.heads_q, case.heads_kv
    q1, k1 = randn(b, sq, hq, d), randn(b, sk, hkv, d)
    q2, k2 = randn(b, sq, hq, d), randn(b, sk, hkv, d)
    return PiecewiseInputs(q1, k1, q2, k2, v=randn(b, sk, hkv, d), dout=randn(b, sq, hq, d))


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
    sequence of length ``seqlen_q``, as for :func:`attnbench.reference.attention_ref`."""
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


def reference(
    inp: PiecewiseInputs, case: PiecewiseCase, *, upcast=True, grads=True, budget_bytes=None
):
    """Reference out, lse (and dq1, dk1, dq2, dk2, dv for ``inp.dout``) for a whole case,
    chunked like attention's (:func:`attnbench.reference.chunked_reference`)."""

    def fn(qs, kvs, *, bs, hqs, **where):
        (q1, q2), (k1, k2, v) = qs, kvs
        return piecewise_ref(
            q1,
            k1,
            q2,
            k2,
            v,
            dist_threshold=case.dist_threshold,
            causal=case.causal,
            softmax_scale=case.scale,
            upcast=upcast,
            **where,
        )

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


class PiecewiseGrid(BaseGrid):
    """A grid of piecewise cases: exactly one of ``dist_threshold`` (w in tokens) and
    ``dist_threshold_frac`` (w = int(frac * seqlen_k))."""

    case_type = PiecewiseCase
    dist_threshold: int | list[int] | None = None
    dist_threshold_frac: float | list[float] | None = None

    @model_validator(mode="after")
    def _one_threshold(self):
        if (self.dist_threshold is None) == (self.dist_threshold_frac is None):
            raise ValueError("give exactly one of dist_threshold and dist_threshold_frac")
        return self

    def case_fields(self, d: dict) -> dict:
        frac = d.pop("dist_threshold_frac", None)
        if frac is not None:
            d["dist_threshold"] = int(frac * d.get("seqlen_k", d.get("seqlen", 0)))
        return d


class PiecewiseCpu(CpuVariant):
    cases: list[PiecewiseGrid]


class PiecewiseConfig(Config):
    problem: Literal["piecewise"] = "piecewise"
    cases: list[PiecewiseGrid]
    cpu: PiecewiseCpu | None = None


PIECEWISE = Problem(
    name="piecewise",
    description="FlagAttention's piecewise attention: q2.k2 where i + Sk - Sq - j >= w, else q1.k1",
    case_type=PiecewiseCase,
    config=PiecewiseConfig,
    grads=("dq1", "dk1", "dq2", "dk2", "dv"),
    make_inputs=make_inputs,
    reference=reference,
    flops=case_flops,
)
