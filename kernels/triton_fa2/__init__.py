"""attnbench's own FlashAttention-2 in Triton (backend ``triton_fa2``).

Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning" (2023).
Modules: :mod:`.fwd` (forward, online softmax), :mod:`.bwd` (deterministic backward: preprocess,
dK/dV pass, dQ pass), :mod:`.configs` (per-architecture tiles, autotuning), :mod:`.interface`
(launches and the autograd Function). Importing this package imports triton; set
``TRITON_INTERPRET=1`` before the import to run it on the CPU.
"""

from . import configs
from .interface import FlashAttnFunc, flash_attn, flash_attn_backward, flash_attn_forward

__all__ = ["FlashAttnFunc", "configs", "flash_attn", "flash_attn_backward", "flash_attn_forward"]
