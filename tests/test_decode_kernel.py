"""Tests of the split-KV decode kernel (``attnbench.kernels.decode``) against a torch reference.

CPU: the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set here when there is no
GPU), fp16 and fp32 only (the interpreter's bf16 ``tl.dot`` is wrong), tiny shapes, BLOCK_N 16.
Every cache slot past a sequence's length and every spare page holds NaN, and block-table
entries past a sequence's pages are -1, so a kernel that reads them fails the comparison.
GPU (``pytest -m gpu``): bf16 and head dim 128 as well.
"""

from __future__ import annotations

import os
import re

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from attnbench.kernels.decode import (  # noqa: E402
    DecodeConfig,
    candidate_configs,
    choose_config,
    decode_attention,
    resolve_config,
)

DEVICE = "cuda" if HAS_GPU else "cpu"
TOL = {torch.float16: (4e-3, 2e-3), torch.bfloat16: (3e-2, 1e-2), torch.float32: (2e-5, 1e-5)}


def reference(q, k_cache, v_cache, cache_lens, block_table=None, scale=None):
    """fp64 (out (B, L, Hq, D), lse (B, Hq, L)): the paged cache gathered to contiguous keys,
    bottom-right causal among the L new tokens."""
    batch, q_len, hq, d = q.shape
    scale = d**-0.5 if scale is None else scale
    group = hq // k_cache.shape[2]
    outs, lses = [], []
    for b in range(batch):
        n = int(cache_lens[b])
        if block_table is None:
            k, v = k_cache[b, :n], v_cache[b, :n]
        else:
            ps = k_cache.shape[1]
            pages = block_table[b, : -(-n // ps)].long()
            k = k_cache[pages].flatten(0, 1)[:n]
            v = v_cache[pages].flatten(0, 1)[:n]
        k = k.double().repeat_interleave(group, dim=1)  # (n, Hq, D)
        v = v.double().repeat_interleave(group, dim=1)
        s = torch.einsum("thd,nhd->htn", q[b].double(), k) * scale
        keys = torch.arange(n, device=q.device)
        last = n - q_len + torch.arange(q_len, device=q.device)
        s = s.masked_fill(keys[None, :] > last[:, None], float("-inf"))
        lses.append(torch.logsumexp(s, -1))
        outs.append(torch.einsum("htn,nhd->thd", torch.softmax(s, -1), v))
    return torch.stack(outs), torch.stack(lses)


def make_problem(seed, lens, q_len, hq, hkv, d, dtype, page_size=None, spare_pages=3):
    """q, k_cache, v_cache, cache_lens, block_table (None: contiguous). Pages in a seeded random
    order (never the identity)."""
    g = torch.Generator().manual_seed(seed)
    batch, cap = len(lens), max(lens) + 5
    if page_size is not None:
        cap = -(-cap // page_size) * page_size
    q = torch.randn(batch, q_len, hq, d, generator=g)
    kv = []
    for _ in range(2):
        x = torch.randn(batch, cap, hkv, d, generator=g)
        for b, n in enumerate(lens):
            x[b, n:] = float("nan")
        kv.append(x)
    lens_t = torch.tensor(lens, dtype=torch.int32)
    if page_size is None:
        k, v, table = kv[0], kv[1], None
    else:
        max_pages = cap // page_size
        num_pages = batch * max_pages + spare_pages
        perm = torch.randperm(num_pages, generator=g)
        assert not torch.equal(perm, torch.arange(num_pages))
        table = perm[: batch * max_pages].view(batch, max_pages).to(torch.int32)
        k, v = (torch.full((num_pages, page_size, hkv, d), float("nan")) for _ in range(2))
        k[table.flatten().long()] = kv[0].view(-1, page_size, hkv, d)
        v[table.flatten().long()] = kv[1].view(-1, page_size, hkv, d)
        for b, n in enumerate(lens):
            table[b, -(-n // page_size) :] = -1  # pages past the sequence: never read
    dev = dict(device=DEVICE)
    q, k, v = (x.to(dtype=dtype, **dev) for x in (q, k, v))
    return q, k, v, lens_t.to(**dev), None if table is None else table.to(**dev)


# (page_size or None, q_len, heads_q, heads_kv, num_splits (0: the heuristic), dtype)
CASES = [
    (None, 1, 4, 2, 1, torch.float16),
    (None, 3, 4, 2, 3, torch.float32),
    (None, 4, 4, 1, 4, torch.float16),
    (None, 1, 4, 1, 0, torch.float32),
    (1, 1, 4, 2, 4, torch.float32),
    (1, 3, 4, 1, 1, torch.float16),
    (3, 4, 4, 2, 3, torch.float16),
    (3, 1, 4, 1, 2, torch.float32),
    (4, 3, 4, 2, 2, torch.float32),
    (4, 1, 4, 2, 1, torch.float16),
    (16, 4, 4, 1, 3, torch.float16),  # page = one key tile: one lookup per tile
    (16, 1, 4, 2, 1, torch.float32),
    (32, 2, 8, 2, 2, torch.float16),  # page = two key tiles
]


def _id(case):
    ps, q_len, hq, hkv, splits, dtype = case
    layout = "contig" if ps is None else f"page{ps}"
    heads = "mqa" if hkv == 1 else f"gqa{hq}x{hkv}"
    split = "auto" if splits == 0 else f"split{splits}"
    return f"{layout}-q{q_len}-{heads}-{split}-{str(dtype).removeprefix('torch.')}"


def _check(q, k, v, lens, table, config, scale=None):
    out, lse = decode_attention(
        q, k, v, lens, block_table=table, config=config, softmax_scale=scale
    )
    ref_out, ref_lse = reference(q, k, v, lens, table, scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == torch.float32
    out_tol, lse_tol = TOL[q.dtype]
    out_err = (out.double() - ref_out).abs().max().item()
    lse_err = (lse.double() - ref_lse).abs().max().item()
    assert out_err < out_tol, f"out max abs err {out_err:.2e}"
    assert lse_err < lse_tol, f"lse max abs err {lse_err:.2e}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_matches_reference(case):
    ps, q_len, hq, hkv, splits, dtype = case
    # lengths: one equal to q_len, one whose last split has rows that see none of its keys
    lens = [q_len, 17, 70]
    q, k, v, cl, table = make_problem(len(_id(case)), lens, q_len, hq, hkv, 16, dtype, ps)
    config = None if splits == 0 else DecodeConfig(splits, BLOCK_N=16, num_stages=1)
    _check(q, k, v, cl, table, config)


def test_many_rows_and_fixed_split_len():
    """G * q_len = 96 rows: two row blocks of 64; split_len 16 with 2 splits is raised per
    sequence to cover the keys; head dim 32 and a custom scale."""
    q, k, v, cl, table = make_problem(7, [4, 40, 33], 4, 24, 1, 32, torch.float16, 8)
    config = DecodeConfig(2, BLOCK_N=16, num_stages=1, split_len=16)
    _check(q, k, v, cl, table, config, scale=0.3)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("page_size", [None, 1, 16, 64, 100])
def test_gpu_bigger(dtype, page_size):
    lens = [4, 1000, 4097, 257]
    q, k, v, cl, table = make_problem(0, lens, 4, 32, 8, 128, dtype, page_size)
    for cfg in [None, *candidate_configs(4, 8, max(lens), 16, 128)]:
        _check(q, k, v, cl, table, cfg)


def test_bad_inputs():
    q, k, v, cl, table = make_problem(1, [3, 20], 3, 4, 2, 16, torch.float16, 4)
    with pytest.raises(ValueError, match="shorter than q_len"):
        decode_attention(q, k, v, torch.tensor([2, 20], dtype=torch.int32, device=DEVICE),
                         block_table=table)  # fmt: skip
    with pytest.raises(ValueError, match="block_table"):
        decode_attention(q, k, v, cl, block_table=table.long())
    with pytest.raises(ValueError, match="cache_lens"):
        decode_attention(q, k, v, cl.long(), block_table=table)
    with pytest.raises(ValueError, match="capacity"):
        decode_attention(q, k, v, cl + 100, block_table=table)
    with pytest.raises(ValueError, match="head dim"):
        decode_attention(q[..., :12], k[..., :12], v[..., :12], cl, block_table=table)
    with pytest.raises(ValueError, match="must divide"):
        decode_attention(q[:, :, :3], k, v, cl, block_table=table)
    with pytest.raises(ValueError, match="num_splits"):
        DecodeConfig(0)
    if not HAS_GPU:
        with pytest.raises(ValueError, match="bf16"):
            decode_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), cl, block_table=table)


def test_choose_config():
    long_b1 = choose_config(1, 8, 32768, 4, 128, num_sms=132)
    b64 = choose_config(64, 8, 32768, 4, 128, num_sms=132)
    assert long_b1.num_splits > b64.num_splits >= 1
    assert 1 * 8 * long_b1.num_splits >= 2 * 132  # fills the GPU
    assert choose_config(1, 8, 200, 4, 128).num_splits == 1  # too short to split
    assert choose_config(1, 1, 1000, 1, 64).num_splits <= 1000 // 256  # splits >= ~256 keys
    for cfg in (long_b1, b64):
        assert re.fullmatch(r"split \d+x\d+ BN\d+ w\d+ s\d+", str(cfg)), str(cfg)
        assert cfg.num_splits * cfg.split_len >= 32768
        assert (cfg.num_splits - 1) * cfg.split_len < 32768  # no empty split
    assert str(DecodeConfig(8, 64, 4, 2, 512)) == "split 8x512 BN64 w4 s2"
    assert str(resolve_config(DecodeConfig(4, BLOCK_N=16), 70)) == "split 4x32 BN16 w4 s2"
    cands = candidate_configs(2, 8, 16384, 8, 128)
    assert 1 < len(cands) <= 8 and cands[0] == choose_config(2, 8, 16384, 8, 128)
    assert len(set(cands)) == len(cands)
    assert all(c.num_splits * c.split_len >= 16384 for c in cands)
