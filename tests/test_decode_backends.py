"""The library decode backends (flash_attn_kvcache, fa4_decode, flashinfer, flag_attn_split_kv,
flag_attn_paged) and flag_attn_flash, on the CPU: registration, what ``attnbench list`` says
without their libraries, the cases they refuse and why, and, with a FAKE library module that
records its arguments and computes attention from them the way the library documents them
(layouts, lengths, page tables, causal alignment, lse base), that our glue passes the right
arguments in the right layout and maps the results back: the fakes prove the glue, not the
libraries (those need a GPU)."""

from __future__ import annotations

import importlib.machinery
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from attnbench.backends import REGISTRY, fa4_decode
from attnbench.backends import fa4 as fa4_mod
from attnbench.backends import flash_attn as fa2_mod
from attnbench.backends import flashinfer_decode as fi_mod
from attnbench.problems.attention import AttentionCase
from attnbench.problems.attention.inputs import make_inputs as attention_inputs
from attnbench.problems.attention.reference import attention_ref
from attnbench.problems.decode import DecodeCase, make_inputs
from attnbench.run.check import check_backend, make_truth

ROOT = Path(__file__).resolve().parents[1]
DECODE = ["flash_attn_kvcache", "fa4_decode", "flashinfer", "flag_attn_split_kv", "flag_attn_paged"]
ALL = [*DECODE, "flag_attn_flash"]


# ---- fake libraries: attention computed from the arguments as the library reads them ----------
def attend(q, k, v, scale, causal):
    """One sequence: q (q_len, Hq, D), k/v (n, Hkv, D) -> out (q_len, Hq, D) in q's dtype, lse
    (Hq, q_len) fp32, natural log; bottom-right causal when ``causal``. Computed in fp64; a key
    whose score is masked still multiplies its value by 0 (a NaN value poisons the row, as in a
    kernel's P @ V)."""
    q_len, hq, _ = q.shape
    n, hkv, _ = k.shape
    g = hq // hkv
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = torch.einsum("thd,nhd->htn", q.double() * scale, k)
    if causal:
        last = n - q_len + torch.arange(q_len)
        s = s.masked_fill(torch.arange(n)[None, :] > last[:, None], float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None])
    out = torch.einsum("htn,nhd->thd", p, v)
    return out.to(q.dtype), lse.float()


