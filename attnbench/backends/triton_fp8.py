"""``triton_fp8*``: attnbench's own FP8 (e4m3) attention forward in Triton
(:mod:`attnbench.kernels.fp8`), FlashAttention-3's FP8 recipe, in four variants that differ only
in what is done to the inputs before the kernel:

============================  ========  ==========  =====================================
backend                       rotate    smooth_k    P @ V
============================  ========  ==========  =====================================
``triton_fp8``                no        no          e4m3 (FA3: block scales only)
``triton_fp8_rot``            Hadamard  no          e4m3 (FA3 with incoherent processing)
``triton_fp8_smooth``         no        yes         e4m3 (SageAttention's K smoothing)
``triton_fp8_pv16``           no        yes         fp16 (FP8 for Q @ K^T only)
``triton_int8``               no        yes         fp16, Q and K in INT8 (SageAttention 1's
                                                    recipe in this kernel; ``precision="int8"``)
============================  ========  ==========  =====================================

Quantization (block scales of 128 tokens for Q and K, per-channel for V, the rotation and the
smoothing) runs in ``prepare``, outside the attention's time; ``perf`` times it with the same
timer and reports it as ``quant_ms`` (FlashAttention-3 reports its FP8 attention the same way).
Forward only, declared ``precision="fp8"``: graded by the lossy rule (cosine similarity and
relative L1, :mod:`attnbench.rule`). Runs on CUDA GPUs with FP8 tensor cores (sm89+); on the
CPU under Triton's interpreter, every dtype (the kernel's products are FP8 or fp16, never bf16).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..kernels._triton import chosen_configs_text
from . import triton_common
from .base import Backend, Capabilities, Prepared, register

BLOCK_Q = BLOCK_K = 128  # tokens per quantization block of Q and of K
HEAD_DIMS = frozenset({32, 64, 128, 256})  # attnbench.kernels.fp8.HEAD_DIMS (a test checks)


def _kernels():
    return triton_common.kernels("fp8")


class _TritonFP8(Backend):
    rotate = False
    smooth_k = False
    pv = "fp8"
    qk = "fp8"  # the format of Q and K: e4m3, or int8
    caps = Capabilities(
        devices={"cuda", "cpu"},
        dtypes={"fp16", "bf16", "fp32"},
        head_dims=HEAD_DIMS,
        causal=True,
        gqa=True,
        seqlen_q_ne_k=True,
        varlen=False,
        backward=False,
        lse=True,
        precision="fp8",
    )

    def availability(self, device):
        why = triton_common.availability(self.name, "fp8", device, "every dtype")
        if why or device != "cuda" or not torch.cuda.is_available():
            return why
        major, minor = torch.cuda.get_device_capability()
        need = (8, 9) if "fp8" in (self.qk, self.pv) else (8, 0)  # INT8 + fp16: Ampere has them
        if (major, minor) < need:
            return (
                f"unsupported: {self.qk.upper()} tensor cores need sm{need[0]}{need[1]} or newer "
                f"(this GPU is sm{major}{minor})"
            )
        return None

    def _quantize(self, q, k, v):
        return _kernels().quantize(
            q, k, v, BLOCK_Q, BLOCK_K, self.rotate, self.smooth_k, self.pv, self.qk
        )

    def prepare(self, inp, case):
        q, k, v = (t.detach() for t in inp.differentiable)
        z = self._quantize(q, k, v)
        return Prepared(z.tensors, {"z": z, "qkv": (q, k, v)})

    def quant_fn(self, p, case):
        q, k, v = p.args["qkv"]
        return lambda: self._quantize(q, k, v)

    def forward(self, p, case):
        return _kernels().fp8_attention(p.args["z"], causal=case.causal, softmax_scale=case.scale)

    def kernel_config(self, p, case, mode):
        text = chosen_configs_text(_kernels().chosen_configs(), mode)
        blocks = f"Q/K {self.qk} scales per {BLOCK_Q}/{BLOCK_K} tokens, PV {self.pv}"
        return f"{text}; {blocks}" if text else blocks


@register
class TritonFP8(_TritonFP8):
    name = "triton_fp8"
    description = "FP8 attention forward in Triton (attnbench's own; FA3 block scales)"


@register
class TritonFP8Rot(_TritonFP8):
    name = "triton_fp8_rot"
    description = "triton_fp8 with a Hadamard rotation of Q and K (FA3's incoherent processing)"
    rotate = True


@register
class TritonFP8Smooth(_TritonFP8):
    name = "triton_fp8_smooth"
    description = "triton_fp8 with K smoothing (K minus its mean over tokens, SageAttention's)"
    smooth_k = True


@register
class TritonFP8PV16(_TritonFP8):
    name = "triton_fp8_pv16"
    description = "triton_fp8_smooth with P @ V in fp16 (FP8 for Q @ K^T only)"
    smooth_k = True
    pv = "fp16"


@register
class TritonInt8(_TritonFP8):
    name = "triton_int8"
    description = (
        "the same kernel with INT8 Q @ K^T (K smoothed) and fp16 P @ V (SageAttention 1's)"
    )
    smooth_k = True
    pv = "fp16"
    qk = "int8"
    caps = replace(_TritonFP8.caps, precision="int8")
