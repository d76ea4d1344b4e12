"""Launch configurations of the fused piecewise-attention kernels, per architecture.

The architecture, head-dim padding, sequence buckets, shared-memory budgets, the pruner and the
interpreter compatibility are every Triton kernel's (:mod:`attnbench.kernels._triton.configs`);
only the tiles differ from triton_fa2's. A piecewise tile holds two query tiles (``q1``,
``q2``) and streams two key tiles (``k1``, ``k2``) next to ``v``, so the FA2 Hopper tiles are
cut down where they would not fit in shared memory:

- forward: ``q1``, ``q2`` resident, ``k1``/``k2``/``v`` streamed (``2 d (2 BM + 3 BN stages)``
  bytes at 16 bits, the threshold band being the worst loop; split band: ``q1`` or ``q2``
  resident, ``2 d (BM + 2 BN stages)``);
- dK/dV: ``k1``, ``k2``, ``v`` resident, ``q1``/``q2``/``dO`` streamed; three fp32 accumulators
  (``dk1``, ``dk2``, ``dv``) but ``dk1`` and ``dk2`` are live together only in the band (split
  band: ``k1`` or ``k2`` and ``v`` resident, two accumulators, ``2 d (2 BN + 2 BM stages)``);
- dQ: ``q1``, ``q2``, ``dO`` resident, ``k1``/``k2``/``v`` streamed (split band: ``q1`` or
  ``q2`` and ``dO`` resident, ``2 d (2 BM + 2 BN stages)``).

Autotuning keys are ``(HEAD_DIM, CAUSAL, SEQ_BUCKET)`` plus the dtypes; the distance threshold
is a run-time argument and never recompiles or retunes. Choices are kept across runs by
:mod:`attnbench.kernels._triton.tuning` (kernels ``piecewise_fwd``, ``piecewise_bwd_dkdv``,
``piecewise_bwd_dq``; ``ATTNBENCH_RETUNE=1`` tunes again). The first entry of each table is the
expected winner. Environment:

- ``ATTNBENCH_PIECEWISE_TUNE=0`` (read at each new tuning key): keep only the first config that
  survives pruning (no tuning).
- ``ATTNBENCH_PIECEWISE_FWD`` / ``_DKDV`` / ``_DQ``: comma-separated tiles
  ``BMxBNwWsS[bsB|sp|sp2]`` (read at import; e.g. ``128x64w8s3,64x128w8s3bs2,64x128w8s2sp``) replacing that
  kernel's table (for tuning sessions).

``BAND_STAGES`` (a fifth table number, ``bsB`` in a tile spec; default the kernel's stages) sets
the pipeline depth of the threshold band's loop alone: the band streams three tiles per stage
(k1, k2, v or q1, q2, dO) against two in the one-product loops, so a shallower band lets the
common loops pipeline deeper in the same shared memory. ``SPLIT_BAND`` (``SP`` as the fifth
table entry, ``sp`` in a tile spec; all three kernels, default off) runs the band's tiles twice
as one-product tiles, one side of the threshold each (:mod:`.fwd`, :mod:`.bwd`): one of ``q1``/
``q2`` (``k1``/``k2``) resident and, backward, two fp32 accumulators live, as in FA2, and the
band streams two tiles per stage like the other loops (so ``bsB`` does not apply).
``SPLIT_BAND=2`` (``SP2``, ``sp2``; all three kernels) is the merged split: the same two
passes, each as one key (query) class, the band and the pure tiles of its side together, the
band's mask applied to every tile of it: half the pipelined loops of ``sp`` (6 against 12 in
dK/dV, 4 against 8 forward), hence fewer registers and spills (sm_90, offline), at the price
of a compare and select on every tile and the band's tiles loaded twice as in ``sp``.
``python -m attnbench.kernels.resources`` compiles the tables offline for sm_90 (no GPU) and prints
Triton's shared memory, registers and spills.
"""

from __future__ import annotations

import re

import triton

from .. import switches
from .._triton.configs import ARCH, INTERPRET, head_dim_pad, make_pruner, seq_bucket

