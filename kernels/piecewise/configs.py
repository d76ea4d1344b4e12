"""Launch configurations of the fused piecewise-attention kernels, per architecture.

The architecture, head-dim padding, sequence buckets, shared-memory budgets and the interpreter
compatibility come from :mod:`attnbench.kernels.triton_fa2.configs`; only the tiles differ. A
piecewise tile holds two query tiles (``q1``, ``q2``) and streams two key tiles (``k1``, ``k2``)
next to ``v``, so the FA2 Hopper tiles are cut down where they would not fit in shared memory:

- forward: ``q1``, ``q2`` resident, ``k1``/``k2``/``v`` streamed (``2 d (2 BM + 3 BN stages)``
  bytes at 16 bits, the threshold band being the worst loop);
- dK/dV: ``k1``, ``k2``, ``v`` resident, ``q1``/``q2``/``dO`` streamed; three fp32 accumulators
  (``dk1``, ``dk2``, ``dv``) but ``dk1`` and ``dk2`` are live together only in the band;
- dQ: ``q1``, ``q2``, ``dO`` resident, ``k1``/``k2``/``v`` streamed.

Autotuning keys are ``(HEAD_DIM, CAUSAL, SEQ_BUCKET)`` plus the dtypes; the distance threshold
is a run-time argument and never recompiles or retunes. Choices are kept across runs by
triton_fa2's :mod:`~attnbench.kernels.triton_fa2.tuning` (kernels ``piecewise_fwd``,
``piecewise_bwd_dkdv``, ``piecewise_bwd_dq``; ``ATTNBENCH_RETUNE=1`` tunes again). The first entry of each table is the
expected winner. Environment (read at import):

- ``ATTNBENCH_PIECEWISE_TUNE=0``: keep only the first config that survives pruning (no tuning).
- ``ATTNBENCH_PIECEWISE_FWD`` / ``_DKDV`` / ``_DQ``: comma-separated tiles ``BMxBNwWsS``
  (e.g. ``128x64w8s3,128x128w8s2``) replacing that kernel's table (for tuning sessions).
"""

from __future__ import annotations

import os
import re

import triton

from ..triton_fa2.configs import ARCH, INTERPRET, head_dim_pad, make_pruner, seq_bucket

__all__ = ["ARCH", "INTERPRET", "head_dim_pad", "seq_bucket"]

TUNE = os.environ.get("ATTNBENCH_PIECEWISE_TUNE", "1") != "0"

# (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M = query rows, BLOCK_N = key rows.
# Hopper: tuned on an H200 (2026-12-01, bf16 causal, w = S/2, S 2k-16k, 32k tokens, width 2048;
# ``tools/gpu/piecewise_check.py --configs``). Head dim 128 picked the first entry of each table
# at every S; the 128x128 forward / dQ tiles and 3-stage 64x128 dK/dV tiles ran out of shared
# memory there (the band loop streams k1, k2 and v). Head dim 64 picked 128x128 w8 s3 (S 16k) and
# 64x64 w4 s3 (S <= 8k) forward, 128x128 w8 s2 dK/dV, 64x64 w4 s3 dQ.
_FWD = {
    "hopper": [
        (128, 64, 8, 3),
        (128, 128, 8, 3),
        (64, 64, 4, 3),
        (128, 64, 8, 2),
        (128, 128, 8, 2),
    ],
    "ampere": [(128, 64, 8, 2), (128, 32, 4, 2), (64, 64, 4, 2), (64, 32, 4, 2)],
    "interpret": [(32, 16, 4, 1)],
}
# dk/dv pass: one program per BLOCK_N keys, looping over BLOCK_M query rows.
_BWD_DKDV = {
    "hopper": [(64, 128, 8, 2), (128, 128, 8, 2), (64, 64, 4, 3), (32, 128, 8, 2), (64, 64, 4, 2)],
    "ampere": [(64, 64, 4, 2), (32, 128, 8, 2), (32, 64, 4, 2)],
    "interpret": [(16, 32, 4, 1)],
}
# dq pass: one program per BLOCK_M query rows, looping over BLOCK_N keys.
_BWD_DQ = {
    "hopper": [(128, 64, 8, 2), (64, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 2), (64, 32, 4, 2)],
    "ampere": [(128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)],
    "interpret": [(32, 16, 4, 1)],
}

