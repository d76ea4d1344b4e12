"""In-repo CUDA FlashAttention: ``cuda_fa2`` (tensor cores, fwd + bwd), ``cuda_fa2_simt``
(the same forward on fp32 CUDA cores) and ``cuda_fa1`` (FlashAttention-1's loop order, fwd + bwd).

The kernels live in :mod:`attnbench.kernels.cuda` (their autograd Function in
:mod:`attnbench.kernels.cuda.interface`) and are built on first use for the GPU's own
architecture; ``availability`` triggers the build and reports a failed one with the compiler's
first error line. fp16/bf16, head dims 64 and 128, causal (bottom-right),
any sequence lengths, GQA, lse; backward is deterministic (no atomics).

Why FA1 is slower (its HBM traffic): :mod:`attnbench.kernels.cuda.hbm`.
"""

from __future__ import annotations

import torch

from ..kernels import cuda as fa_cuda
from ..kernels.cuda.interface import flash_attn_cuda
from .base import Backend, Capabilities, register


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
        return fa_cuda.build_error()

    def forward(self, p, case):
        q, k, v = p.leaves
        return flash_attn_cuda(
            q, k, v, causal=case.causal, softmax_scale=case.scale, kernel=self.kernel
        )

    def build_flags(self):
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