def paged_rows(cache, table_row, n, page_size):
    """Keys 0..n-1 of one sequence of an NHD page pool (num_pages, page_size, H, D)."""
    pages = table_row[: -(-n // page_size)].long()
    return cache[pages].flatten(0, 1)[:n]


def fake_module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.calls = []
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def truth_errors(be, case, inp, grads=False):
    errs = check_backend(be, case, inp, make_truth(inp, case, grads=grads), grads=grads)
    bad = [f"{e.tensor} {e.max_abs_err:.3g} vs {e.baseline_max_abs_err:.3g}" for e in errs]
    assert all(e.accuracy_ok for e in errs), bad
    return {e.tensor for e in errs}


@pytest.fixture
def no_libraries(monkeypatch):
    """Every library these backends use, absent (whatever this machine has installed)."""
    for name in ("flash_attn", "flash_attn.cute", "flashinfer", "flag_attn"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(fa2_mod, "_module", None)
    monkeypatch.setattr(fa2_mod, "_import_error", None)
    monkeypatch.setattr(fa4_mod, "_module", None)
    monkeypatch.setattr(fa4_mod, "_import_error", None)
    monkeypatch.setattr(fi_mod, "_module", None)
    monkeypatch.setattr(fi_mod, "_import_error", None)


# ---- registration, availability --------------------------------------------------------------
def test_registered_with_their_problem_and_capabilities():
    for name in DECODE:
        c = REGISTRY[name].caps
        assert c.problem == "decode" and not c.backward and c.devices == {"cuda"}, name
        assert c.dtypes == {"fp16", "bf16"}, name
    assert {n for n in DECODE if REGISTRY[n].caps.supports("paged")} == {
        "flash_attn_kvcache", "fa4_decode", "flashinfer", "flag_attn_paged"
    }  # fmt: skip
    assert {n for n in DECODE if REGISTRY[n].caps.supports("q_len_gt_1")} == {
        "flash_attn_kvcache", "fa4_decode", "flashinfer", "flag_attn_split_kv"
    }  # fmt: skip
    assert {n for n in DECODE if REGISTRY[n].caps.lse} == {
        "flash_attn_kvcache", "fa4_decode", "flashinfer"
    }  # fmt: skip
    flash = REGISTRY["flag_attn_flash"].caps
    assert flash.problem == "attention" and flash.backward and flash.lse and flash.gqa
    assert not flash.varlen and not flash.window and flash.head_dims == {16, 32, 64, 128}
    assert list(REGISTRY).index("flash_attn_kvcache") > list(REGISTRY).index("decode_triton")


def test_missing_libraries_say_why(no_libraries, cli, monkeypatch):
    want = {
        "flash_attn_kvcache": "flash-attn not installed",
        "fa4_decode": "flash-attn-4 not installed",
        "flashinfer": "flashinfer not installed",
        "flag_attn_split_kv": "flag_attn not installed",
        "flag_attn_paged": "flag_attn not installed",
        "flag_attn_flash": "flag_attn not installed",
    }
    for name, why in want.items():
        assert why in REGISTRY[name].availability("cuda"), name
    case = DecodeCase(2, 8, 2, 64, 64, "bf16")
    assert "flashinfer not installed" in REGISTRY["flashinfer"].why_unsupported(case, "cuda")
    monkeypatch.setenv("COLUMNS", "400")
    res = cli("list", "--device", "cuda")
    assert res.exit_code == 0, res.output
    lines = {ln.split("│")[1].strip(): ln for ln in res.output.splitlines() if ln.count("│") > 3}
    for name, why in want.items():
        assert why in lines[name] and "no" in lines[name], lines.get(name)
        assert REGISTRY[name].caps.problem in lines[name]


def test_library_without_the_needed_entry_points(no_libraries, monkeypatch):
    def old_kvcache(q, k_cache, v_cache, cache_seqlens=None, block_table=None, causal=False):
        raise AssertionError("never called")

    fake = fake_module("flash_attn", __version__="2.6.3", flash_attn_func=object())
    fake.flash_attn_with_kvcache = old_kvcache
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    why = REGISTRY["flash_attn_kvcache"].availability("cuda")
    assert why == "flash-attn 2.6.3: flash_attn_with_kvcache has no return_softmax_lse"

    def old_varlen(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, causal=False):
        raise AssertionError("never called")

    monkeypatch.setattr(fa4_mod, "_module", fake_module("flash_attn.cute"))
    fa4_mod._module.flash_attn_varlen_func = old_varlen
    why = REGISTRY["fa4_decode"].availability("cuda")
    assert "takes no seqused_k, page_table, num_splits, return_lse" in why

    flag = fake_module("flag_attn", piecewise_attention=object())
    monkeypatch.setitem(sys.modules, "flag_attn", flag)
    assert REGISTRY["flag_attn_paged"].availability("cuda") == (
        "flag_attn has no paged_attention (an older FlagAttention)"
    )


# ---- refusals --------------------------------------------------------------------------------
def D(b, hq, hkv, n, d, dtype="bf16", **kw):
    return DecodeCase(b, hq, hkv, n, d, dtype, **kw)


HUGE = dict(batch=64, heads_q=32, heads_kv=8, cache_len=1 << 20, head_dim=128)  # 2^36 elements
REFUSALS = [
    ("flash_attn_kvcache", D(2, 8, 2, 300, 128, page_size=16),
     "unsupported: page size 16 (flash_attn_with_kvcache pages must be a multiple of 256)"),
    ("flash_attn_kvcache", D(2, 8, 2, 300, 128, page_size=100), "multiple of 256"),
    ("flash_attn_kvcache", D(2, 8, 2, 600, 128, q_len=4, page_size=256), None),
    ("flash_attn_kvcache", D(2, 8, 2, 600, 64, page_size=512), None),
    ("flash_attn_kvcache", D(2, 8, 8, 77, 64, q_len=3, cache_dist="uniform"), None),
    ("flash_attn_kvcache", D(2, 8, 2, 77, 36), "head dim 36 not a multiple of 8"),
    ("flash_attn_kvcache", D(2, 8, 2, 77, 64, "fp32"), "dtype fp32"),
    ("fa4_decode", D(3, 8, 2, 77, 128, q_len=4, page_size=16, cache_dist="uniform"), None),
    ("fa4_decode", D(3, 8, 1, 77, 64, page_size=1), None),
    ("fa4_decode", D(2, 8, 2, 77, 36), "head dim 36 not a multiple of 8"),
    ("fa4_decode", D(2, 8, 2, 77, 64, "fp32"), "dtype fp32"),
    ("flashinfer", D(3, 8, 2, 77, 128, q_len=4, page_size=16), None),
    ("flashinfer", D(3, 8, 2, 77, 64, page_size=5), None),
    ("flashinfer", D(3, 8, 2, 77, 256), None),
    ("flashinfer", D(2, 8, 2, 77, 96), "head dim 96 not compiled (has 64, 128, 256)"),
    ("flashinfer", D(2, 8, 2, 77, 64, "fp32"), "dtype fp32"),
    ("flag_attn_split_kv", D(2, 8, 2, 77, 64, q_len=4), None),
    ("flag_attn_split_kv", D(2, 8, 2, 77, 64, page_size=16), "unsupported: paged KV cache"),
    ("flag_attn_split_kv", D(2, 8, 2, 9, 64, cache_lens=(5, 9)), "per-sequence cache lengths"),
    ("flag_attn_split_kv", D(3, 8, 2, 77, 64, cache_dist="uniform"), "per-sequence cache lengths"),
    ("flag_attn_split_kv", D(2, 8, 2, 77, 256), "head dim 256 not compiled"),
    ("flag_attn_split_kv", DecodeCase(**HUGE), "2^31"),
    ("flag_attn_paged", D(3, 32, 8, 77, 128, page_size=16, cache_dist="uniform"), None),
    ("flag_attn_paged", D(3, 8, 8, 77, 64, page_size=1), None),
    ("flag_attn_paged", D(2, 8, 2, 77, 64), "unsupported: contiguous cache"),
    ("flag_attn_paged", D(2, 8, 2, 77, 64, q_len=2, page_size=16), "q_len > 1"),
    ("flag_attn_paged", D(2, 8, 8, 77, 64, page_size=5), "unsupported: page size 5"),
    ("flag_attn_paged", D(2, 8, 2, 77, 64, page_size=8), "page size 8 with GQA"),
    ("flag_attn_paged", D(2, 6, 2, 77, 64, page_size=16), "GQA group 3"),
    ("flag_attn_paged", D(2, 8, 2, 77, 512, page_size=16), "head dim 512"),
    ("flag_attn_paged", DecodeCase(**HUGE, page_size=16), "2^31"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,case,expected", REFUSALS, ids=[f"{n}-{c.id}" for n, c, _ in REFUSALS]
)
def test_refusals(name, case, expected, monkeypatch):
    be = REGISTRY[name]
    monkeypatch.setattr(be, "availability", lambda device: None)  # the library "present"
    why = be.why_unsupported(case, "cuda", "fwd")
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why, why
        assert why.startswith("unsupported: "), why
    if expected is None:  # runnable forward: the backward is what is refused
        assert "forward-only" in be.why_unsupported(case, "cuda", "fwd_bwd")
    assert "does not run on cpu" in be.why_unsupported(case, "cpu", "fwd")


A = AttentionCase
FLASH = [
    (A(2, 8, 2, 64, 96, 64, "fp16", causal=True), None),
    (A(2, 8, 8, 64, 64, 128, "bf16"), None),
    (A(2, 8, 8, 64, 64, 128, "fp32"), "dtype fp32"),
    (A(2, 8, 8, 64, 64, 256, "bf16"), "head dim 256 not compiled"),
    (A(2, 4, 4, 40, 40, 64, "bf16", seqlens=(17, 40)), "varlen"),
    (A(1, 4, 4, 64, 64, 64, "bf16", causal=True, window_left=8, window_right=0), "window"),
    (A(64, 64, 64, 1 << 17, 1 << 17, 128, "bf16"), "2^31"),
]


@pytest.mark.parametrize("case,expected", FLASH, ids=[c.id for c, _ in FLASH])
def test_flag_attn_flash_refusals(case, expected, monkeypatch):
    be = REGISTRY["flag_attn_flash"]
    monkeypatch.setattr(be, "availability", lambda device: None)
    why = be.why_unsupported(case, "cuda", "fwd_bwd")
    assert why is None if expected is None else expected in why, why


def _raise_from(path: str, exc: str):
    """Raise ``exc`` (source text) from code whose file name is ``path``."""
    try:
        exec(compile(f"raise {exc}", path, "exec"))
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("nothing raised")


def test_run_time_refusals_name_the_library():
    fa = REGISTRY["flash_attn_kvcache"]
    e = RuntimeError("Paged KV cache block size must be divisible by 256")
    assert fa.refusal(e) == (
        "unsupported: flash-attn refused: Paged KV cache block size must be divisible by 256"
    )
    assert fa.refusal(RuntimeError("CUDA error: an illegal memory access")) is None
    fi = REGISTRY["flashinfer"]
    e = _raise_from("/x/site/flashinfer/decode.py", "NotImplementedError('group size 5')")
    assert fi.refusal(e) == "unsupported: flashinfer refused: group size 5"
    e = _raise_from("/x/site/flashinfer/jit/core.py", "RuntimeError('Unsupported head_dim 72')")
    assert "unsupported: flashinfer refused: Unsupported head_dim 72" == fi.refusal(e)
    assert fi.refusal(_raise_from("/x/site/flashinfer/decode.py", "RuntimeError('boom')")) is None
    assert fi.refusal(ValueError("from elsewhere")) is None
    for name in ("flag_attn_split_kv", "flag_attn_paged", "flag_attn_flash"):
        be = REGISTRY[name]
        e = _raise_from("/tmp/flag/src/flag_attn/paged.py", "AssertionError('head_size=24')")
        assert be.refusal(e) == "unsupported: flag_attn refused: head_size=24"
        assert be.refusal(AssertionError("mine")) is None
    fa4 = REGISTRY["fa4_decode"]
    e = _raise_from("/x/flash_attn/cute/interface.py", "AssertionError('SplitKV not supported')")
    assert fa4.refusal(e) == "unsupported: flash_attn.cute refused: SplitKV not supported"


# ---- flash_attn_kvcache with a fake flash-attn --------------------------------------------------
def fake_flash_attn():
    def flash_attn_with_kvcache(
        q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
        cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
        softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
        rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False,
    ):  # fmt: skip
        mod.calls.append(dict(locals()))
        lens = cache_seqlens.tolist()
        outs, lses = [], []
        for b, n in enumerate(lens):
            if block_table is None:  # (batch_size_cache, seqlen_cache, nheads_k, headdim)
                kb, vb = k_cache[b, :n], v_cache[b, :n]
            else:  # (num_blocks, page_block_size, nheads_k, headdim)
                ps = k_cache.shape[1]
                kb = paged_rows(k_cache, block_table[b], n, ps)
                vb = paged_rows(v_cache, block_table[b], n, ps)
            o, l = attend(q[b], kb, vb, softmax_scale, causal)
            outs.append(o)
            lses.append(l)
        out, lse = torch.stack(outs), torch.stack(lses)  # (B, Sq, H, D), (B, H, Sq)
        return (out, lse) if return_softmax_lse else out

    mod = fake_module("flash_attn", __version__="2.8.3", flash_attn_func=object())
    mod.flash_attn_with_kvcache = flash_attn_with_kvcache
    return mod


KV_CASES = [
    D(3, 8, 2, 70, 32, "fp16", q_len=3, cache_lens=(3, 17, 70)),
    D(3, 8, 2, 600, 32, "fp16", q_len=2, cache_dist="uniform", page_size=256),
    D(2, 4, 4, 300, 32, "bf16", page_size=256),
]


@pytest.mark.parametrize("case", KV_CASES, ids=[c.id for c in KV_CASES])
def test_flash_attn_kvcache_arguments(case, no_libraries, monkeypatch):
    fake = fake_flash_attn()
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    be = REGISTRY["flash_attn_kvcache"]
    assert be.availability("cpu") is None
    inp = make_inputs(case, "cpu", seed=0)
    assert truth_errors(be, case, inp) == {"out", "lse"}
    (call,) = fake.calls
    assert call["q"] is inp.q and call["k_cache"] is inp.k_cache and call["v_cache"] is inp.v_cache
    assert call["cache_seqlens"].dtype == torch.int32
    assert call["cache_seqlens"].tolist() == list(case.lens)
    if case.paged:
        assert call["block_table"] is inp.block_table and inp.block_table.dtype == torch.int32
    else:
        assert call["block_table"] is None
    assert call["causal"] is True and call["return_softmax_lse"] is True
    assert call["num_splits"] == 0 and call["softmax_scale"] == case.scale
    assert call["k"] is None and call["v"] is None  # nothing appended to the cache
    assert be.kernel_config(be.prepare(inp, case), case, "fwd") is None


# ---- fa4_decode with a fake flash_attn.cute -----------------------------------------------------
def fake_fa4():
    def flash_attn_varlen_func(
        q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
        max_seqlen_k=None, min_seqlen_k=None, seqused_q=None, seqused_k=None,
        gather_kv_indices=None, page_table=None, softmax_scale=None, causal=False,
        window_size=(None, None), learnable_sink=None, softcap=0.0, num_splits=1,
        pack_gqa=None, deterministic=False, return_lse=False,
    ):  # fmt: skip
        mod.calls.append(dict(locals()))
        assert cu_seqlens_q is None and cu_seqlens_k is None  # the batch layout
        outs, lses = [], []
        for b, n in enumerate(seqused_k.tolist()):
            # TMA tiles: whole pages (a contiguous cache: every slot) are read, scores past
            # seqused_k masked; a NaN value there would still poison P @ V (its docstring)
            if page_table is None:
                kb, vb = k[b], v[b]
            else:
                ps = k.shape[1]
                pages = page_table[b, : -(-n // ps)].long()
                kb, vb = k[pages].flatten(0, 1), v[pages].flatten(0, 1)
            q_len, slots = q.shape[1], kb.shape[0]
            last = n - q_len + torch.arange(q_len)  # bottom-right against seqused_k
            s = torch.einsum(
                "thd,nhd->htn", q[b].double() * softmax_scale,
                kb.double().repeat_interleave(q.shape[2] // kb.shape[1], 1),
            )  # fmt: skip
            s = s.masked_fill(torch.arange(slots)[None, :] > last[:, None], float("-inf"))
            lse = torch.logsumexp(s, -1)
            p = torch.exp(s - lse[..., None])
            vv = vb.double().repeat_interleave(q.shape[2] // vb.shape[1], 1)
            outs.append(torch.einsum("htn,nhd->thd", p, vv).to(q.dtype))
            lses.append(lse.float())
        out, lse = torch.stack(outs), torch.stack(lses)
        return out, (lse if return_lse else None)

    mod = fake_module("flash_attn.cute")
    mod.flash_attn_varlen_func = flash_attn_varlen_func
    return mod


FA4_CASES = [
    D(3, 8, 2, 41, 32, "fp16", q_len=3, cache_dist="uniform", page_size=8),
    D(3, 8, 2, 70, 32, "fp16", q_len=2, cache_lens=(2, 17, 70)),
    D(2, 4, 4, 33, 32, "bf16", page_size=16),
]


@pytest.mark.parametrize("case", FA4_CASES, ids=[c.id for c in FA4_CASES])
def test_fa4_decode_arguments_and_finite_tails(case, no_libraries, monkeypatch):
    fake = fake_fa4()
    monkeypatch.setattr(fa4_mod, "_module", fake)
    be = REGISTRY["fa4_decode"]
    assert be.availability("cpu") is None
    inp = make_inputs(case, "cpu", seed=0)
    k_before = inp.k_cache.clone()
    assert truth_errors(be, case, inp) == {"out", "lse"}
    (call,) = fake.calls
    assert call["q"] is inp.q and call["seqused_k"] is inp.cache_lens
    assert call["seqused_k"].dtype == torch.int32
    assert call["page_table"] is inp.block_table and call["max_seqlen_k"] == max(case.lens)
    assert call["causal"] is True and call["return_lse"] is True
    assert call["softmax_scale"] == case.scale and call["num_splits"] == 1  # not on a GPU
    k = call["k"]
    assert k is not inp.k_cache and torch.equal(inp.k_cache.isnan(), k_before.isnan())
    if case.paged:  # the rest of each last page zeroed; unowned pages still NaN
        ps, owned = case.page_size, set()
        for b, n in enumerate(case.lens):
            pages = inp.block_table[b, : -(-n // ps)].tolist()
            owned.update(pages)
            assert not k[pages].isnan().any()
            assert (k[pages[-1], (n - 1) % ps + 1 :] == 0).all()
        spare = [p for p in range(k.shape[0]) if p not in owned]
        assert spare and k[spare].isnan().all()
    else:
        for b, n in enumerate(case.lens):
            assert not k[b].isnan().any() and (k[b, n:] == 0).all()
            assert torch.equal(k[b, :n], inp.k_cache[b, :n])
    # the fake reads what a TMA tile reads: with the inputs' NaN tails it would fail
    p = be.prepare(inp, case)
    p.args["k"], p.args["v"] = inp.k_cache, inp.v_cache
    assert be.forward(p, case)[0].isnan().any()


def test_fa4_decode_split_choice(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert fa4_decode.num_splits_for(cuda) == 1
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (10, 0))
    assert fa4_decode.num_splits_for(cuda) == 0
    assert fa4_decode.num_splits_for(torch.device("cpu")) == 1
    be = REGISTRY["fa4_decode"]
    p = types.SimpleNamespace(args={"num_splits": 0})
    assert be.kernel_config(p, None, "fwd") == "num_splits auto (library)"


# ---- flashinfer with a fake flashinfer -----------------------------------------------------------
def fake_flashinfer():
    mod = fake_module("flashinfer")

    class Wrapper:
        prefill = False

        def __init__(self, float_workspace_buffer, kv_layout="NHD"):
            self.workspace, self.kv_layout = float_workspace_buffer, kv_layout
            mod.calls.append(("init", type(self).__name__, kv_layout, float_workspace_buffer))

        def _plan(self, qo_indptr, indptr, indices, last, hq, hkv, d, page_size, kw):
            mod.calls.append(("plan", type(self).__name__, qo_indptr, indptr, indices, last,
                              hq, hkv, d, page_size, kw))  # fmt: skip
            self.plan_args = (qo_indptr, indptr, indices, last, page_size, kw)

        def run(self, q, paged_kv_cache, *, return_lse=False):
            qo_indptr, indptr, indices, last, ps, kw = self.plan_args
            k_cache, v_cache = paged_kv_cache  # NHD: (max_num_pages, page_size, Hkv, D)
            assert k_cache.shape[1] == ps and q.dtype == kw["q_data_type"]
            outs, lses = [], []
            for b in range(len(last)):
                pages = indices[indptr[b] : indptr[b + 1]].long()
                kv_len = (len(pages) - 1) * ps + int(last[b])
                kb = k_cache[pages].flatten(0, 1)[:kv_len]
                vb = v_cache[pages].flatten(0, 1)[:kv_len]
                rows = slice(int(qo_indptr[b]), int(qo_indptr[b + 1])) if self.prefill else [b]
                o, l = attend(q[rows], kb, vb, kw["sm_scale"], kw.get("causal", False))
                outs.append(o)
                lses.append(l.transpose(0, 1) / math.log(2.0))  # base 2, (rows, Hq)
            out, lse = torch.cat(outs), torch.cat(lses)
            mod.calls.append(("run", type(self).__name__, q, paged_kv_cache, return_lse))
            return (out, lse) if return_lse else out

    class BatchDecodeWithPagedKVCacheWrapper(Wrapper):
        def plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim,
                 page_size, **kw):  # fmt: skip
            self._plan(None, indptr, indices, last_page_len, num_qo_heads, num_kv_heads,
                       head_dim, page_size, kw)  # fmt: skip

    class BatchPrefillWithPagedKVCacheWrapper(Wrapper):
        prefill = True

        def plan(self, qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len,
                 num_qo_heads, num_kv_heads, head_dim_qk, page_size, **kw):  # fmt: skip
            self._plan(qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len,
                       num_qo_heads, num_kv_heads, head_dim_qk, page_size, kw)  # fmt: skip

    mod.BatchDecodeWithPagedKVCacheWrapper = BatchDecodeWithPagedKVCacheWrapper
    mod.BatchPrefillWithPagedKVCacheWrapper = BatchPrefillWithPagedKVCacheWrapper
    return mod


FI_CASES = [
    D(3, 8, 2, 41, 64, "fp16", cache_dist="uniform", page_size=4),
    D(3, 8, 2, 41, 64, "fp16", q_len=3, cache_dist="uniform", page_size=5),
    D(3, 8, 8, 70, 64, "bf16", cache_lens=(1, 17, 70)),
    D(2, 8, 4, 30, 64, "fp16", q_len=2, cache_lens=(2, 30)),
]


@pytest.mark.parametrize("case", FI_CASES, ids=[c.id for c in FI_CASES])
def test_flashinfer_plan_describes_the_lengths_and_lse_is_natural(case, no_libraries, monkeypatch):
    fake = fake_flashinfer()
    monkeypatch.setattr(fi_mod, "_module", fake)
    monkeypatch.setattr(fi_mod, "WORKSPACE_BYTES", 1 << 16)  # 128 MB on a GPU; small here
    be = REGISTRY["flashinfer"]
    assert be.availability("cpu") is None
    inp = make_inputs(case, "cpu", seed=0)
    assert truth_errors(be, case, inp) == {"out", "lse"}  # base-2 lse converted
    (init,) = [c for c in fake.calls if c[0] == "init"]
    (plan,) = [c for c in fake.calls if c[0] == "plan"]
    (run,) = [c for c in fake.calls if c[0] == "run"]
    wrapper = "BatchPrefill" if case.q_len > 1 else "BatchDecode"
    assert init[1] == plan[1] == run[1] == wrapper + "WithPagedKVCacheWrapper"
    assert init[2] == "NHD" and init[3].dtype == torch.uint8 and not init[3].any()
    _, _, qo_indptr, indptr, indices, last, hq, hkv, d, ps, kw = plan
    assert (hq, hkv, d) == (case.heads_q, case.heads_kv, case.head_dim)
    for t in (indptr, indices, last):
        assert t.dtype == torch.int32
    per = (indptr[1:] - indptr[:-1]).tolist()
    kv_lens = [(n - 1) * ps + int(lp) for n, lp in zip(per, last.tolist(), strict=True)]
    assert kv_lens == list(case.lens) and all(1 <= lp <= ps for lp in last.tolist())
    if case.paged:
        assert ps == case.page_size
        for b, n in enumerate(case.lens):  # exactly each sequence's pages, in order
            want = inp.block_table[b, : -(-n // ps)].tolist()
            assert indices[indptr[b] : indptr[b + 1]].tolist() == want
    else:  # one page of S_max slots per sequence: the cache as it is
        assert ps == inp.k_cache.shape[1] and indices.tolist() == list(range(case.batch))
    assert run[3][0] is inp.k_cache and run[3][1] is inp.v_cache and run[4] is True
    assert kw["sm_scale"] == case.scale and kw["pos_encoding_mode"] == "NONE"
    assert kw["q_data_type"] == kw["kv_data_type"] == case.torch_dtype
    if case.q_len > 1:
        assert kw["causal"] is True
        assert qo_indptr.dtype == torch.int32
        assert qo_indptr.tolist() == list(range(0, (case.batch + 1) * case.q_len, case.q_len))
        assert run[2].shape == (case.batch * case.q_len, case.heads_q, case.head_dim)
    else:
        assert qo_indptr is None and "causal" not in kw
        assert run[2].shape == (case.batch, case.heads_q, case.head_dim)
    config = be.kernel_config(be.prepare(inp, case), case, "fwd")
    assert config.startswith("prefill (causal) wrapper" if case.q_len > 1 else "decode wrapper")
    assert ("1 page per sequence" in config) == (not case.paged)


def test_flashinfer_default_workspace_is_128_mb():
    assert fi_mod.WORKSPACE_BYTES == 128 * 1024 * 1024 and fi_mod.LN2 == math.log(2)


# ---- FlagAttention with a fake flag_attn ---------------------------------------------------------
def fake_flag_attn():
    def flash_attention_split_kv(q, k, v, causal=False, sm_scale=None):
        mod.calls.append(("split_kv", q, k, v, causal, sm_scale))
        b, h, m, d = q.shape  # (B, H, M, D); k, v (B, Hk, N, D)
        outs = [attend(q[i].transpose(0, 1), k[i].transpose(0, 1), v[i].transpose(0, 1),
                       sm_scale, causal)[0] for i in range(b)]  # fmt: skip
        return torch.stack(outs).transpose(1, 2).to(torch.float16)  # its fp16 split buffer

    def paged_attention(query, key_cache, value_cache, context_lens, block_tables, attn_scale,
                        max_context_len, num_splits=0):  # fmt: skip
        mod.calls.append(("paged", query, key_cache, value_cache, context_lens, block_tables,
                          attn_scale, max_context_len, num_splits))  # fmt: skip
        bs = key_cache.shape[2]  # (num_blocks, NUM_KV_HEADS, KV_BLOCK_SIZE, HEAD_SIZE)
        outs = []
        for i, n in enumerate(context_lens.tolist()):
            pages = block_tables[i, : -(-n // bs)].long()
            kb = key_cache[pages].transpose(1, 2).flatten(0, 1)[:n]
            vb = value_cache[pages].transpose(1, 2).flatten(0, 1)[:n]
            outs.append(attend(query[i][None], kb, vb, attn_scale, False)[0][0])
        return torch.stack(outs)

    def flash_attention(q, k, v, causal=False, sm_scale=None, dropout_p=0.0,
                        return_log_normalizer=False, return_total_attention=False,
                        return_seed_offset=False):  # fmt: skip
        mod.calls.append(("flash", q, k, v, causal, sm_scale, dropout_p, return_log_normalizer))
        out, lse = attention_ref(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                 causal=causal, softmax_scale=sm_scale)  # fmt: skip
        out = out.to(q.dtype).transpose(1, 2)  # (B, H, M, D)
        return (out, lse.float(), None, None, None) if return_log_normalizer else out

    mod = fake_module("flag_attn", piecewise_attention=object())
    mod.flash_attention_split_kv = flash_attention_split_kv
    mod.paged_attention = paged_attention
    mod.flash_attention = flash_attention
    return mod


SPLIT_CASES = [D(2, 8, 2, 37, 32, "bf16", q_len=3), D(3, 4, 4, 20, 16, "fp16")]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=[c.id for c in SPLIT_CASES])
def test_flag_attn_split_kv_views(case, no_libraries, monkeypatch):
    fake = fake_flag_attn()
    monkeypatch.setitem(sys.modules, "flag_attn", fake)
    be = REGISTRY["flag_attn_split_kv"]
    assert be.availability("cuda") is None
    inp = make_inputs(case, "cpu", seed=0)
    p = be.prepare(inp, case)
    out, lse = be.forward(p, case)
    assert out.dtype == inp.q.dtype and out.shape == inp.q.shape and lse is None
    assert truth_errors(be, case, inp) == {"out"}
    _, q, k, v, causal, scale = fake.calls[-1]
    n = case.cache_len
    assert q.shape == (case.batch, case.heads_q, case.q_len, case.head_dim)
    assert k.shape == v.shape == (case.batch, case.heads_kv, n, case.head_dim)
    assert k.data_ptr() == inp.k_cache.data_ptr() and k.stride() == v.stride()  # views, no copy
    assert causal is True and scale == case.scale


PAGED_CASES = [
    D(3, 8, 2, 41, 32, "fp16", cache_dist="uniform", page_size=16),
    D(3, 4, 4, 41, 16, "bf16", cache_lens=(1, 9, 41), page_size=4),
]


@pytest.mark.parametrize("case", PAGED_CASES, ids=[c.id for c in PAGED_CASES])
def test_flag_attn_paged_vllm_layout(case, no_libraries, monkeypatch):
    fake = fake_flag_attn()
    monkeypatch.setitem(sys.modules, "flag_attn", fake)
    be = REGISTRY["flag_attn_paged"]
    assert be.availability("cuda") is None
    inp = make_inputs(case, "cpu", seed=0)
    assert truth_errors(be, case, inp) == {"out"}
    _, q, kc, vc, lens, table, scale, max_len, splits = fake.calls[-1]
    pages, ps = inp.k_cache.shape[:2]
    assert q.shape == (case.batch, case.heads_q, case.head_dim) and q.is_contiguous()
    assert kc.shape == vc.shape == (pages, case.heads_kv, ps, case.head_dim)
    assert kc.is_contiguous() and kc.stride() == vc.stride()  # one stride for both
    for got, cache in ((kc, inp.k_cache), (vc, inp.v_cache)):  # the same slots, transposed
        assert torch.equal(got.transpose(1, 2).nan_to_num(), cache.nan_to_num())
    assert lens is inp.cache_lens and table is inp.block_table and table.dtype == torch.int32
    assert scale == case.scale and max_len == max(case.lens) and splits == 0


FLASH_CASES = [A(2, 4, 2, 24, 40, 32, "fp16", causal=True), A(1, 4, 4, 33, 33, 16, "bf16")]


@pytest.mark.parametrize("case", FLASH_CASES, ids=[c.id for c in FLASH_CASES])
def test_flag_attn_flash_layout_and_gradients(case, no_libraries, monkeypatch):
    fake = fake_flag_attn()
    monkeypatch.setitem(sys.modules, "flag_attn", fake)
    be = REGISTRY["flag_attn_flash"]
    assert be.availability("cuda") is None
    inp = attention_inputs(case, "cpu", seed=0)
    got = truth_errors(be, case, inp, grads=True)
    assert got == {"out", "lse", "dq", "dk", "dv"}
    _, q, k, v, causal, scale, dropout, log_norm = fake.calls[-1]
    assert q.shape == (case.batch, case.heads_q, case.seqlen_q, case.head_dim)
    assert k.shape == (case.batch, case.heads_kv, case.seqlen_k, case.head_dim)
    assert causal is case.causal and scale == case.scale and dropout == 0.0 and log_norm is True


# ---- packaging ---------------------------------------------------------------------------------
def test_flashinfer_extra_and_script():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(r.startswith("flashinfer-python") for r in extras["flashinfer"])
    script = ROOT / "tools/gpu/flashinfer.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert res.returncode == 2 and "park .fia" in res.stdout and "install .fib" in res.stdout
