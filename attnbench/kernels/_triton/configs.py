"""What the Triton attention kernels' launch configurations share; each package keeps its tiles.

- ``ARCH``, picked once at import: ``hopper`` (sm_90 and newer), ``ampere`` (any older CUDA
  GPU) or ``interpret`` (``TRITON_INTERPRET=1``, or no GPU); each package has one table per
  architecture. ``SMEM_BYTES``: the shared memory per block a config may use there.
- ``INTERPRET``: ``TRITON_INTERPRET=1`` when this module was imported (the interpreter's NumPy
  compat is installed then, :mod:`.interpret_compat`).
- :func:`head_dim_pad`, :func:`seq_bucket`: the head-dim tile width and the sequence bucket of
  the autotuning keys (``SEQ_BUCKET``: the next power of two of the longest sequence clamped to
  [256, 16384], so a sweep tunes once per bucket, not once per sequence length).
- :func:`make_pruner`: the autotuner's ``prune_configs_by`` hook: configs that cannot fit in
  shared memory or whose accumulators cannot fit in registers are dropped before compiling, and
  only the first survivor is kept while the package's tuning switch is off.
- Host-side constants of every launch: ``DTYPES``, ``MAX_HEAD_DIM``, :func:`dot_precision`,
  ``PREPROCESS_BLOCK_M``.
"""

from __future__ import annotations

import os

import torch
import triton

from .. import switches

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

if INTERPRET:
    from .interpret_compat import install

    install()

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
SMEM_BYTES = {"hopper": 227 * 1024, "ampere": 163 * 1024, "interpret": 1 << 30}
PREPROCESS_BLOCK_M = 64


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision: fp32 inputs get exact fp32 products (TF32 would lose to
    same-dtype torch by far)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def arch() -> str:
    """``interpret``, ``hopper`` (sm_90+) or ``ampere`` (anything older with a CUDA GPU)."""
    if INTERPRET or not torch.cuda.is_available():
        return "interpret"
    major, _ = torch.cuda.get_device_capability()
    return "hopper" if major >= 9 else "ampere"


ARCH = arch()


def head_dim_pad(head_dim: int) -> int:
    """Tile width along the head dim: the next power of two, at least 16 (``tl.dot``'s K)."""
    return max(16, triton.next_power_of_2(head_dim))


def seq_bucket(seqlen: int) -> int:
    """Autotuning bucket of a sequence length."""
    return min(16384, max(256, triton.next_power_of_2(int(seqlen))))


def tune_on(env: str) -> bool:
    """Whether the kernels behind the switch ``env`` (:mod:`attnbench.kernels.switches`)
    autotune; read when a new tuning key is pruned, so a test or tool can turn it on after the
    kernels were imported (the autotuner reads it the same way at each launch,
    :class:`.tuning.PersistentAutotuner`)."""
    return switches.on(env)


def make_pruner(
    kind: str, smem_estimate, fits_registers, q_arg: str = "Q", tune_env: str | None = None
):
    """Autotune ``prune_configs_by`` hook: keep the configs whose shared memory
    (``smem_estimate(cfg, d, kind)``, doubled for fp32) fits this GPU and whose accumulators fit
    the registers (``fits_registers(cfg, d, kind, fp32)``); the smallest if none does; only the
    first unless :func:`tune_on` (``tune_env``; None: always all). The hook carries
    ``tune_env``: the autotuner forgets its in-memory choices when that switch flips
    (:class:`.tuning.PersistentAutotuner`)."""

    def prune(configs, named_args, **kwargs):
        d = named_args.get("HEAD_DIM_PAD", kwargs.get("HEAD_DIM_PAD"))
        q = named_args.get(q_arg)
        fp32 = q is not None and q.dtype == torch.float32
        scale = 2 if fp32 else 1  # 4-byte elements
        keep = [
            c
            for c in configs
            if smem_estimate(c, d, kind) * scale <= SMEM_BYTES[ARCH]
            and fits_registers(c, d, kind, fp32)
        ]
        keep = keep or [min(configs, key=lambda c: smem_estimate(c, d, kind))]
        return keep if tune_env is None or tune_on(tune_env) else keep[:1]

    prune.tune_env = tune_env
    return prune
