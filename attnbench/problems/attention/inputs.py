"""Seeded random inputs for a case (never zeros), dense or varlen.

q, k, v and dout are standard normal, drawn in that order from one generator seeded by (case,
seed), then cast to the case's dtype. The case's input distribution changes q and k only:

- ``q_std``, ``k_std`` (default 1): q and k are those same draws times the std, in fp32 before
  the cast (std > 1: large logits, a peaked softmax);
- ``k_channel_offset`` (default 0): a per-channel offset added to every token's k, the outlier
  channels of real models' keys (SageAttention's observation: a bias shared by all tokens, which
  leaves softmax(q.k) unchanged but ruins a quantization scale set by the largest value). The
  offset is ``k_channel_offset x z[h, c]``, one standard-normal z per (kv head, channel), drawn
  after dout from the same generator: a dense vector of that scale, its largest channels 2-3x it.

The generator is seeded by the id of the case with its distribution at the default, so a
non-standard case draws the same numbers as its standard twin (the difference between them is
the distribution alone), and a standard case's tensors are bit for bit what they always were.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..base import case_seed, seeded_randn  # noqa: F401  (re-exported)
from .case import AttentionCase
from .reference import alibi_slopes


@dataclass
class Inputs:
    q: torch.Tensor  # (B, Sq, Hq, D) or varlen (total_q, Hq, D)
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor  # same shape as the output
    cu_seqlens_q: torch.Tensor | None = None  # int32 (B + 1,)
    cu_seqlens_k: torch.Tensor | None = None
    max_seqlen_q: int | None = None
    max_seqlen_k: int | None = None
    alibi_slopes: torch.Tensor | None = None  # fp32 (Hq,)

    @property
    def differentiable(self) -> tuple[torch.Tensor, ...]:
        """The tensors gradients are taken against, in the order of the graded gradients."""
        return (self.q, self.k, self.v)


def cu_seqlens(lengths, device) -> torch.Tensor:
    return torch.tensor(
        [0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device
    )


def validate_cu_seqlens(
    cu: torch.Tensor, total: int, name: str = "cu_seqlens", max_seqlen: int | None = None
) -> None:
    """Raise ValueError (before any kernel runs) for malformed varlen offsets; with
    ``max_seqlen``, also when a sequence is longer than it (kernels size their grid by it)."""
    if cu.dtype != torch.int32:
        raise ValueError(f"{name} must be int32, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be 1-D with batch + 1 entries")
    c = cu.tolist()
    if c[0] != 0:
        raise ValueError(f"{name} must start at 0, got {c[0]}")
    lengths = [b - a for a, b in zip(c[:-1], c[1:], strict=True)]
    if min(lengths) <= 0:
        raise ValueError(f"{name} must be strictly increasing, got {c}")
    if c[-1] != total:
        raise ValueError(f"{name} ends at {c[-1]} but the packed tensor has {total} tokens")
    if max_seqlen is not None and max(lengths) > max_seqlen:
        raise ValueError(
            f"{name}: the longest sequence has {max(lengths)} tokens but max_seqlen is {max_seqlen}"
        )


def make_inputs(case: AttentionCase, device: str | torch.device = "cpu", seed: int = 0) -> Inputs:
    """q, k, v, dout in the case's dtype, seeded by (case, seed): standard normal, with q and k
    of the case's input distribution (see the module's docstring)."""
    randn = _randn(case, device, seed)
    hq, hkv, d = case.heads_q, case.heads_kv, case.head_dim
    slopes = alibi_slopes(hq).to(device) if case.alibi else None
    if case.varlen:
        tq, tk = sum(case.seqlens), sum(case.k_lens)
        q_shape, k_shape = (tq, hq, d), (tk, hkv, d)
    else:
        b, sq, sk = case.batch, case.seqlen_q, case.seqlen_k
        q_shape, k_shape = (b, sq, hq, d), (b, sk, hkv, d)
    q, k, v, dout = randn(*q_shape), randn(*k_shape), randn(*k_shape), randn(*q_shape)
    if not case.standard_inputs:
        offset = randn(hkv, d) * case.k_channel_offset if case.k_channel_offset else 0.0
        q = q * case.q_std if case.q_std != 1.0 else q
        k = k * case.k_std + offset if case.k_std != 1.0 else k + offset
    q, k, v, dout = (t.to(case.torch_dtype) for t in (q, k, v, dout))
    if case.varlen:
        return Inputs(
            q=q,
            k=k,
            v=v,
            dout=dout,
            cu_seqlens_q=cu_seqlens(case.seqlens, device),
            cu_seqlens_k=cu_seqlens(case.k_lens, device),
            max_seqlen_q=max(case.seqlens),
            max_seqlen_k=max(case.k_lens),
            alibi_slopes=slopes,
        )
    return Inputs(q=q, k=k, v=v, dout=dout, alibi_slopes=slopes)


def _randn(case: AttentionCase, device, seed: int):
    """``randn(*shape)``: fp32 standard-normal tensors, successive calls successive draws of one
    generator seeded by (the case with a standard input distribution, seed); the case is
    validated first. (:func:`attnbench.problems.base.seeded_randn`'s draws, before its cast.)"""
    case.validate()
    standard = (
        case if case.standard_inputs else replace(case, q_std=1.0, k_std=1.0, k_channel_offset=0.0)
    )
    g = torch.Generator(device=device).manual_seed(case_seed(standard, seed))

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32)

    return randn
