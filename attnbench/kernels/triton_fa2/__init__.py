"""attnbench's own FlashAttention-2 in Triton (backend ``triton_fa2``).

Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning" (2023).
Modules: :mod:`.fwd` (forward, online softmax), :mod:`.bwd` (deterministic backward: preprocess,
dK/dV pass, dQ pass), :mod:`.configs` (per-architecture tiles, autotuning), :mod:`.interface`
(launches and the autograd Function). What it shares with the other Triton kernels (tile I/O,
softmax steps, the pruner, the kept tuning: ``tuning``) comes from :mod:`attnbench.kernels._triton`.
Importing this package imports triton; set ``TRITON_INTERPRET=1`` before the import to run it on
the CPU.
"""

from .._triton import tuning
from . import configs
from .bwd import _bwd_dkdv_kernel, _bwd_dq_kernel
from .fwd import _fwd_kernel
from .interface import FlashAttnFunc, flash_attn, flash_attn_backward, flash_attn_forward

AUTOTUNED = {"fwd": _fwd_kernel, "bwd_dkdv": _bwd_dkdv_kernel, "bwd_dq": _bwd_dq_kernel}


def chosen_configs() -> dict[str, str | None]:
    """{kernel: "BLOCK_MxBLOCK_N wWARPS sSTAGES"} of the config each kernel last ran with."""
    return tuning.chosen_configs(AUTOTUNED)


__all__ = [
    "AUTOTUNED",
    "FlashAttnFunc",
    "chosen_configs",
    "configs",
    "flash_attn",
    "flash_attn_backward",
    "flash_attn_forward",
    "tuning",
]
