"""Launch configurations of the Triton FlashAttention-2 kernels, per architecture.

Three tables, picked once when the kernels are defined (at import):

- ``hopper`` (sm_90 and newer): 128-row query tiles and 8 warps (two warpgroups, so ``tl.dot``
  lowers to ``wgmma`` on a 64-row slice each), 64/128-key tiles, 2-3 pipeline stages for the
  ``cp.async`` K/V prefetch. Head dim 256 drops to 64-key tiles and 2 stages (shared memory).
- ``ampere`` (sm_80/86/89): the same shapes with 4 warps as an option and shallower pipelines;
  ``mma.sync`` tiles prefer 64-128 rows per 4 warps.
- ``interpret`` (``TRITON_INTERPRET=1``): one small config per kernel (no autotuning, the
  interpreter is slow); the key tiles are smaller than the query tiles so the causal diagonal
  spans several key blocks and both the unmasked and masked loops run in the tests.

Autotuning keys are ``(HEAD_DIM, CAUSAL, IS_VARLEN, SEQ_BUCKET)`` plus the tensors' dtypes (the
autotuner appends them), where ``SEQ_BUCKET`` is the next power of two of the longest sequence
clamped to [256, 16384]: a sweep tunes once per bucket, not once per sequence length.
Candidates that cannot fit in shared memory are pruned before compiling.
``ATTNBENCH_TRITON_FA2_TUNE=0`` (read at each new tuning key) keeps only the first config that
survives the pruning (no autotuning, a quick start); the first entries are the expected winners.
The architecture, the interpreter flag, the buckets and the pruner are every Triton kernel's
(:mod:`attnbench.kernels._triton.configs`); the tables and the estimates are this package's.
"""

from __future__ import annotations

import triton

from .._triton.configs import ARCH, INTERPRET, head_dim_pad, make_pruner, seq_bucket

__all__ = ["ARCH", "INTERPRET", "head_dim_pad", "seq_bucket"]

ENV_TUNE = "triton_fa2_tune"  # the switch (attnbench.kernels.switches)

# (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M = query rows, BLOCK_N = key rows.
_FWD = {
    # pruned with tools/gpu/triton_fa2_check.py --configs on an H200 (bf16, S 8k, 2026-11-21):
    # hd128 128x128w8s3 490/461 (full/causal), 128x64w8s3 483/459; hd64 128x64w8s3 437/431,
    # 128x128w8s2 331/284 (dropped). 64x64 stays as the fallback for head dim 256. A second
    # tuning (S 2k/16k) tried 128x128w8s4, 128x64w8s4 (within 2%) and 128x128w4s3 (half): dropped.
    "hopper": [
        (128, 128, 8, 3),
        (128, 64, 8, 3),
        (64, 64, 4, 3),
        (64, 64, 4, 2),
    ],
    "ampere": [(128, 64, 4, 2), (128, 64, 8, 2), (128, 32, 4, 3), (64, 64, 4, 2)],
    "interpret": [(32, 16, 4, 1)],
}
# dk/dv pass: one program per BLOCK_N keys, looping over BLOCK_M query rows.
_BWD_DKDV = {
    # H200 (second tuning, S 2k/16k): 64x128w8s3 wins non-causal (hd128 16k 551 vs 459 for s2),
    # 64x128w8s2 wins causal at 2k (341 vs 283); 32x128 and 16x128 stay for head dim 256.
    # 64x128w4s2 (150) was dropped.
    "hopper": [
        (64, 128, 8, 3),
        (64, 128, 8, 2),
        (32, 128, 8, 2),
        (16, 128, 8, 2),
    ],
    "ampere": [(64, 128, 8, 2), (32, 128, 4, 2), (64, 64, 4, 2), (32, 64, 4, 2)],
    "interpret": [(16, 32, 4, 1)],
}
# dq pass: one program per BLOCK_M query rows, looping over BLOCK_N keys.
_BWD_DQ = {
    # H200: 128x64w8s3 and 128x64w8s4 are within 1-2% (hd128 16k 632/646); 128x128w8s2 was
    # slower (577) and dropped.
    "hopper": [
        (128, 64, 8, 3),
        (128, 64, 8, 4),
        (64, 64, 4, 2),
        (64, 32, 4, 2),
    ],
    "ampere": [(128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 4, 2), (64, 32, 4, 3)],
    "interpret": [(32, 16, 4, 1)],
}


def _make(table, names, arch: str | None = None) -> list[triton.Config]:
    """This GPU's table (or the one ``arch`` names) as Configs."""
    return [
        triton.Config({names[0]: a, names[1]: b}, num_warps=w, num_stages=s)
        for a, b, w, s in table[arch or ARCH]
    ]


def fwd_configs(arch: str | None = None) -> list[triton.Config]:
    return _make(_FWD, ("BLOCK_M", "BLOCK_N"), arch)


def bwd_dkdv_configs(arch: str | None = None) -> list[triton.Config]:
    return _make(_BWD_DKDV, ("BLOCK_M", "BLOCK_N"), arch)


def bwd_dq_configs(arch: str | None = None) -> list[triton.Config]:
    return _make(_BWD_DQ, ("BLOCK_M", "BLOCK_N"), arch)


def _smem_estimate(cfg: triton.Config, d: int, kind: str) -> int:
    """Bytes of shared memory a config needs, roughly (16-bit elements)."""
    bm, bn, st = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], max(cfg.num_stages, 1)
    if kind == "fwd":  # Q resident, K and V streamed
        return 2 * d * (bm + 2 * bn * st)
    if kind == "dkdv":  # K, V resident, Q and dO streamed
        return 2 * d * (2 * bn + 2 * bm * st)
    return 2 * d * (2 * bm + 2 * bn * st)  # dq: Q, dO resident, K and V streamed


def _fits_registers(cfg: triton.Config, d: int, kind: str, fp32: bool = False) -> bool:
    """fp32 inputs (FMA, no tensor cores): at most 64 x 64 tiles. At head dim 256 the fp32
    accumulators alone fill the register file: keep them at <= 64 rows (dk and dv: 2 x BLOCK_N x 256; dq: BLOCK_M x 256; out: BLOCK_M x 256, with the
    BLOCK_M x BLOCK_N score tile beside it)."""
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    if fp32:  # no tensor cores for exact fp32: FMA tiles, keep them small
        return bm * bn <= 4096
    if d < 256:
        return True
    if kind == "fwd":
        return bm * bn <= 8192
    if kind == "dkdv":
        return bn <= 64
    return bm <= 64


prune_fwd = make_pruner("fwd", _smem_estimate, _fits_registers, tune_env=ENV_TUNE)
prune_dkdv = make_pruner("dkdv", _smem_estimate, _fits_registers, tune_env=ENV_TUNE)
prune_dq = make_pruner("dq", _smem_estimate, _fits_registers, tune_env=ENV_TUNE)