_TILE = re.compile(r"^(\d+)x(\d+)w(\d+)s(\d+)$")


def parse_tiles(spec: str) -> list[tuple[int, int, int, int]]:
    """``"128x64w8s3,64x64w4s2"`` -> ``[(128, 64, 8, 3), (64, 64, 4, 2)]``."""
    tiles = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        m = _TILE.match(part)
        if m is None:
            raise ValueError(f"bad tile {part!r}: expected BMxBNwWsS, e.g. 128x64w8s3")
        tiles.append(tuple(int(x) for x in m.groups()))
    return tiles


def _table(table: dict, env: str) -> list[tuple[int, int, int, int]]:
    spec = os.environ.get(env, "")
    if spec and not INTERPRET:
        return parse_tiles(spec)
    return table[ARCH]


def _make(table, env) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": a, "BLOCK_N": b}, num_warps=w, num_stages=s)
        for a, b, w, s in _table(table, env)
    ]


def fwd_configs() -> list[triton.Config]:
    return _make(_FWD, "ATTNBENCH_PIECEWISE_FWD")


def bwd_dkdv_configs() -> list[triton.Config]:
    return _make(_BWD_DKDV, "ATTNBENCH_PIECEWISE_DKDV")


def bwd_dq_configs() -> list[triton.Config]:
    return _make(_BWD_DQ, "ATTNBENCH_PIECEWISE_DQ")


def _smem_estimate(cfg: triton.Config, d: int, kind: str) -> int:
    """Bytes of shared memory a config needs, roughly (16-bit elements)."""
    bm, bn, st = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], max(cfg.num_stages, 1)
    if kind == "fwd":  # q1, q2 resident; k1, k2, v streamed (band loop)
        return 2 * d * (2 * bm + 3 * bn * st)
    if kind == "dkdv":  # k1, k2, v resident; q1, q2, dO streamed
        return 2 * d * (3 * bn + 3 * bm * st)
    return 2 * d * (3 * bm + 3 * bn * st)  # dq: q1, q2, dO resident; k1, k2, v streamed


def _fits_registers(cfg: triton.Config, d: int, kind: str, fp32: bool) -> bool:
    """fp32 (FMA tiles): at most 64 x 64. Head dim 256: the fp32 accumulators fill the register
    file, keep them small (out: BM x 256; dk1/dk2/dv: 3 x BN x 256; dq1/dq2: 2 x BM x 256)."""
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    if fp32:
        return bm * bn <= 4096
    if d < 256:
        return True
    if kind == "fwd":
        return bm * bn <= 4096
    if kind == "dkdv":
        return bn <= 64
    return bm <= 64


def _estimate_for(env: str):
    """The shared-memory estimate, except for tiles given in ``env`` (a tuning session): those
    all go to the compiler, which refuses the ones that do not fit (the autotuner skips them).
    The estimate assumes the band loop's three streamed tiles at every stage; Triton's allocator
    may fit more."""
    if os.environ.get(env) and not INTERPRET:
        return lambda cfg, d, kind: 0
    return _smem_estimate


prune_fwd = make_pruner(
    "fwd", _estimate_for("ATTNBENCH_PIECEWISE_FWD"), _fits_registers, q_arg="Q1", tune=TUNE
)
prune_dkdv = make_pruner(
    "dkdv", _estimate_for("ATTNBENCH_PIECEWISE_DKDV"), _fits_registers, q_arg="Q1", tune=TUNE
)
prune_dq = make_pruner(
    "dq", _estimate_for("ATTNBENCH_PIECEWISE_DQ"), _fits_registers, q_arg="Q1", tune=TUNE
)
