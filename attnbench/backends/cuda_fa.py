"""In-repo CUDA FlashAttention: ``cuda_fa2`` (tensor cores, fwd + bwd), ``cuda_fa2_simt``
(the same forward on fp32 CUDA cores) and ``cuda_fa1`` (FlashAttention-1's loop order, fwd + bwd).

The kernels live in ``kernels/cuda`` (see :mod:`attnbench.kernels.cuda`) and are built on first
use for the GPU's own architecture; ``availability`` triggers the build and reports a failed one
with the compiler's first error line. fp16/bf16, head dims 64 and 128, causal (bottom-right),
any sequence lengths, GQA, lse; backward is deterministic (no atomics).

Why FA1 is slower (its HBM traffic): :mod:`attnbench.kernels.cuda.hbm`.
"""

from __future__ import annotations

import torch

from .base import Backend, Capabilities, register


def _ext():
    from ..kernels import cuda as fa_cuda

    return fa_cuda.load()


class _FlashAttnFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, kernel):
        out, lse = _ext().fwd(q, k, v, causal, scale, kernel)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.kernel = causal, scale, kernel
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _ext().bwd(
            dout.contiguous(), q, k, v, out, lse, ctx.causal, ctx.scale, ctx.kernel
        )
        return dq, dk, dv, None, None, None


def flash_attn_cuda(q, k, v, *, causal=False, softmax_scale=None, kernel="fa2"):
    """(B, S, H, D) attention -> (out, lse (B, Hq, Sq) fp32), differentiable for fa2/fa1."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    return _FlashAttnFn.apply(q, k, v, bool(causal), float(scale), kernel)


class _CudaFA(Backend):
    kernel = ""

    def availability(self, device):
        if device != "cuda":
            return f"{self.name} runs on CUDA only"
        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            return f"needs sm_80+ (mma.sync bf16, cp.async); this GPU is sm_{major}{minor}"
        from ..kernels import cuda as fa_cuda

        return fa_cuda.build_error()

    def forward(self, p, case):
        q, k, v = p.leaves
        return flash_attn_cuda(
            q, k, v, causal=case.causal, softmax_scale=case.scale, kernel=self.kernel
        )

    def build_flags(self):
        from ..kernels import cuda as fa_cuda

        return fa_cuda.build_flags()


_CAPS = dict(
    devices={"cuda"}, dtypes={"fp16", "bf16"}, head_dims={64, 128}, lse=True, deterministic=True
)


@register
class CudaFA2(_CudaFA):
    name = "cuda_fa2"
    kernel = "fa2"
    description = "in-repo CUDA FlashAttention-2 (mma.sync m16n8k16, ldmatrix, cp.async)"
    caps = Capabilities(**_CAPS)


@register
class CudaFA2Simt(_CudaFA):
    name = "cuda_fa2_simt"
    kernel = "fa2_simt"
    description = "in-repo CUDA FlashAttention-2 forward on fp32 CUDA cores (no tensor cores)"
    caps = Capabilities(**{**_CAPS, "backward": False, "deterministic": False})


@register
class CudaFA1(_CudaFA):
    name = "cuda_fa1"
    kernel = "fa1"
    description = "in-repo CUDA FlashAttention-1 (outer loop over K/V, O/l/m in HBM)"
    caps = Capabilities(**_CAPS)