__all__ = ["ARCH", "INTERPRET", "head_dim_pad", "seq_bucket"]

ENV_TUNE = "piecewise_tune"  # the switch (attnbench.kernels.switches)

# (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M = query rows, BLOCK_N = key rows.
# H200 tile timings behind these tables: docs/results/2026-12-02-h200-piecewise-tiles.md
SP = "sp"
SP2 = "sp2"  # the merged split band
_FWD = {
    "hopper": [
        (128, 64, 8, 3),
        (128, 128, 8, 3),
        (64, 64, 4, 3),
        (128, 64, 8, 2),
        (128, 128, 8, 2),
        (128, 64, 8, 4, 2),
        (128, 64, 8, 3, 2),
        (128, 64, 8, 3, SP),
        (128, 128, 8, 3, SP),
        (128, 64, 8, 4, SP),
        (64, 64, 4, 3, SP),
    ],
    "ampere": [(128, 64, 8, 2), (128, 32, 4, 2), (64, 64, 4, 2), (64, 32, 4, 2)],
    "interpret": [(32, 16, 4, 1)],
}
# dk/dv pass: one program per BLOCK_N keys, looping over BLOCK_M query rows.
_BWD_DKDV = {
    "hopper": [
        (64, 128, 8, 2, SP),
        (64, 128, 8, 2),
        (128, 128, 8, 2),
        (64, 64, 4, 3),
        (32, 128, 8, 2),
        (64, 64, 4, 2),
        (64, 128, 8, 3, 2),
        (64, 128, 8, 3, SP),
        (128, 128, 8, 2, SP),
        (64, 64, 4, 3, SP),
        (64, 128, 8, 2, SP2),
        (64, 128, 8, 3, SP2),
        (128, 128, 8, 2, SP2),
    ],
    "ampere": [(64, 64, 4, 2), (32, 128, 8, 2), (32, 64, 4, 2)],
    "interpret": [(16, 32, 4, 1)],
}
# dq pass: one program per BLOCK_M query rows, looping over BLOCK_N keys.
_BWD_DQ = {
    "hopper": [
        (128, 64, 8, 3, SP),
        (128, 64, 8, 2),
        (64, 64, 4, 3),
        (128, 64, 8, 3),
        (64, 64, 4, 2),
        (64, 32, 4, 2),
        (128, 64, 8, 3, 2),
        (128, 64, 8, 2, SP),
        (64, 64, 4, 3, SP),
        (128, 128, 8, 2, SP),
        (128, 64, 8, 3, SP2),
        (128, 64, 8, 2, SP2),
        (64, 64, 4, 3, SP2),
    ],
    "ampere": [(128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)],
    "interpret": [(32, 16, 4, 1)],
}

_TILE = re.compile(r"^(\d+)x(\d+)w(\d+)s(\d+)(?:bs(\d+))?(sp2?)?$")


def parse_tiles(spec: str) -> list[tuple[int | str, ...]]:
    """``"128x64w8s3,64x128w8s3bs2,64x128w8s2sp"`` -> ``[(128, 64, 8, 3), (64, 128, 8, 3, 2),
    (64, 128, 8, 2, "sp")]`` (``bsN``: the threshold band's pipeline stages, default the
    kernel's; ``sp``: the split band, whose passes pipeline like the other loops, so it takes no
    ``bsN``; ``sp2``: the merged split band, likewise)."""
    tiles = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        m = _TILE.match(part)
        if m is None:
            raise ValueError(f"bad tile {part!r}: expected BMxBNwWsS[bsB|sp|sp2], e.g. 128x64w8s3")
        *nums, split = m.groups()
        if split and nums[4] is not None:
            raise ValueError(
                f"bad tile {part!r}: bsB and sp exclude each other (a split band runs as "
                "one-product loops, pipelined with the kernel's stages)"
            )
        tiles.append(tuple(int(x) for x in nums if x is not None) + ((split,) if split else ()))
    return tiles


def _table(table: dict, env: str | None, arch: str | None = None) -> list[tuple[int | str, ...]]:
    """This GPU's table, or the tiles of the switch ``env`` (tuning sessions; None: no
    override); ``arch`` names a table."""
    if arch is not None:
        return table[arch]
    spec = switches.text(env) if env else ""
    if spec and not INTERPRET:
        return parse_tiles(spec)
    return table[ARCH]


