"""In-repo CUDA FlashAttention: ``cuda_fa2`` (tensor cores, fwd + bwd), ``cuda_fa2_simt``
(the same forward on fp32 CUDA cores) and ``cuda_fa1`` (FlashAttention-1's loop order, fwd + bwd).

The kernels live in ``kernels/cuda`` (see :mod:`attnbench.kernels.cuda`) and are built on first
use for the GPU's own architecture; ``availability`` triggers the build and reports a failed one
with the compiler's first error line. fp16/bf16, head dims 64 and 128, causal (bottom-right),
any sequence lengths, GQA, lse; backward is deterministic (no atomics).

Why FA1 is slower: HBM traffic of the forward, for one (batch, head) with Sq = Sk = N, head dim
d, element size e (2 bytes) and FA1's inner loop over Tc = N / Bc key blocks:

* FA2 (``cuda_fa2``, Br = 128): Q read once, O and lse written once, K and V read once per
  query block: ``bytes = 2 N d e + 4 N + (N / Br) * 2 N d e``.
* FA1 (``cuda_fa1``, Bc = 64, O/m/l in fp32): at every outer step the inner loop reads all of Q
  and reads and rewrites O, m, l: ``bytes = 2 N d e + Tc * (N d e + 2 * 4 N d + 4 * 4 N)``
  plus the final O conversion (``4 N d + N d e + 4 N``).

At N = 8192, d = 128 (bf16), per head: FA2 270 MB (its K/V re-reads mostly hit L2: one head's
K and V are 4 MB), FA1 1.36 GB (0.68 GB causal) of Q re-reads and fp32 O/m/l round trips that
do not fit in L2 (32 heads x 6 MB in flight), against 34 GFLOP: ~40 B/kFLOP, seven times the
H200's balance point (4.3 TB/s / 790 TFLOP/s = 5.4 B/kFLOP), so FA1 is memory-bound; and with
one thread block per (batch, head) it fills only B * H of the 132 SMs (32 at 16k tokens,
S = 8k, H = 16). :func:`fwd_hbm_bytes` evaluates the formulas.
"""

from __future__ import annotations

import torch

from ..case import Case
from .base import Backend, Capabilities, register

_FA2_BR, _FA1_BC = 128, 64


def fwd_hbm_bytes(case: Case, kernel: str) -> int:
    """HBM bytes the forward moves (the module docstring's formulas; causal ~halves the
    K/V/O traffic, counted here as the fraction of visible (query block, key block) pairs)."""
    n_q, n_k, d = case.seqlen_q, case.seqlen_k, case.head_dim
    e = torch.finfo(case.torch_dtype).bits // 8
    frac = 0.5 if case.causal else 1.0
    heads = case.batch * case.heads_q
    if kernel == "fa2":
        per = 2 * n_q * d * e + 4 * n_q + frac * -(-n_q // _FA2_BR) * 2 * n_k * d * e
    elif kernel == "fa1":
        tc = -(-n_k // _FA1_BC)
        per = (
            2 * n_k * d * e
            + frac * tc * (n_q * d * e + 8 * n_q * d + 16 * n_q)
            + 4 * n_q * d
            + n_q * d * e
            + 4 * n_q
        )
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return int(heads * per)


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
