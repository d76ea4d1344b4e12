"""attnbench's own paged decode attention: split-KV ("flash-decoding") in Triton.

Dao, Haziza, Massa, Sizov, "Flash-Decoding for long-context inference" (2023): the keys of each
sequence are cut into splits that run as separate programs, and a second kernel merges their
partial results by log-sum-exp. Modules: :mod:`.kernel` (the split and combine kernels),
:mod:`.interface` (config heuristic, validation, launches). Importing this package imports
triton; set ``TRITON_INTERPRET=1`` before the import to run it on the CPU (fp16/fp32).
"""

from .interface import (
    DecodeConfig,
    candidate_configs,
    choose_config,
    decode_attention,
    num_sms,
    resolve_config,
)

__all__ = [
    "DecodeConfig",
    "candidate_configs",
    "choose_config",
    "decode_attention",
    "num_sms",
    "resolve_config",
]
