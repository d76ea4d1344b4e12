"""Host side of the Triton FlashAttention-2: launches and the autograd Function.

Usage::

    from attnbench.kernels.triton_fa2 import flash_attn

    out, lse = flash_attn(q, k, v, causal=True)                     # (B, S, H, D)
    out, lse = flash_attn(q, k, v, causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu,
                          max_seqlen_q=m, max_seqlen_k=m)            # varlen (total, H, D)
    out.backward(dout)                                               # dq, dk, dv

``lse`` is fp32, natural log, (B, Hq, Sq) or varlen (Hq, total_q); it is returned but not
differentiated.
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


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _seq_strides(x: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, seq, head) strides in elements; batch stride 0 for packed varlen tensors."""
    if varlen:
        return 0, x.stride(0), x.stride(1)
    return x.stride(0), x.stride(1), x.stride(2)


class _Problem:
    """Shapes and launch constants shared by the forward and backward launches."""

    def __init__(self, q, k, v, causal, softmax_scale, cu_q, cu_k, max_q, max_k):
        if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
            raise TypeError(
                f"q, k, v must share one of {DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}"
            )
        self.varlen = cu_q is not None
        if self.varlen:
            if cu_k is None or max_q is None or max_k is None:
                raise ValueError("varlen needs cu_seqlens_q, cu_seqlens_k, max_seqlen_q/k")
            _, hq, d = q.shape
            _, hkv, _ = k.shape
            self.batch = cu_q.numel() - 1
            self.seqlen_q, self.seqlen_k = int(max_q), int(max_k)
        else:
            self.batch, self.seqlen_q, hq, d = q.shape
            _, self.seqlen_k, hkv, _ = k.shape
        if d > MAX_HEAD_DIM or v.shape[-1] != d:
            raise ValueError(f"head dim {d} (v: {v.shape[-1]}) unsupported; max {MAX_HEAD_DIM}")
        if hq % hkv:
            raise ValueError(f"heads_kv={hkv} must divide heads_q={hq}")
        self.heads_q, self.heads_kv, self.head_dim = hq, hkv, d
        self.group = hq // hkv
        self.causal = bool(causal)
        self.sm_scale = float(softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d))
        if not self.sm_scale > 0:
            raise ValueError(f"softmax_scale must be > 0, got {self.sm_scale}")
        self.qk_scale = self.sm_scale * LOG2E
        dummy = torch.zeros(1, dtype=torch.int32, device=q.device)
        self.cu_q = cu_q if self.varlen else dummy
        self.cu_k = cu_k if self.varlen else dummy
        self.const = dict(
            HEAD_DIM=d,
            HEAD_DIM_PAD=configs.head_dim_pad(d),
            CAUSAL=self.causal,
            IS_VARLEN=self.varlen,
            DOT_PREC=dot_precision(q.dtype),
        )

    def lse_strides(self, lse: torch.Tensor) -> tuple[int, int]:
        return (0, lse.stride(0)) if self.varlen else (lse.stride(0), lse.stride(1))


def _forward(q, k, v, pb: _Problem):
    out = torch.empty_like(q)
    if pb.varlen:
        lse = torch.empty(pb.heads_q, q.shape[0], dtype=torch.float32, device=q.device)
    else:
        lse = torch.empty(pb.batch, pb.heads_q, pb.seqlen_q, dtype=torch.float32, device=q.device)
    vl = pb.varlen

    def grid(meta):
        return triton.cdiv(pb.seqlen_q, meta["BLOCK_M"]), pb.heads_q, pb.batch

    _fwd_kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        pb.cu_q,
        pb.cu_k,
        *_seq_strides(q, vl),
        *_seq_strides(k, vl),
        *_seq_strides(v, vl),
        *_seq_strides(out, vl),
        *pb.lse_strides(lse),
        pb.seqlen_q,
        pb.seqlen_k,
        pb.group,
        pb.qk_scale,
        configs.seq_bucket(pb.seqlen_q),
        **pb.const,
    )
    return out, lse


