"""Kept tuning of the decode kernel: the split plan and tile, chosen per shape class.

The split count changes the grid and whether the combine kernel runs, which ``triton.autotune``
cannot vary, so the choice is made on the host with :func:`attnbench.kernels._triton.tuning.choose`:
the kept choice (the user's tuning file, else the choices shipped for this GPU and software),
else, while the ``decode_tune`` switch is on and a GPU is present, every candidate of
:func:`candidate_configs` timed with the registered timer and the fastest kept; else the
heuristic's :func:`choose_config`. Answers are kept in memory per key for the process.

Key (the shape class): batch and the longest cache length in power-of-two buckets, KV heads,
query rows per KV head (group x q_len), head dim, page size, dtype.
"""

from __future__ import annotations

import torch
import triton

from .._triton import tuning
from .._triton.configs import seq_bucket
from .interface import DecodeConfig, candidate_configs, choose_config, decode_attention, num_sms

_memo: dict[tuple, DecodeConfig] = {}


def shape_key(q, k_cache, max_cache_len: int, page_size: int) -> tuple:
    b, q_len, hq, d = q.shape
    hkv = k_cache.shape[2]
    cache = min(1 << 20, max(256, triton.next_power_of_2(int(max_cache_len))))
    return (
        triton.next_power_of_2(b),
        hkv,
        hq // hkv * q_len,
        d,
        page_size,
        cache if max_cache_len > 16384 else seq_bucket(max_cache_len),
        str(q.dtype),
    )


def _as_triton(cfg: DecodeConfig) -> triton.Config:
    kw = dict(NUM_SPLITS=cfg.num_splits, BLOCK_N=cfg.BLOCK_N, SPLIT_LEN=cfg.split_len)
    return triton.Config(kw, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _as_decode(cfg: triton.Config) -> DecodeConfig:
    kw = cfg.kwargs
    return DecodeConfig(
        kw["NUM_SPLITS"], kw["BLOCK_N"], cfg.num_warps, cfg.num_stages, kw["SPLIT_LEN"]
    )


def tuned_config(
    q, k_cache, v_cache, cache_lens, *, block_table=None, softmax_scale=None, max_cache_len
) -> DecodeConfig:
    """The config to run this problem with (see the module docstring)."""
    page_size = k_cache.shape[1] if block_table is not None else 0
    key = shape_key(q, k_cache, max_cache_len, page_size)
    if key in _memo:
        return _memo[key]
    b, q_len, hq, d = q.shape
    hkv = k_cache.shape[2]
    args = (b, hkv, max_cache_len, hq // hkv * q_len, d, num_sms(q.device))
    if q.device.type != "cuda":  # the interpreter: nothing to time
        _memo[key] = choose_config(*args)
        return _memo[key]
    candidates = [_as_triton(c) for c in candidate_configs(*args)]

    def launch(cfg):
        decode_attention(
            q,
            k_cache,
            v_cache,
            cache_lens,
            block_table=block_table,
            softmax_scale=softmax_scale,
            config=_as_decode(cfg),
            max_cache_len=max_cache_len,
        )

    best = tuning.choose("decode", key, candidates, launch, tune_env="decode_tune")
    torch.cuda.synchronize(q.device)
    _memo[key] = _as_decode(best)
    return _memo[key]
