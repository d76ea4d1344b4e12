"""``triton_fa2``: attnbench's own FlashAttention-2 in Triton (:mod:`attnbench.kernels.triton_fa2`).

Forward with the fp32 log-sum-exp, deterministic backward (separate dK/dV and dQ passes, GQA
summed inside the dK/dV program), varlen, GQA/MQA, bottom-right causal, any head dim up to 256,
fp16/bf16/fp32. Runs on CUDA; on the CPU only through Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported), where bf16 is refused because the
interpreter's bf16 ``tl.dot`` is wrong in triton 3.6.
"""

from __future__ import annotations

import torch

from ..kernels._triton import chosen_configs_text, interpreting
from .base import Backend, Capabilities, register

_KERNELS = None


def _kernels():
    """The kernel package, imported on first use; its autotuning times with the harness's
    timer (registered here, before the first launch: the kernels never import the harness)."""
    global _KERNELS
    if _KERNELS is None:
        from ..kernels import triton_fa2
        from ..kernels._triton import tuning
        from ..run.timing import autotune_bench

        tuning.set_bench(autotune_bench)
        _KERNELS = triton_fa2
    return _KERNELS


@register
class TritonFA2(Backend):
    name = "triton_fa2"
    description = "FlashAttention-2 in Triton (attnbench's own; deterministic backward)"
    _caps = dict(
        dtypes={"fp16", "bf16", "fp32"},
        max_head_dim=256,
        causal=True,
        gqa=True,
        seqlen_q_ne_k=True,
        varlen=True,
        backward=True,
        lse=True,
        deterministic=True,
        block=True,
        block_backward=True,
    )

    @property
    def caps(self) -> Capabilities:
        """CPU is listed: there it runs under Triton's interpreter, and without
        ``TRITON_INTERPRET=1`` :meth:`availability` says how to turn it on."""
        return Capabilities(devices={"cuda", "cpu"}, **self._caps)

    def availability(self, device):
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return f"triton not importable: {e}"
        if device == "cpu" and not interpreting():
            return (
                "triton_fa2 runs on the CPU only under Triton's interpreter: set "
                "TRITON_INTERPRET=1 (fp16/fp32 cases)"
            )
        try:
            kernels = _kernels()
        except Exception as e:  # a broken triton install: say so instead of crashing the run
            return f"triton_fa2 kernels not importable: {type(e).__name__}: {e}"
        if device == "cpu" and not kernels.configs.INTERPRET:
            return "triton_fa2 kernels were imported before TRITON_INTERPRET=1 was set"
        return None

    def extra_check(self, case, device, mode):
        if device == "cpu" and case.dtype == "bf16":
            return (
                "unsupported: bf16 under TRITON_INTERPRET (the interpreter's bf16 tl.dot is "
                "wrong in triton 3.6)"
            )
        if case.softmax_scale is not None and case.softmax_scale <= 0:
            return "unsupported: softmax_scale <= 0"
        return None

    def forward(self, p, case):
        q, k, v = p.leaves
        inp = p.args["inputs"]
        return _kernels().flash_attn(
            q,
            k,
            v,
            causal=case.causal,
            softmax_scale=case.scale,
            cu_seqlens_q=inp.cu_seqlens_q,
            cu_seqlens_k=inp.cu_seqlens_k,
            max_seqlen_q=inp.max_seqlen_q,
            max_seqlen_k=inp.max_seqlen_k,
        )

    def kernel_config(self, p, case, mode):
        return chosen_configs_text(_kernels().chosen_configs(), mode)

    def block_forward(self, q, k, v, causal, softmax_scale):
        with torch.no_grad():
            return _kernels().flash_attn_forward(q, k, v, causal, softmax_scale)

    def block_backward(self, dout, q, k, v, out, lse, causal, softmax_scale):
        """The FA2 backward kernels as they are, P recomputed from the supplied global lse."""
        return _kernels().flash_attn_backward(dout, q, k, v, out, lse, causal, softmax_scale)
