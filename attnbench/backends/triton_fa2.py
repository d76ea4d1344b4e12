"""``triton_fa2``: attnbench's own FlashAttention-2 in Triton (:mod:`attnbench.kernels.triton_fa2`).

Forward with the fp32 log-sum-exp, deterministic backward (separate dK/dV and dQ passes, GQA
summed inside the dK/dV program), varlen, GQA/MQA, bottom-right causal, any head dim up to 256,
fp16/bf16/fp32. Runs on CUDA; on the CPU only through Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported), where bf16 is refused because the
interpreter's bf16 ``tl.dot`` is wrong in triton 3.6.
"""

from __future__ import annotations

import torch

from ..kernels._triton import chosen_configs_text
from . import triton_common
from .base import Backend, Capabilities, register


def _kernels():
    return triton_common.kernels("triton_fa2")


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
        return triton_common.availability(self.name, "triton_fa2", device)

    def extra_check(self, case, device, mode):
        why = triton_common.interpreter_refusal(case, device)
        if why:
            return why
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
