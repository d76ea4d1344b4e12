"""attnbench's own FP8 (e4m3) attention forward in Triton (backends ``triton_fp8*``).

FlashAttention-3's FP8 recipe (Shah et al., 2024): block-wise scales for Q and K, a per-channel
scale for V, P quantized in the kernel, fp32 accumulation, optional Hadamard rotation of Q and K
and optional K smoothing against outlier channels. Modules: :mod:`.quant` and :mod:`.quant_kernels`
(the quantization, one Triton pass per input, timed apart from the attention), :mod:`.fwd` (the kernel and its tiles),
:mod:`.interface` (validation, launch). Importing this package imports triton; set
``TRITON_INTERPRET=1`` before the import to run it on the CPU (the interpreter's FP8 down-cast
is corrected by :mod:`attnbench.kernels._triton.interpret_compat`).
"""

from .._triton import tuning
from .fwd import _fwd_kernel
from .interface import HEAD_DIMS, check_shapes, fp8_attention
from .quant import Quantized, dequantize, hadamard, quantize, quantize_torch

AUTOTUNED = {"fwd": _fwd_kernel}


def chosen_configs() -> dict[str, str | None]:
    """{kernel: "BLOCK_MxBLOCK_N wWARPS sSTAGES"} of the config the kernel last ran with."""
    return tuning.chosen_configs(AUTOTUNED)


__all__ = [
    "AUTOTUNED",
    "HEAD_DIMS",
    "Quantized",
    "check_shapes",
    "chosen_configs",
    "dequantize",
    "fp8_attention",
    "hadamard",
    "quantize",
    "quantize_torch",
]
