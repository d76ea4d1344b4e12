"""Seeded inputs of a piecewise case: q1, k1, q2, k2, v, dout."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import seeded_randn
from .case import PiecewiseCase


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


def make_inputs(case: PiecewiseCase, device="cpu", seed: int = 0) -> PiecewiseInputs:
    """Standard-normal q1, k1, q2, k2, v, dout in the case's dtype, seeded by (case, seed)."""
    randn = seeded_randn(case, device, seed)
    b, sq, sk, d = case.batch, case.seqlen_q, case.seqlen_k, case.head_dim
    hq, hkv = case.heads_q, case.heads_kv
    q1, k1 = randn(b, sq, hq, d), randn(b, sk, hkv, d)
    q2, k2 = randn(b, sq, hq, d), randn(b, sk, hkv, d)
    return PiecewiseInputs(q1, k1, q2, k2, v=randn(b, sk, hkv, d), dout=randn(b, sq, hq, d))
