"""Host side of the fused piecewise attention: checks, launches and the autograd Function.

Usage::

    from attnbench.kernels.piecewise import piecewise_attention

    out, lse = piecewise_attention(q1, k1, q2, k2, v, dist_threshold=4096, causal=True)
    out.backward(dout)                     # q1.grad, k1.grad, q2.grad, k2.grad, v.grad

Layout (B, S, H, D); q1, q2 (B, Sq, Hq, D); k1, k2, v (B, Sk, Hkv, D) with Hkv dividing Hq.
``lse`` is fp32, natural log, (B, Hq, Sq), +inf on rows with no visible key (their out is 0);
it is returned but not differentiated. The backward is always deterministic (no atomics); the
``deterministic`` flag is accepted for the interface's sake. Inputs are made contiguous (a copy
only for inputs that are not), so every q-shaped tensor shares one set of strides and every
k-shaped tensor another.
"""

from __future__ import annotations

import math

import torch
import triton

from .._triton.configs import DTYPES, MAX_HEAD_DIM, PREPROCESS_BLOCK_M, dot_precision
from .._triton.softmax import LOG2E, bwd_preprocess
from . import configs
from .bwd import _bwd_dkdv_kernel, _bwd_dq_kernel
from .fwd import _fwd_kernel


class _Problem:
    """Shapes and launch constants shared by the forward and backward launches."""

    def __init__(self, q1, k1, q2, k2, v, dist_threshold, causal, softmax_scale):
        if q1.dtype not in DTYPES or any(x.dtype != q1.dtype for x in (k1, q2, k2, v)):
            raise TypeError(
                f"q1, k1, q2, k2, v must share one of {DTYPES}, got "
                f"{[str(x.dtype) for x in (q1, k1, q2, k2, v)]}"
            )
        if q1.dim() != 4 or q2.shape != q1.shape:
            raise ValueError(
                f"q1 {tuple(q1.shape)} and q2 {tuple(q2.shape)}: need one (B, S, H, D)"
            )
        if k1.dim() != 4 or k2.shape != k1.shape or v.shape != k1.shape:
            raise ValueError(
                f"k1 {tuple(k1.shape)}, k2 {tuple(k2.shape)}, v {tuple(v.shape)}: need one (B, S, H, D)"
            )
        self.batch, self.seqlen_q, hq, d = q1.shape
        bk, self.seqlen_k, hkv, dk = k1.shape
        if bk != self.batch or dk != d:
            raise ValueError(
                f"q {tuple(q1.shape)} and k {tuple(k1.shape)} disagree on batch or head dim"
            )
        if d > MAX_HEAD_DIM:
            raise ValueError(f"head dim {d} unsupported; max {MAX_HEAD_DIM}")
        if hq % hkv:
            raise ValueError(f"heads_kv={hkv} must divide heads_q={hq}")
        self.heads_q, self.heads_kv, self.head_dim = hq, hkv, d
        self.group = hq // hkv
        self.causal = bool(causal)
        self.dist_threshold = int(dist_threshold)
        # every threshold <= 1 - Sq (all pairs far) or >= Sk (all near) gives the same scores
        self.w = min(max(self.dist_threshold, 1 - self.seqlen_q), self.seqlen_k)
        self.sm_scale = float(softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d))
        if not self.sm_scale > 0:
            raise ValueError(f"softmax_scale must be > 0, got {self.sm_scale}")
        self.qk_scale = self.sm_scale * LOG2E
        self.const = dict(
            HEAD_DIM=d,
            HEAD_DIM_PAD=configs.head_dim_pad(d),
            CAUSAL=self.causal,
            DOT_PREC=dot_precision(q1.dtype),
        )


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def piecewise_forward(q1, k1, q2, k2, v, dist_threshold: int, causal=False, softmax_scale=None):
    """Fused forward: ``(out, lse)``; see the module docstring."""
    q1, k1, q2, k2, v = (x.contiguous() for x in (q1, k1, q2, k2, v))
    pb = _Problem(q1, k1, q2, k2, v, dist_threshold, causal, softmax_scale)
    return _forward(q1, k1, q2, k2, v, pb)