def _backward(dout, q, k, v, out, lse, pb: _Problem):
    vl = pb.varlen
    dout = _last_dim_contiguous(dout)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)
    bm = PREPROCESS_BLOCK_M
    bwd_preprocess[(triton.cdiv(pb.seqlen_q, bm), pb.heads_q, pb.batch)](
        out,
        dout,
        delta,
        pb.cu_q,
        *_seq_strides(out, vl),
        *_seq_strides(dout, vl),
        *pb.lse_strides(lse),
        pb.seqlen_q,
        HEAD_DIM=pb.head_dim,
        HEAD_DIM_PAD=pb.const["HEAD_DIM_PAD"],
        IS_VARLEN=vl,
        BLOCK_M=bm,
    )
    bucket = configs.seq_bucket(max(pb.seqlen_q, pb.seqlen_k))
    common = (
        *_seq_strides(q, vl),
        *_seq_strides(k, vl),
        *_seq_strides(v, vl),
        *_seq_strides(dout, vl),
    )

    def grid_kv(meta):
        return triton.cdiv(pb.seqlen_k, meta["BLOCK_N"]), pb.heads_kv, pb.batch

    _bwd_dkdv_kernel[grid_kv](
        q,
        k,
        v,
        dout,
        lse,
        delta,
        dk,
        dv,
        pb.cu_q,
        pb.cu_k,
        *common,
        *_seq_strides(dk, vl),
        *_seq_strides(dv, vl),
        *pb.lse_strides(lse),
        pb.seqlen_q,
        pb.seqlen_k,
        pb.group,
        pb.qk_scale,
        pb.sm_scale,
        bucket,
        **pb.const,
    )

    def grid_q(meta):
        return triton.cdiv(pb.seqlen_q, meta["BLOCK_M"]), pb.heads_q, pb.batch

    _bwd_dq_kernel[grid_q](
        q,
        k,
        v,
        dout,
        lse,
        delta,
        dq,
        pb.cu_q,
        pb.cu_k,
        *common,
        *_seq_strides(dq, vl),
        *pb.lse_strides(lse),
        pb.seqlen_q,
        pb.seqlen_k,
        pb.group,
        pb.qk_scale,
        pb.sm_scale,
        bucket,
        **pb.const,
    )
    return dq, dk, dv


def _problem(q, k, v, causal, softmax_scale, cu_q, cu_k, max_q, max_k):
    """q, k, v with a contiguous last dim, and the launch parameters of the problem."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    return q, k, v, _Problem(q, k, v, causal, softmax_scale, cu_q, cu_k, max_q, max_k)


class FlashAttnFunc(torch.autograd.Function):
    """``(q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
    max_seqlen_k) -> (out, lse)``, differentiable in q, k, v."""

    @staticmethod
    def forward(
        ctx, q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k
    ):
        q, k, v, pb = _problem(
            q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k
        )
        out, lse = _forward(q, k, v, pb)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.problem = pb
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = _backward(dout, q, k, v, out, lse, ctx.problem)
        return dq, dk, dv, None, None, None, None, None, None


def flash_attn_forward(
    q,
    k,
    v,
    causal=False,
    softmax_scale=None,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
    max_seqlen_q=None,
    max_seqlen_k=None,
):
    """The forward kernel alone, no autograd: ``(out, lse)``, lse fp32 (B, Hq, Sq) or varlen
    (Hq, total_q)."""
    q, k, v, pb = _problem(
        q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k
    )
    return _forward(q, k, v, pb)


def flash_attn_backward(
    dout,
    q,
    k,
    v,
    out,
    lse,
    causal=False,
    softmax_scale=None,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
    max_seqlen_q=None,
    max_seqlen_k=None,
):
    """The backward kernels alone: ``(dq, dk, dv)`` given ``out`` and its fp32 ``lse``.

    They need not come from this forward: with the *global* ``out`` and ``lse`` of a block's
    query rows (ring attention), P = exp(scale q k^T - lse) and delta = rowsum(dout * out) give
    that block's share of the gradients."""
    q, k, v, pb = _problem(
        q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k
    )
    out, lse = out.to(q.dtype).contiguous(), lse.float().contiguous()
    return _backward(dout.contiguous(), q, k, v, out, lse, pb)


def flash_attn(
    q,
    k,
    v,
    causal=False,
    softmax_scale=None,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
    max_seqlen_q=None,
    max_seqlen_k=None,
):
    """FlashAttention-2 (Triton). Returns ``(out, lse)``; see the module docstring."""
    return FlashAttnFunc.apply(
        q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k
    )
