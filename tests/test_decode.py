"""The ``decode`` problem (inference attention against a KV cache) on the CPU: its case, inputs
(random page order, NaN outside the cache), reference, FLOPs/bytes, the three backends through
``attnbench accuracy``/``perf`` (decode_triton under ``TRITON_INTERPRET=1``, set by conftest),
the refusals of bad configs, and a kernel that reads outside the cache failing accuracy."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from attnbench.backends import REGISTRY
from attnbench.backends.base import Backend, Capabilities, Prepared
from attnbench.problems.attention.reference import attention_ref
from attnbench.problems.decode import (
    DecodeCase,
    decode_bytes,
    decode_flops,
    make_inputs,
    needs,
    reference,
)
from attnbench.problems.decode import case as case_mod
from attnbench.run.check import check_backend, make_truth
from attnbench.run.config import load_config, select_cases

CASES = [
    DecodeCase(2, 4, 2, 37, 16, "fp32"),
    DecodeCase(3, 4, 1, 41, 16, "fp32", q_len=3, cache_dist="uniform", page_size=5),
    DecodeCase(3, 4, 4, 70, 32, "fp16", q_len=2, cache_lens=(2, 17, 70), page_size=16),
    DecodeCase(2, 6, 2, 1, 16, "fp32", page_size=1),
    DecodeCase(2, 4, 2, 33, 16, "bf16", q_len=4, page_size=8, softmax_scale=0.3),
]


def _dense_kv(inp, b: int):
    """Sequence ``b``'s keys and values read slot by slot through the block table (a second
    gather, independent of DecodeInputs.sequence_kv)."""
    n = inp.lens[b]
    if inp.block_table is None:
        return inp.k_cache[b, :n], inp.v_cache[b, :n]
    ps, table = inp.k_cache.shape[1], inp.block_table.tolist()
    rows = [(table[b][j // ps], j % ps) for j in range(n)]
    k = torch.stack([inp.k_cache[p, s] for p, s in rows])
    v = torch.stack([inp.v_cache[p, s] for p, s in rows])
    return k, v


# ---- the case, its lengths, FLOPs and bytes -----------------------------------------------------
def test_case_ids_and_lengths():
    c = DecodeCase(16, 32, 8, 32768, 128, "bf16", cache_dist="uniform", page_size=16)
    assert c.id == "B16-H32/8-q1-kv32768u-p16-D128-bf16"
    assert DecodeCase(1, 8, 8, 4096, 64, "fp16", q_len=4).id == "B1-H8-q4-kv4096-D64-fp16"
    explicit = DecodeCase(3, 4, 2, 70, 16, "fp32", q_len=2, cache_lens=(2, 17, 70), page_size=5)
    assert explicit.id == "B3-H4/2-q2-kv[2,17,70]-p5-D16-fp32" and explicit.lens == (2, 17, 70)
    assert c.lens == DecodeCase(16, 32, 8, 32768, 64, "fp16", cache_dist="uniform").lens
    assert c.lens[0] == 32768 and all(1 <= n <= 32768 for n in c.lens) and len(set(c.lens)) > 8
    q4 = DecodeCase(64, 4, 2, 20, 16, "fp32", q_len=4, cache_dist="uniform")
    assert min(q4.lens) >= 4 and max(q4.lens) == 20
    assert DecodeCase(3, 4, 2, 9, 16).lens == (9, 9, 9)
    hash(explicit)  # hashable: cases are dict keys


def test_flops_and_bytes():
    c = DecodeCase(2, 4, 2, 10, 16, "fp16", q_len=3, cache_lens=(5, 10), page_size=4)
    pairs = (3 + 4 + 5) + (8 + 9 + 10)  # token i of a length-n sequence sees n - 3 + i + 1 keys
    assert decode_flops(c, "fwd") == 4 * 4 * 16 * pairs
    kv = 2 * (5 + 10) * 2 * 16 * 2  # K and V, per KV head, once
    qo = 2 * 2 * 3 * 4 * 16 * 2  # q read, out written
    lse, lens, table = 4 * 2 * 4 * 3, 4 * 2, 4 * (2 + 3)  # pages: ceil(5/4) + ceil(10/4)
    assert decode_bytes(c, "fwd") == kv + qo + lse + lens + table
    contiguous = DecodeCase(2, 4, 2, 10, 16, "fp16", q_len=3, cache_lens=(5, 10))
    assert decode_bytes(contiguous, "fwd") == kv + qo + lse + lens
    assert decode_bytes(c, "bwd") is None


def test_needs_name_each_capability():
    plain = DecodeCase(1, 4, 4, 8, 16, "fp32")
    assert needs(plain, "fwd") == []
    asked = DecodeCase(1, 4, 2, 8, 16, "fp32", q_len=2, page_size=4)
    assert [c for c, _ in needs(asked, "fwd_bwd")] == ["backward", "paged", "q_len_gt_1", "gqa"]

    class Contiguous(Backend):
        name = "decode_contiguous_only"
        description = "x"
        caps = Capabilities(problem="decode", devices={"cpu"}, backward=False)

    be = Contiguous()
    assert be.why_unsupported(plain, "cpu") is None
    assert be.why_unsupported(asked, "cpu") == "unsupported: paged KV cache"
    assert "q_len > 1" in be.why_unsupported(DecodeCase(1, 4, 4, 8, 16, q_len=2), "cpu")
    assert "backward" in be.why_unsupported(plain, "cpu", "bwd")
    for name in ("decode_naive", "decode_sdpa", "decode_triton"):
        assert REGISTRY[name].why_unsupported(asked, "cpu") is None, name
    assert "bf16" in REGISTRY["decode_triton"].why_unsupported(CASES[-1], "cpu")


def test_triton_backend_declares_the_kernels_head_dims():
    from attnbench.kernels.decode.interface import HEAD_DIMS

    assert REGISTRY["decode_triton"].caps.head_dims == frozenset(HEAD_DIMS)


# ---- inputs -------------------------------------------------------------------------------------
def test_pages_in_random_order_and_nan_outside_the_cache():
    c = DecodeCase(3, 4, 2, 41, 16, "fp16", q_len=2, cache_dist="uniform", page_size=4)
    inp = make_inputs(c, "cpu", seed=0)
    table = inp.block_table
    assert table.dtype == torch.int32 and inp.cache_lens.dtype == torch.int32
    assert inp.cache_lens.tolist() == list(c.lens) and inp.lens == c.lens
    owned = torch.cat([table[b, : -(-n // 4)] for b, n in enumerate(c.lens)])
    assert not torch.equal(owned, torch.arange(len(owned), dtype=torch.int32))  # never identity
    assert len(set(owned.tolist())) == len(owned)  # each page belongs to one sequence
    assert inp.k_cache.shape[0] > len(owned)  # spare pages
    nan = torch.ones(inp.k_cache.shape[:2], dtype=torch.bool)
    for b, n in enumerate(c.lens):
        for j in range(n):
            nan[table[b, j // 4], j % 4] = False
    for cache in (inp.k_cache, inp.v_cache):
        assert cache[nan].isnan().all() and not cache[~nan].isnan().any()
    for b, n in enumerate(c.lens):  # table entries past a sequence's pages: NaN pages
        for p in table[b, -(-n // 4) :].tolist():
            assert inp.k_cache[p].isnan().all()
    indptr, indices, last = inp.page_csr()  # FlashInfer's form of the same pages
    assert torch.equal(indices, owned) and indptr.tolist()[-1] == len(owned)
    assert last.tolist() == [n - (-(-n // 4) - 1) * 4 for n in c.lens]
    again = make_inputs(c, "cpu", seed=0)
    assert torch.equal(again.block_table, table) and torch.equal(again.q, inp.q)

    flat = DecodeCase(2, 4, 2, 20, 16, "fp32", cache_lens=(7, 20))
    inp = make_inputs(flat, "cpu")
    assert inp.block_table is None and inp.k_cache.shape == (2, 32, 2, 16)  # next 16 above 20
    assert inp.k_cache[0, 7:].isnan().all() and inp.k_cache[1, 20:].isnan().all()
    assert not inp.k_cache[0, :7].isnan().any() and not inp.k_cache[1, :20].isnan().any()
    assert inp.differentiable == (inp.q,) and inp.dout.shape == inp.q.shape
    k, v = inp.contiguous_kv()  # zero-padded, never NaN
    assert k.shape == (2, 20, 2, 16) and torch.equal(k[0, :7], inp.k_cache[0, :7])
    assert not k.isnan().any() and not v.isnan().any() and (k[0, 7:] == 0).all()


def test_page_order_is_never_the_identity():
    for ps in (1, 2, 16):  # few pages: a random order is often the identity by chance
        for seed in range(20):
            c = DecodeCase(1, 2, 1, 1 + seed % 3, 16, "fp32", page_size=ps)
            used = -(-c.cache_len // ps)
            table = make_inputs(c, "cpu", seed).block_table[0, :used]
            assert not torch.equal(table, torch.arange(used, dtype=torch.int32)), (c.id, seed)


# ---- the reference ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reference_matches_dense_attention(case):
    """Sequence by sequence: attnbench's attention reference (bottom-right causal, seqlen_q =
    q_len < seqlen_k = len_b, GQA by repeating heads) on the keys read slot by slot."""
    inp = make_inputs(case, "cpu", seed=0)
    ref = reference(inp, case, upcast=True)
    assert ref.out.shape == inp.q.shape and ref.lse.shape == (case.batch, case.heads_q, case.q_len)
    for b in range(case.batch):
        k, v = _dense_kv(inp, b)
        out, lse = attention_ref(
            inp.q[b : b + 1], k[None], v[None], causal=True, softmax_scale=case.scale
        )
        tol = 1e-12 if case.dtype == "fp32" else 1e-5
        torch.testing.assert_close(ref.out[b].double(), out[0].double(), atol=tol, rtol=0)
        # attention_ref rounds its lse to fp32; ours keeps the fp64 of fp32 inputs
        torch.testing.assert_close(ref.lse[b].double(), lse[0].double(), atol=0, rtol=1e-7)
    same = reference(inp, case, upcast=False)
    assert same.out.dtype == inp.q.dtype and same.lse.dtype == torch.float32
    assert not same.out.isnan().any()  # the reference never reads the NaN slots


# ---- reading outside the cache fails -----------------------------------------------------------
class ReadsEverySlot(Backend):
    """Ignores cache_lens when it reads: loads every slot of the cache (contiguous: all S_max
    slots; paged: every page of the table row, whole pages), then masks the scores of the keys
    past the length. The masked scores are right, but P @ V meets the NaN values (0 x NaN)."""

    name = "decode_reads_every_slot"
    description = "a broken decode kernel (test only)"
    caps = Capabilities(
        problem="decode", devices={"cpu"}, backward=False, lse=True, features={"paged"}
    )

    def prepare(self, inp, case):
        return Prepared((inp.q,), {"inputs": inp})

    def forward(self, p, case):
        inp = p.args["inputs"]
        g = case.heads_q // case.heads_kv
        outs, lses = [], []
        for b in range(case.batch):
            if inp.block_table is None:
                k, v = inp.k_cache[b], inp.v_cache[b]
            else:
                pages = inp.block_table[b].long()
                k, v = inp.k_cache[pages].flatten(0, 1), inp.v_cache[pages].flatten(0, 1)
            k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
            s = torch.einsum("thd,nhd->htn", inp.q[b] * case.scale, k)
            s = s.masked_fill(torch.arange(k.shape[0]) >= inp.lens[b], float("-inf"))
            outs.append(torch.einsum("htn,nhd->thd", torch.softmax(s, -1), v))
            lses.append(torch.logsumexp(s, -1))
        return torch.stack(outs), torch.stack(lses)


@pytest.mark.parametrize("page_size", [0, 4], ids=["contiguous", "paged"])
def test_a_kernel_reading_outside_the_cache_fails(page_size):
    case = DecodeCase(2, 4, 2, 13, 16, "fp32", cache_lens=(5, 13), page_size=page_size)
    inp = make_inputs(case, "cpu")
    errs = check_backend(ReadsEverySlot(), case, inp, make_truth(inp, case, grads=False), False)
    got = {e.tensor: e for e in errs}
    assert not got["out"].accuracy_ok and math.isnan(got["out"].max_abs_err)  # NaN read
    assert got["lse"].accuracy_ok  # its masked scores were right: the values gave it away


def test_a_kernel_reading_outside_the_cache_fails_a_run(cli, tmp_path, tmp_backend):
    tmp_backend(ReadsEverySlot())
    suite = tmp_path / "d.yaml"
    suite.write_text(
        "name: d\nproblem: decode\ncases:\n"
        "  - {heads_q: 4, heads_kv: 2, head_dim: 16, cache_lens: [[5, 13]], page_size: [0, 4], dtype: fp32}\n"
    )
    out = tmp_path / "r"
    res = cli("accuracy", "--suite", suite, "--device", "cpu", "--out", out,
              "--only", "decode_reads_every_slot,decode_naive")  # fmt: skip
    assert res.exit_code == 1, res.output
    df = pd.read_parquet(out)
    bad = df[(df.backend == "decode_reads_every_slot") & (df.tensor == "out")]
    assert len(bad) == 2 and (bad.status == "accuracy_failed").all()
    assert (df[df.backend == "decode_naive"].status == "ok").all()


# ---- through the command line -------------------------------------------------------------------
def test_shipped_configs():
    counts = {}
    for name in ("decode", "decode_seqlen", "decode_batch"):
        cfg, _ = load_config(name)
        gpu, modes, _ = select_cases(cfg, "cuda")
        cpu, _, note = select_cases(cfg, "cpu")
        assert modes == ["fwd"] and note and all(c.dtype in ("fp16", "fp32") for c in cpu)
        counts[name] = gpu
    acc = counts["decode"]
    assert {c.page_size for c in acc} == {0, 1, 16, 64, 256}
    assert {1, 4, 16} <= {c.q_len for c in acc}
    assert any(c.cache_len == 1 for c in acc) and {"fp16", "bf16"} == {c.dtype for c in acc}
    assert any(c.paged and any(n % c.page_size for n in c.lens) for c in acc)
    assert {(32, 8), (64, 8), (8, 1)} <= {(c.heads_q, c.heads_kv) for c in acc}
    assert {64, 128, 256} <= {c.head_dim for c in acc} and {1, 128} <= {c.batch for c in acc}
    seq = counts["decode_seqlen"]
    assert {c.cache_len for c in seq} == {1024 << i for i in range(8)}
    assert {c.batch for c in seq} == {1, 16, 64} and {c.page_size for c in seq} == {0, 16, 64}
    assert {c.batch for c in counts["decode_batch"]} == {1 << i for i in range(9)}
    assert max(case_mod.memory_estimate(c) for c in seq + counts["decode_batch"]) < 60 << 30


@pytest.mark.slow
def test_accuracy_suite_on_cpu(cli, tmp_path):
    out = tmp_path / "r"
    res = cli("accuracy", "--suite", "decode", "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    ran = set(df[df.status == "ok"].backend)  # the library backends: "does not run on cpu"
    assert ran == {"decode_naive", "decode_sdpa", "decode_triton"}
    assert set(df.status) <= {"ok", "unsupported"}
    assert df[df.status == "unsupported"].message.str.len().gt(0).all()
    ran = df[df.status == "ok"]
    assert set(ran.backend) == {"decode_naive", "decode_sdpa", "decode_triton"}
    assert ran.accuracy_ok.all() and set(ran.tensor) == {"out", "lse"}
    assert set(ran[ran.backend == "decode_sdpa"].tensor) == {"out"}  # SDPA returns no lse


@pytest.mark.slow
def test_perf_sweep_on_cpu_writes_bytes(cli, tmp_path):
    out = tmp_path / "r"
    cpu = "decode_naive,decode_sdpa,decode_triton"
    res = cli("perf", "--sweep", "decode_seqlen", "--device", "cpu", "--only", cpu, "--out", out)
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert (df.status == "ok").all() and (df["mode"] == "fwd").all()
    assert df.bytes.gt(0).all() and df.gbps.gt(0).all() and df.tflops.gt(0).all()
    for _, r in df.iterrows():
        case = DecodeCase(
            r.batch, r.heads_q, r.heads_kv, r.cache_len, r.head_dim, r["dtype"],
            q_len=r.q_len, page_size=r.page_size,
        )  # fmt: skip
        assert r.bytes == decode_bytes(case) and r.case_id == case.id
    triton = df[df.backend == "decode_triton"]
    assert triton.kernel_config.str.match(r"split \d+x\d+ BN\d+ w\d+ s\d+").all()
    res = cli("plot", out, "--out", tmp_path / "png")  # GB/s along the cache length
    assert res.exit_code == 0, res.output
    pngs = sorted(p.name for p in (tmp_path / "png").rglob("*.png"))
    assert any(p.startswith("perf_cache_len_decode_fwd") for p in pngs), pngs


def test_backward_modes_are_refused(cli, tmp_path):
    res = cli("perf", "--sweep", "decode_seqlen", "--device", "cpu", "--modes", "bwd",
              "--out", tmp_path / "r")  # fmt: skip
    assert res.exit_code == 2 and "backward" in res.output
    assert not (tmp_path / "r").exists()
    out = tmp_path / "r2"  # fwd and bwd: fwd rows, bwd rows unsupported with the reason
    res = cli("perf", "--sweep", "decode_seqlen", "--device", "cpu", "--modes", "fwd,bwd",
              "--only", "decode_naive", "--where", "cache_len=64,page_size=0",
              "--out", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out).set_index("mode")
    assert df.loc["fwd", "status"] == "ok" and df.loc["bwd", "status"] == "unsupported"
    assert "forward-only" in df.loc["bwd", "message"]


GRID = "{heads_q: 4, heads_kv: 2, head_dim: 16, dtype: fp32, %s}"
BAD = {
    "q_len_above_cache_len": ("batch: 2, q_len: 8, cache_len: 4", "q_len=8 exceeds a cache length (4)"),
    "q_len_above_a_listed_length": ("q_len: 4, cache_lens: [[3, 10]]", "q_len=4 exceeds a cache length (3)"),
    "empty_cache": ("batch: 2, cache_len: 0", "cache_len must be >= 1, got 0"),
    "negative_cache": ("batch: 2, cache_len: -5", "cache_len must be >= 1, got -5"),
    "empty_length_list": ("cache_lens: [[]]", "every entry needs at least one length"),
    "no_length_lists": ("cache_lens: []", "give at least one list of lengths"),
    "zero_listed_length": ("cache_lens: [[5, 0]]", "cache lengths must be >= 1, got 0"),
    "negative_page_size": ("batch: 1, cache_len: 64, page_size: -16", "page_size must be >= 0"),
    "q_len_zero": ("batch: 1, cache_len: 64, q_len: 0", "q_len must be >= 1"),
    "unknown_dist": ("batch: 1, cache_len: 64, cache_dist: zipf", "cache_dist"),
    "both_lengths": ("cache_len: 9, cache_lens: [[3, 9]]", "give cache_len or cache_lens, not both"),
}  # fmt: skip


def _exits_2_in_one_line(cli, tmp_path, text, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    res = cli("accuracy", "--suite", f, "--device", "cpu", "--out", tmp_path / "r")
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines
    assert not (tmp_path / "r").exists()  # nothing ran, nothing written
    return lines[0]


@pytest.mark.parametrize("name", BAD)
def test_bad_config_exits_2_in_one_line(name, cli, tmp_path):
    grid, expected = BAD[name]
    text = "name: bad\nproblem: decode\ncases:\n  - " + GRID % grid + "\n"
    line = _exits_2_in_one_line(cli, tmp_path, text, expected)
    assert "cases.0" in line  # the key path


def test_backward_modes_in_a_file_exit_2(cli, tmp_path):
    text = "name: bad\nproblem: decode\nmodes: [fwd, bwd]\ncases:\n  - " + GRID % "batch: 1, cache_len: 8" + "\n"  # fmt: skip
    _exits_2_in_one_line(cli, tmp_path, text, "decode is forward-only")


def test_a_cache_too_large_for_the_gpu_exits_2(cli, tmp_path, monkeypatch):
    """On a machine with a CUDA GPU the case is checked against its memory (faked here: 8 GiB);
    without one nothing is checked."""
    text = (
        "name: big\nproblem: decode\ncases:\n  - {batch: 64, heads_q: 32, heads_kv: 8, "
        "head_dim: 128, cache_len: 131072, page_size: 16, dtype: bf16}\n"
    )
    big = DecodeCase(64, 32, 8, 131072, 128, "bf16", page_size=16)
    monkeypatch.setattr(case_mod, "_gpu_memory", lambda: None)
    big.validate()  # no GPU: not checked
    monkeypatch.setattr(case_mod, "_gpu_memory", lambda: ("cuda:0 (fake)", 8 << 30))
    with pytest.raises(ValueError, match="too large for cuda:0"):
        big.validate()
    line = _exits_2_in_one_line(cli, tmp_path, text, "KV cache is too large for cuda:0 (fake)")
    assert "8.0 GiB on the device" in line
    DecodeCase(1, 32, 8, 4096, 128, "bf16").validate()  # a small one fits


def test_decode_perf_cells_read_in_bytes():
    """Decode is judged in bytes: its table cells and per-case lines give GB/s, attention's
    keep TFLOP/s."""
    from attnbench.results.text import perf_cell

    row = {"latency_ms": 0.0316, "gbps": 16.6, "tflops": 0.0166}
    assert perf_cell({**row, "problem": "decode"}) == "0.0316 ms 16.6 GB/s"
    assert perf_cell({**row, "problem": "attention"}) == "0.0316 ms 16.6 GFLOP/s"
