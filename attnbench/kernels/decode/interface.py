"""Host side of the split-KV decode kernel: the config, its heuristic, validation, the launches.

Usage::

    from attnbench.kernels.decode import decode_attention

    out, lse = decode_attention(q, k_cache, v_cache, cache_lens)                  # contiguous
    out, lse = decode_attention(q, k_pages, v_pages, cache_lens, block_table=bt)  # paged

``q`` (B, q_len, Hq, D); contiguous caches (B, S_max, Hkv, D), paged caches
(num_pages, page_size, Hkv, D) with ``block_table`` int32 (B, max_pages); ``cache_lens`` int32
(B,) counts each sequence's keys including its q_len new ones. Returns ``out`` (B, q_len, Hq, D)
in q's dtype and ``lse`` fp32 (B, Hq, q_len), natural log of the scaled scores.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, replace

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if INTERPRET:
    from .._triton.interpret_compat import install

    install()

from .kernel import LOG2E, _combine_kernel, _split_kernel  # noqa: E402

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (16, 32, 64, 128, 256)
DEFAULT_SMS = 132  # H100 / H200 SXM
MIN_SPLIT_LEN = 256  # shorter splits cost more in the combine than they win in parallelism
MAX_SPLITS = 64  # the combine holds (next_pow2(num_splits), D) fp32 in registers
MAX_BLOCK_M = 64  # packed query rows per program; more rows take more programs


@dataclass(frozen=True)
class DecodeConfig:
    """Launch parameters. ``split_len`` (keys per split, a multiple of BLOCK_N) is what
    :func:`choose_config` planned for the longest sequence; 0 splits each sequence evenly. The
    kernel raises it per sequence where ``num_splits`` splits of it would not cover the keys."""

    num_splits: int
    BLOCK_N: int = 64
    num_warps: int = 4
    num_stages: int = 2
    split_len: int = 0

    def __post_init__(self):
        if self.num_splits < 1 or self.num_splits > MAX_SPLITS:
            raise ValueError(f"num_splits must be in 1..{MAX_SPLITS}, got {self.num_splits}")
        if self.BLOCK_N < 16 or self.BLOCK_N & (self.BLOCK_N - 1):
            raise ValueError(f"BLOCK_N must be a power of two >= 16, got {self.BLOCK_N}")
        if self.split_len < 0 or self.split_len % self.BLOCK_N:
            raise ValueError(f"split_len {self.split_len} must be a multiple of BLOCK_N")

    def __str__(self) -> str:
        split = f"{self.num_splits}x{self.split_len}" if self.split_len else f"{self.num_splits}"
        return f"split {split} BN{self.BLOCK_N} w{self.num_warps} s{self.num_stages}"


def block_m(q_rows: int) -> int:
    """Packed query rows per program: G * q_len up to a power of two, in [16, MAX_BLOCK_M]."""
    return min(MAX_BLOCK_M, max(16, triton.next_power_of_2(q_rows)))


def _with_splits(
    num_splits: int, max_cache_len: int, block_n: int, fill: bool = False, **kw
) -> DecodeConfig:
    """``num_splits`` splits of whole key tiles over ``max_cache_len`` keys, none empty. The
    split length is rounded up to whole tiles (at most ``num_splits`` splits, none shorter than
    asked) or, with ``fill``, down (at least ``num_splits`` splits, to fill the GPU); at most
    MAX_SPLITS either way."""
    max_len = max(1, max_cache_len)
    num_splits = max(1, min(num_splits, MAX_SPLITS))
    tiles = triton.cdiv(max_len, block_n)
    per_split = tiles // num_splits if fill and num_splits > 1 else triton.cdiv(tiles, num_splits)
    split_len = max(1, per_split) * block_n
    if triton.cdiv(max_len, split_len) > MAX_SPLITS:
        split_len = triton.cdiv(tiles, MAX_SPLITS) * block_n
    return DecodeConfig(triton.cdiv(max_len, split_len), block_n, split_len=split_len, **kw)


def choose_config(
    batch: int,
    heads_kv: int,
    max_cache_len: int,
    q_rows: int,
    head_dim: int,
    num_sms: int = DEFAULT_SMS,
) -> DecodeConfig:
    """Heuristic config. ``q_rows`` = G * q_len (query rows per KV head).

    Programs without splitting: batch * heads_kv * ceil(q_rows / BLOCK_M). Splits are added
    until there are about two programs per SM, but no split is shorter than MIN_SPLIT_LEN keys
    (so a short cache is never split) and no more than MAX_SPLITS; the split length is then
    rounded to whole BLOCK_N tiles: down where the GPU is to be filled (a few more splits),
    up where the cache length limits the splits (none shorter than MIN_SPLIT_LEN); none empty.
    Tiles: BLOCK_N 64 (32 at head dim 256), 8 warps for 64-row tiles of head dim >= 128."""
    bm = block_m(q_rows)
    programs = batch * heads_kv * triton.cdiv(q_rows, bm)
    want = triton.cdiv(2 * num_sms, max(1, programs))
    by_len = max(1, max_cache_len // MIN_SPLIT_LEN)
    block_n = 64 if head_dim <= 128 else 32
    warps = 8 if bm >= 64 and head_dim >= 128 else 4
    stages = 3 if head_dim <= 64 else 2
    return _with_splits(
        min(want, by_len), max_cache_len, block_n, want < by_len, num_warps=warps, num_stages=stages
    )


def candidate_configs(
    batch: int,
    heads_kv: int,
    max_cache_len: int,
    q_rows: int,
    head_dim: int,
    num_sms: int = DEFAULT_SMS,
) -> list[DecodeConfig]:
    """Up to 8 configs for an autotuner: the heuristic's first, then half and twice its splits,
    the other key tile, the other warp count, the other pipeline depth, and their mixes."""
    base = choose_config(batch, heads_kv, max_cache_len, q_rows, head_dim, num_sms)
    s, bn, w, st = base.num_splits, base.BLOCK_N, base.num_warps, base.num_stages
    other_bn = 32 if bn == 64 else 64
    tries = [
        (s * 2, bn, w, st),
        (max(1, s // 2), bn, w, st),
        (s, other_bn, w, st),
        (s, bn, 12 - w, st),
        (s, bn, w, 5 - st),
        (s * 2, other_bn, w, st),
        (s * 4, bn, w, st),
        (s, other_bn, 12 - w, st),
    ]
    out = [base]
    for ns, b, warps, stages in tries:
        cfg = _with_splits(ns, max_cache_len, b, num_warps=warps, num_stages=stages)
        if cfg not in out:
            out.append(cfg)
    return out[:8]


@functools.lru_cache(maxsize=16)
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def num_sms(device: torch.device) -> int:
    """SM count of a CUDA device, else DEFAULT_SMS (what the CPU-side heuristic plans for)."""
    return _num_sms(device) if device.type == "cuda" else DEFAULT_SMS


def _check(q, k_cache, v_cache, cache_lens, block_table, max_cache_len) -> int:
    """Validates the problem; returns the longest cache length (read from ``cache_lens``, one
    device sync, unless ``max_cache_len`` is given: then the caller vouches for the lengths)."""
    if q.dim() != 4 or k_cache.dim() != 4:
        raise ValueError(f"q and the caches must be 4-D, got {tuple(q.shape)}, {k_cache.shape}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache {tuple(v_cache.shape)} != k_cache {tuple(k_cache.shape)}")
    if q.dtype not in DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one of {DTYPES}, got {q.dtype}, {k_cache.dtype}")
    if INTERPRET and q.dtype == torch.bfloat16:
        raise ValueError("bf16 is unsupported under TRITON_INTERPRET=1 (its bf16 tl.dot is wrong)")
    batch, q_len, hq, d = q.shape
    if d not in HEAD_DIMS or k_cache.shape[-1] != d:
        raise ValueError(f"head dim {d} (cache {k_cache.shape[-1]}) must be one of {HEAD_DIMS}")
    hkv = k_cache.shape[2]
    if hq % hkv:
        raise ValueError(f"heads_kv={hkv} must divide heads_q={hq}")
    if q_len < 1 or batch < 1:
        raise ValueError(f"empty q {tuple(q.shape)}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache need a contiguous last dim")
    devices = {q.device, k_cache.device, v_cache.device, cache_lens.device}
    if block_table is not None:
        devices.add(block_table.device)
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")
    if cache_lens.dtype != torch.int32 or cache_lens.shape != (batch,):
        raise ValueError(f"cache_lens must be int32 ({batch},), got {cache_lens.dtype} {tuple(cache_lens.shape)}")  # fmt: skip
    if block_table is None:
        if k_cache.shape[0] != batch:
            raise ValueError(f"contiguous cache batch {k_cache.shape[0]} != q batch {batch}")
        capacity = k_cache.shape[1]
    else:
        if block_table.dtype != torch.int32 or block_table.dim() != 2:
            raise ValueError(f"block_table must be 2-D int32, got {block_table.dtype} {tuple(block_table.shape)}")  # fmt: skip
        if block_table.shape[0] != batch:
            raise ValueError(f"block_table batch {block_table.shape[0]} != q batch {batch}")
        capacity = block_table.shape[1] * k_cache.shape[1]
    if max_cache_len is not None:
        shortest = longest = int(max_cache_len)
    else:
        shortest, longest = torch.stack(torch.aminmax(cache_lens)).tolist()  # one sync
    if shortest < q_len:
        raise ValueError(f"a cache length ({shortest}) is shorter than q_len={q_len}")
    if longest > capacity:
        raise ValueError(f"a cache length ({longest}) exceeds the cache's capacity {capacity}")
    return longest


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    *,
    block_table: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    config: DecodeConfig | None = None,
    max_cache_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal (bottom-right) attention of the q_len new tokens against their KV cache; see the
    module docstring. ``config`` None: :func:`choose_config`. ``max_cache_len``: the longest
    ``cache_lens`` entry, if the caller knows it (saves a device sync; the per-sequence length
    checks are then skipped)."""
    longest = _check(q, k_cache, v_cache, cache_lens, block_table, max_cache_len)
    batch, q_len, hq, d = q.shape
    hkv = k_cache.shape[2]
    group = hq // hkv
    if config is None:
        config = choose_config(batch, hkv, longest, group * q_len, d, num_sms(q.device))
    if q.stride(-1) != 1:
        q = q.contiguous()
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(d)
    paged = block_table is not None
    bt = block_table if paged else cache_lens  # any int32 pointer when unused
    bm = block_m(group * q_len)
    n_split = config.num_splits
    direct = n_split == 1

    out = torch.empty_like(q)
    lse = torch.empty(batch, hq, q_len, dtype=torch.float32, device=q.device)
    if direct:
        o_buf, l_buf = out, lse
        o_strides = (*out.stride()[:3], 0)
        l_strides = (lse.stride(0), lse.stride(2), lse.stride(1), 0)
    else:
        o_buf = torch.empty(batch, q_len, hq, n_split, d, dtype=torch.float32, device=q.device)
        l_buf = torch.empty(batch, q_len, hq, n_split, dtype=torch.float32, device=q.device)
        o_strides = o_buf.stride()[:4]
        l_strides = l_buf.stride()
    grid = (n_split, hkv * triton.cdiv(group * q_len, bm), batch)
    _split_kernel[grid](
        q, k_cache, v_cache, bt, cache_lens, o_buf, l_buf,
        *q.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3],
        bt.stride(0) if paged else 0,
        *o_strides, *l_strides,
        q_len, config.split_len, scale * LOG2E,
        GROUP=group, HEAD_DIM=d, PAGED=paged, PAGE_SIZE=k_cache.shape[1] if paged else 1,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        BLOCK_M=bm, BLOCK_N=config.BLOCK_N,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    if not direct:
        block_s = triton.next_power_of_2(n_split)
        _combine_kernel[(hq, q_len, batch)](
            o_buf, l_buf, out, lse,
            *o_strides, *l_strides, *out.stride()[:3], *lse.stride(),
            n_split, HEAD_DIM=d, BLOCK_S=block_s,
            num_warps=4 if block_s * d <= 8192 else 8,
        )  # fmt: skip
    return out, lse


def resolve_config(config: DecodeConfig, max_cache_len: int) -> DecodeConfig:
    """``config`` with the split length the kernel uses for a ``max_cache_len``-key sequence."""
    even = triton.cdiv(triton.cdiv(max(1, max_cache_len), config.num_splits), config.BLOCK_N)
    return replace(config, split_len=max(config.split_len, even * config.BLOCK_N))