def _kwargs(t: tuple[int | str, ...]) -> dict:
    """(BLOCK_M, BLOCK_N, warps, stages[, band stages | SP]) -> the config's kwargs:
    BAND_STAGES defaults to the kernel's stages (every loop pipelined alike); SPLIT_BAND=True
    only on split tiles, 2 on merged split ones (the kernels default to False, so the other
    tiles' kwargs, and the tuning choices stored for them, are unchanged)."""
    split = t[4:] in ((SP,), (SP2,))
    kw = {"BLOCK_M": t[0], "BLOCK_N": t[1], "BAND_STAGES": t[3] if split or len(t) < 5 else t[4]}
    return {**kw, "SPLIT_BAND": True if t[4] == SP else 2} if split else kw


def _make(table, env: str | None = None, arch: str | None = None) -> list[triton.Config]:
    return [
        triton.Config(_kwargs(t), num_warps=t[2], num_stages=t[3]) for t in _table(table, env, arch)
    ]


def fwd_configs(arch: str | None = None) -> list[triton.Config]:
    return _make(_FWD, "piecewise_fwd", arch=arch)


def bwd_dkdv_configs(arch: str | None = None) -> list[triton.Config]:
    return _make(_BWD_DKDV, "piecewise_dkdv", arch=arch)


def bwd_dq_configs(arch: str | None = None) -> list[triton.Config]:
    return _make(_BWD_DQ, "piecewise_dq", arch=arch)


def _smem_estimate(cfg: triton.Config, d: int, kind: str) -> int:
    """Bytes of shared memory a config needs (16-bit elements): the larger of a one-product
    loop (two tiles streamed per stage) and the band loop (three per band stage). Checked
    against Triton's own count for sm_90 (``triton.compile`` offline): fwd 128x64 s3 at d=128
    208 KiB (band s3) / 160 KiB (band s2); dK/dV 64x128 s3 bs2 193 KiB; dQ 128x64 s3 bs2 192 KiB.
    A split band (SPLIT_BAND, ``sp`` or ``sp2``) streams two tiles like the other loops and
    keeps one of k1/k2 (q1/q2) resident at a time: dK/dV 64x128 s2 sp 129 KiB, dQ 128x64 s2 sp
    128 KiB; the forward's split keeps one query tile and no dO: fwd 128x64 s3 sp 128 KiB,
    128x128 s3 sp 224 KiB."""
    bm, bn, st = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], max(cfg.num_stages, 1)
    band = max(cfg.kwargs.get("BAND_STAGES", st), 1)
    if cfg.kwargs.get("SPLIT_BAND", False):  # k1 or k2 + v resident (dq: q1 or q2 + dO)
        if kind == "fwd":  # q1 or q2 resident; k + v streamed
            return 2 * d * (bm + 2 * bn * st)
        resident, streamed = (bn, bm) if kind == "dkdv" else (bm, bn)
        return 2 * d * (2 * resident + 2 * streamed * st)
    if kind == "fwd":  # q1, q2 resident; k2 + v, k1 + v, or k1 + k2 + v streamed
        return 2 * d * (2 * bm + max(2 * bn * st, 3 * bn * band))
    if kind == "dkdv":  # k1, k2, v resident; q + dO or q1 + q2 + dO streamed
        return 2 * d * (3 * bn + max(2 * bm * st, 3 * bm * band))
    return 2 * d * (3 * bm + max(2 * bn * st, 3 * bn * band))  # dq: q1, q2, dO resident


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


prune_fwd = make_pruner("fwd", _smem_estimate, _fits_registers, q_arg="Q1", tune_env=ENV_TUNE)
prune_dkdv = make_pruner("dkdv", _smem_estimate, _fits_registers, q_arg="Q1", tune_env=ENV_TUNE)
prune_dq = make_pruner("dq", _smem_estimate, _fits_registers, q_arg="Q1", tune_env=ENV_TUNE)
