"""attnbench's fused piecewise attention in Triton (backend ``piecewise_triton``).

Piecewise attention (FlagAttention's operator): the score of query ``i`` and key ``j`` is
``scale * q2_i . k2_j`` when ``d(i, j) = i + (Sk - Sq) - j >= w`` and ``scale * q1_i . k1_j``
otherwise, written from FlashAttention-2 with the (query block, key block) tiles classified so
only the tiles the threshold crosses compute both products. Modules: :mod:`.fwd`, :mod:`.bwd`
(deterministic dK/dV and dQ passes), :mod:`.configs` (tiles, autotuning), :mod:`.interface`
(launches, autograd). Set ``TRITON_INTERPRET=1`` before the import to run it on the CPU.
"""

from . import configs
from .interface import (
    PiecewiseAttnFunc,
    chosen_configs,
    piecewise_attention,
    piecewise_backward,
    piecewise_forward,
)

__all__ = [
    "PiecewiseAttnFunc",
    "chosen_configs",
    "configs",
    "piecewise_attention",
    "piecewise_backward",
    "piecewise_forward",
]