def _forward(q1, k1, q2, k2, v, pb: _Problem):
    out = torch.empty_like(q1)
    lse = torch.empty(pb.batch, pb.heads_q, pb.seqlen_q, dtype=torch.float32, device=q1.device)

    def grid(meta):
        return triton.cdiv(pb.seqlen_q, meta["BLOCK_M"]), pb.heads_q, pb.batch

    _fwd_kernel[grid](
        q1, k1, q2, k2, v, out, lse,
        *_strides(q1), *_strides(k1), lse.stride(0), lse.stride(1),
        pb.seqlen_q, pb.seqlen_k, pb.group, pb.w, pb.qk_scale,
        configs.seq_bucket(pb.seqlen_q),
        **pb.const,
    )  # fmt: skip
    return out, lse


def piecewise_backward(
    dout,
    q1,
    k1,
    q2,
    k2,
    v,
    out,
    lse,
    dist_threshold: int,
    causal=False,
    softmax_scale=None,
    deterministic=False,
):
    """Fused backward from the forward's ``out`` and ``lse``: ``(dq1, dk1, dq2, dk2, dv)``.
    Always deterministic (``deterministic`` is accepted and needs nothing more)."""
    q1, k1, q2, k2, v, out = (x.contiguous() for x in (q1, k1, q2, k2, v, out))
    pb = _Problem(q1, k1, q2, k2, v, dist_threshold, causal, softmax_scale)
    return _backward(dout, q1, k1, q2, k2, v, out, lse.contiguous(), pb)


def _backward(dout, q1, k1, q2, k2, v, out, lse, pb: _Problem):
    dout = dout.contiguous()
    dq1, dq2 = torch.empty_like(q1), torch.empty_like(q2)
    dk1, dk2, dv = torch.empty_like(k1), torch.empty_like(k2), torch.empty_like(v)
    delta = torch.empty_like(lse)
    dummy = torch.zeros(1, dtype=torch.int32, device=q1.device)
    bm = PREPROCESS_BLOCK_M
    bwd_preprocess[(triton.cdiv(pb.seqlen_q, bm), pb.heads_q, pb.batch)](
        out, dout, delta, dummy, *_strides(out), *_strides(dout), lse.stride(0), lse.stride(1),
        pb.seqlen_q, HEAD_DIM=pb.head_dim, HEAD_DIM_PAD=pb.const["HEAD_DIM_PAD"],
        IS_VARLEN=False, BLOCK_M=bm,
    )  # fmt: skip
    bucket = configs.seq_bucket(max(pb.seqlen_q, pb.seqlen_k))
    common = (
        *_strides(q1), *_strides(k1), lse.stride(0), lse.stride(1),
        pb.seqlen_q, pb.seqlen_k, pb.group, pb.w, pb.qk_scale, pb.sm_scale, bucket,
    )  # fmt: skip

    def grid_kv(meta):
        return triton.cdiv(pb.seqlen_k, meta["BLOCK_N"]), pb.heads_kv, pb.batch

    _bwd_dkdv_kernel[grid_kv](
        q1, k1, q2, k2, v, dout, lse, delta, dk1, dk2, dv, *common, **pb.const
    )

    def grid_q(meta):
        return triton.cdiv(pb.seqlen_q, meta["BLOCK_M"]), pb.heads_q, pb.batch

    _bwd_dq_kernel[grid_q](q1, k1, q2, k2, v, dout, lse, delta, dq1, dq2, *common, **pb.const)
    return dq1, dk1, dq2, dk2, dv


class PiecewiseAttnFunc(torch.autograd.Function):
    """``(q1, k1, q2, k2, v, dist_threshold, causal, softmax_scale) -> (out, lse)``,
    differentiable in q1, k1, q2, k2, v."""

    @staticmethod
    def forward(ctx, q1, k1, q2, k2, v, dist_threshold, causal, softmax_scale):
        q1, k1, q2, k2, v = (x.contiguous() for x in (q1, k1, q2, k2, v))
        pb = _Problem(q1, k1, q2, k2, v, dist_threshold, causal, softmax_scale)
        out, lse = _forward(q1, k1, q2, k2, v, pb)
        ctx.save_for_backward(q1, k1, q2, k2, v, out, lse)
        ctx.problem = pb
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q1, k1, q2, k2, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        grads = _backward(dout, q1, k1, q2, k2, v, out, lse, ctx.problem)
        return (*grads, None, None, None)


def piecewise_attention(
    q1,
    k1,
    q2,
    k2,
    v,
    dist_threshold: int,
    causal=False,
    softmax_scale=None,
    deterministic=False,
):
    """Piecewise attention (fused Triton kernel). Returns ``(out, lse)``; see the module
    docstring. ``deterministic`` is accepted: the backward always is."""
    return PiecewiseAttnFunc.apply(q1, k1, q2, k2, v, dist_threshold, causal, softmax_scale)
