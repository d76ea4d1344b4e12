"""Host side of the CUDA FlashAttention kernels: the autograd Function over the extension.

Usage::

    from attnbench.kernels.cuda.interface import flash_attn_cuda

    out, lse = flash_attn_cuda(q, k, v, causal=True, kernel="fa2")   # "fa2" | "fa2_simt" | "fa1"
    out.backward(dout)                                                # fa2, fa1: dq, dk, dv

(B, S, H, D) inputs, fp16/bf16; ``lse`` fp32 (B, Hq, Sq), returned but not differentiated. The
extension is built on first use (:func:`attnbench.kernels.cuda.load`).
"""

from __future__ import annotations

import torch

from .. import cuda as fa_cuda


class FlashAttnCudaFunc(torch.autograd.Function):
    """``(q, k, v, causal, scale, kernel) -> (out, lse)``, differentiable in q, k, v."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, kernel):
        out, lse = fa_cuda.load().fwd(q, k, v, causal, scale, kernel)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.kernel = causal, scale, kernel
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = fa_cuda.load().bwd(
            dout.contiguous(), q, k, v, out, lse, ctx.causal, ctx.scale, ctx.kernel
        )
        return dq, dk, dv, None, None, None


def flash_attn_cuda(q, k, v, *, causal=False, softmax_scale=None, kernel="fa2"):
    """(B, S, H, D) attention -> (out, lse (B, Hq, Sq) fp32), differentiable for fa2/fa1."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    return FlashAttnCudaFunc.apply(q, k, v, bool(causal), float(scale), kernel)
