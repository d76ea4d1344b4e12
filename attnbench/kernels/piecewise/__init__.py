"""attnbench's fused piecewise attention in Triton (backend ``piecewise_triton``).

Piecewise attention (FlagAttention's operator): the score of query ``i`` and key ``j`` is
``scale * q2_i . k2_j`` when ``d(i, j) = i + (Sk - Sq) - j >= w`` and ``scale * q1_i . k1_j``
otherwise, written from FlashAttention-2 with the (query block, key block) tiles classified so
only the tiles the threshold crosses compute both products. Modules: :mod:`.fwd`, :mod:`.bwd`
(deterministic dK/dV and dQ passes), :mod:`.configs` (tiles, autotuning), :mod:`.interface`
(launches, autograd). What it shares with triton_fa2 (tile I/O, softmax steps, the
preprocess kernel, the pruner, the kept tuning) comes from :mod:`attnbench.kernels._triton`.
Set ``TRITON_INTERPRET=1`` before the import to run it on the CPU.
"""

from .._triton import tuning
from . import configs
from .bwd import _bwd_dkdv_kernel, _bwd_dq_kernel
from .fwd import _fwd_kernel
from .interface import PiecewiseAttnFunc, piecewise_attention, piecewise_backward, piecewise_forward

AUTOTUNED = {"fwd": _fwd_kernel, "bwd_dkdv": _bwd_dkdv_kernel, "bwd_dq": _bwd_dq_kernel}


def chosen_configs() -> dict[str, str | None]:
    """{kernel: "BLOCK_MxBLOCK_N wWARPS sSTAGES"} of the config each kernel last ran with."""
    return tuning.chosen_configs(AUTOTUNED)


__all__ = [
    "AUTOTUNED",
    "PiecewiseAttnFunc",
    "chosen_configs",
    "configs",
    "piecewise_attention",
    "piecewise_backward",
    "piecewise_forward",
]
