"""What the in-repo Triton attention kernels share (``triton_fa2``, ``piecewise``; ``decode`` can
join): neither kernel package imports the other, both import from here.

- :mod:`.configs`: the architecture table in use, the interpreter flag (and its NumPy compat),
  shared-memory budgets, head-dim padding, sequence buckets, the config pruner, dtypes.
- :mod:`.tiles`: ``@triton.jit`` tile loads/stores, per-row loads and the causal key range.
- :mod:`.softmax`: ``@triton.jit`` online-softmax steps, the backward's probabilities and its
  preprocess kernel (``delta = rowsum(dO * O)``).
- :mod:`.tuning`: autotuning kept across runs (the user's tuning file, the choices shipped in
  ``tuning_data/`` for known GPUs), the timer hook (:func:`.tuning.set_bench`) and the parallel
  precompile.
- :mod:`.interpret_compat`: Triton 3.6's interpreter under NumPy >= 2.3.

This module itself imports neither torch nor triton: the backends ask :func:`interpreting`
before they import a kernel package.
"""

from __future__ import annotations

import os

# the kernels of each pass, for the ``kernel_config`` text of a timed mode
PASSES = {"fwd": ("fwd",), "bwd": ("bwd_dkdv", "bwd_dq")}


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set now (read at each call; a kernel package reads it
    once, when imported: its ``configs.INTERPRET``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def chosen_configs_text(chosen: dict[str, str | None], mode: str) -> str | None:
    """``"fwd 128x64 w8 s3"``, ``"bwd_dkdv ...; bwd_dq ..."``: the configs of the kernels a
    ``mode`` call ran (``fwd``, ``bwd``, else all three), from a kernel package's
    ``chosen_configs()`` (the config each kernel last ran with)."""
    names = PASSES.get(mode, ("fwd", "bwd_dkdv", "bwd_dq"))
    return "; ".join(f"{n} {chosen[n]}" for n in names if chosen.get(n)) or None
