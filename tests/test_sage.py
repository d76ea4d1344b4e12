"""The ``sage`` backend (SageAttention 1's ``sageattn``) on the CPU: registration, what
``attnbench list`` says with and without the library, the cases it refuses and why, and, with a
FAKE ``sageattention`` that records its arguments, checks them as 1.0.6's ``core.py`` does,
smooths K in place as it does (``k -= k.mean(seq)``) and computes attention with Q and K rounded
to INT8 per block: that the glue passes the right layout, scale and causal flag, that the
harness's inputs are never written, and that the lossy int8 rule grades it through a whole
accuracy run. The fake proves the glue, not SageAttention (that needs a GPU)."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from attnbench.backends import REGISTRY
from attnbench.problems.attention import AttentionCase as Case
from attnbench.problems.attention.inputs import make_inputs
from attnbench.problems.attention.reference import attention_ref
from attnbench.rule import LOSSY_DEFAULTS
from attnbench.run.check import check_backend, make_truth
from attnbench.run.runner import classify

ROOT = Path(__file__).resolve().parents[1]
BE = REGISTRY["sage"]


# ---- a fake sageattention: 1.0.6's checks, its in-place K smoothing, INT8 Q.K^T per block ------
def _int8_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """x (B, S, H, D) rounded to int8 with one scale per (batch, head, block of ``block``
    tokens), dequantized (quant_per_block.py's rounding: max |x| of the block -> 127)."""
    b, s, h, d = x.shape
    pad = -s % block
    xp = torch.nn.functional.pad(x.float(), (0, 0, 0, 0, 0, pad))
    xb = xp.reshape(b, (s + pad) // block, block, h, d)
    scale = xb.abs().amax(dim=(2, 4), keepdim=True).clamp(min=1e-12) / 127
    q = torch.round(xb / scale).clamp(-127, 127) * scale
    return q.reshape(b, s + pad, h, d)[:, :s]


def fake_sageattention(where: str = "package"):
    """A ``sageattention`` whose ``sageattn`` is in the package (``where="package"``) or only
    in ``sageattention.core`` (``"core"``, an ``__init__`` that exports nothing)."""

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, smooth_k=True,
                 **kwargs):  # fmt: skip
        calls.append(dict(q=q, k=k, v=v, tensor_layout=tensor_layout, is_causal=is_causal,
                          sm_scale=sm_scale, smooth_k=smooth_k, kwargs=kwargs,
                          k_ptr=k.data_ptr()))  # fmt: skip
        # core.py's checks (but q.is_cuda: this fake runs on the CPU)
        assert q.dtype in (torch.float16, torch.bfloat16, torch.float32)
        assert q.device == k.device == v.device and q.dtype == k.dtype == v.dtype
        assert q.size(-1) in [64, 96, 128], "headdim should be in [64, 96, 128]."
        assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
        assert tensor_layout == "NHD", "this fake reads (B, S, H, D) only"
        if is_causal:
            assert q.shape[1] == k.shape[1], "qo_len and kv_len must be equal for causal attention"
        if smooth_k:
            k -= k.mean(dim=1, keepdim=True)  # in place, on the caller's tensor (core.py)
        v16 = v.to(torch.float16) if q.dtype != torch.float16 else v
        out, _ = attention_ref(
            _int8_blocks(q, 128), _int8_blocks(k, 64), v16.float(),
            causal=is_causal, softmax_scale=sm_scale,
        )  # fmt: skip
        return out.to(q.dtype)

    calls: list[dict] = []
    pkg = types.ModuleType("sageattention")
    pkg.__spec__ = importlib.machinery.ModuleSpec("sageattention", None, is_package=True)
    pkg.__path__ = []
    core = types.ModuleType("sageattention.core")
    core.__spec__ = importlib.machinery.ModuleSpec("sageattention.core", None)
    core.sageattn = sageattn
    pkg.core = core
    if where == "package":
        pkg.sageattn = sageattn
    pkg.calls = calls
    return pkg, core


@pytest.fixture
def no_sage(monkeypatch):
    monkeypatch.setitem(sys.modules, "sageattention", None)
    monkeypatch.setitem(sys.modules, "sageattention.core", None)


@pytest.fixture
def sage(monkeypatch):
    pkg, core = fake_sageattention()
    monkeypatch.setitem(sys.modules, "sageattention", pkg)
    monkeypatch.setitem(sys.modules, "sageattention.core", core)
    return pkg


# ---- registration, availability ----------------------------------------------------------------
def test_registered_as_a_forward_only_int8_backend():
    c = BE.caps
    assert c.precision == "int8" and c.devices == {"cuda"} and c.problem == "attention"
    assert not c.backward and not c.lse and not c.varlen and not c.window and not c.softcap
    assert c.causal and c.gqa and c.seqlen_q_ne_k and c.dtypes == {"fp16", "bf16", "fp32"}
    assert c.max_head_dim == 128
    assert list(REGISTRY).index("sage") > list(REGISTRY).index("flag_attn_flash")


def test_not_installed_says_how_to_install(no_sage, cli, monkeypatch):
    why = BE.availability("cuda")
    assert why == "sageattention not installed (pip install -e '.[sage]')"
    assert BE.why_unsupported(Case(1, 2, 2, 128, 128, 64, "bf16"), "cuda") == why
    monkeypatch.setenv("COLUMNS", "400")
    res = cli("list", "--device", "cuda")
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.count("│") > 3 and " sage " in ln]
    assert "no" in line and "sageattention not installed" in line and "precision=int8" in line


@pytest.mark.parametrize("where", ["package", "core"])
def test_found_in_the_package_or_in_core(where, cli, monkeypatch):
    pkg, core = fake_sageattention(where)
    monkeypatch.setitem(sys.modules, "sageattention", pkg)
    monkeypatch.setitem(sys.modules, "sageattention.core", core)
    assert BE.availability("cuda") is None
    case = Case(1, 2, 2, 128, 128, 64, "bf16")
    p = BE.prepare(make_inputs(case, "cpu"), case)
    assert p.args["fn"] is core.sageattn
    monkeypatch.setenv("COLUMNS", "400")
    res = cli("list", "--device", "cuda")  # no GPU here: what would run there
    (line,) = [ln for ln in res.output.splitlines() if ln.count("│") > 3 and " sage " in ln]
    assert "yes" in line and "precision=int8" in line


def test_old_gpu_is_named(sage, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    assert BE.availability("cuda") == "SageAttention targets sm80 or newer (this GPU is sm75)"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert BE.availability("cuda") is None


# ---- refusals -----------------------------------------------------------------------------------
REFUSALS = [
    (Case(2, 4, 4, 128, 128, 64, "bf16", causal=True), None),
    (Case(2, 8, 2, 128, 128, 96, "fp16"), None),  # GQA, head dim 96
    (Case(2, 4, 4, 128, 128, 128, "fp32"), None),
    (Case(1, 4, 4, 100, 300, 64, "bf16"), None),  # seqlen_q != seqlen_k, no mask
    (Case(2, 4, 4, 128, 128, 80, "bf16"), "unsupported: head dim 80 (sageattn takes 64, 96, 128)"),
    (Case(2, 4, 4, 128, 128, 32, "bf16"), "unsupported: head dim 32 (sageattn takes 64, 96, 128)"),
    (Case(2, 4, 4, 128, 128, 256, "bf16"), "unsupported: head dim 256 > 128"),
    (Case(1, 4, 4, 100, 300, 64, "bf16", causal=True),
     "unsupported: causal with seqlen_q != seqlen_k (sageattn's causal mask is for qo_len == "
     "kv_len only)"),
    (Case(2, 4, 4, 1, 1, 64, "bf16", seqlens=(70, 128)), "unsupported: varlen"),
    (Case(1, 4, 4, 128, 128, 64, "bf16", causal=True, window_left=16, window_right=0),
     "unsupported: sliding window"),
    (Case(1, 4, 4, 128, 128, 64, "bf16", softcap=30.0), "unsupported: softcap"),
]  # fmt: skip


@pytest.mark.parametrize("case,expected", REFUSALS, ids=[c.id for c, _ in REFUSALS])
def test_refusals(case, expected, sage):
    assert BE.why_unsupported(case, "cuda", "fwd") == expected
    why_bwd = BE.why_unsupported(case, "cuda", "fwd_bwd")  # forward only, whatever the case
    assert why_bwd.startswith("unsupported: ")
    if expected is None:
        assert why_bwd == "unsupported: backward"
    assert "does not run on cpu" in BE.why_unsupported(case, "cpu", "fwd")


def test_its_asserts_at_run_time_are_unsupported_rows():
    def raised(path, exc):
        try:
            exec(compile(f"raise {exc}", path, "exec"))
        except BaseException as e:  # noqa: BLE001
            return e

    e = raised(
        "/site/sageattention/core.py", "AssertionError('headdim should be in [64, 96, 128].')"
    )
    assert classify(e, BE) == (
        "unsupported",
        "unsupported: sageattention refused: headdim should be in [64, 96, 128].",
    )
    assert classify(raised("/work/attnbench/x.py", "AssertionError('bug')"), BE)[0] == "error"
    assert classify(RuntimeError("CUDA error: an illegal memory access"), BE)[0] == "error"


# ---- the glue, with the fake ----------------------------------------------------------------------
GLUE = [
    Case(2, 4, 4, 256, 256, 64, "bf16", causal=True),
    Case(2, 8, 2, 128, 192, 128, "fp16"),  # GQA, seqlen_q != seqlen_k
    Case(1, 4, 4, 128, 128, 96, "fp32", k_channel_offset=8.0),  # K outliers: smoothing matters
]


@pytest.mark.parametrize("case", GLUE, ids=[c.id for c in GLUE])
def test_arguments_and_the_lossy_verdict(case, sage):
    inp = make_inputs(case, "cpu", seed=0)
    before = {n: t.clone() for n, t in (("q", inp.q), ("k", inp.k), ("v", inp.v))}
    errs = check_backend(BE, case, inp, make_truth(inp, case, grads=False), grads=False)
    assert {e.tensor for e in errs} == {"out"}  # no lse
    (e,) = errs
    assert e.precision == "int8" and e.tolerance == LOSSY_DEFAULTS["int8"]
    assert e.accuracy_ok, vars(e)
    (call,) = sage.calls
    assert call["tensor_layout"] == "NHD" and call["is_causal"] is case.causal
    assert call["sm_scale"] == case.scale and call["smooth_k"] is True and not call["kwargs"]
    assert call["q"].shape == inp.q.shape and call["k"].shape == inp.k.shape  # (B, S, H, D)
    assert call["q"].data_ptr() == inp.q.data_ptr()  # q and v read as they are, no copy
    assert call["v"].data_ptr() == inp.v.data_ptr()
    # k: a private copy, smoothed in place by the library; the harness's k never written
    assert call["k_ptr"] != inp.k.data_ptr()
    smoothed = call["k"].float().mean(dim=1).abs().max()
    assert smoothed < 0.1 * inp.k.float().mean(dim=1).abs().max()
    for name, t in before.items():
        assert torch.equal(getattr(inp, name), t), f"the harness's {name} was written"


def test_the_fake_smooths_the_k_it_is_given_as_sageattn_does(sage):
    """The hazard the copy guards against: handed the harness's k, the library rewrites it."""
    case = Case(1, 4, 4, 128, 128, 64, "bf16", k_channel_offset=4.0)
    inp = make_inputs(case, "cpu", seed=0)
    k0 = inp.k.clone()
    sage.sageattn(inp.q, inp.k, inp.v, tensor_layout="NHD", sm_scale=case.scale)
    assert not torch.equal(inp.k, k0)
    # repeated timed calls smooth the same private copy: the second call sees a ~zero mean
    p = BE.prepare(inp, case)
    BE.forward(p, case)
    once = p.leaves[1].clone()
    BE.forward(p, case)
    assert torch.allclose(p.leaves[1].float(), once.float(), atol=2e-2)


def test_accuracy_run_on_the_cpu_grades_it_by_the_int8_rule(sage, cli, tmp_path, monkeypatch):
    # the fake runs on the CPU: let the runner send it CPU cases (the real one asserts CUDA)
    monkeypatch.setattr(BE, "caps", replace(BE.caps, devices=frozenset({"cuda", "cpu"})))
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: sage_cpu\ncases:\n"
        "  - {batch: 1, heads_q: 2, seqlen: 128, head_dim: [64, 80], dtype: bf16,"
        " causal: [false, true], k_channel_offset: [0.0, 4.0]}\n"
    )
    out = tmp_path / "r"
    res = cli("accuracy", "--suite", suite, "--device", "cpu", "--only", "sage,naive",
              "--out", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "PASS lossy cos" in text and "graded by the lossy int8 rule" in text
    rows = pd.read_parquet(sorted(out.glob("*.parquet"), key=lambda f: f.stat().st_mtime)[-1])
    mine = rows[rows.backend == "sage"]
    ran = mine[mine.status != "unsupported"]
    assert len(ran) == 4 and set(ran.tensor) == {"out"} and ran.accuracy_ok.all()
    assert (ran.precision == "int8").all() and (ran.cos_sim > 0.999).all()
    refused = mine[mine.status == "unsupported"]
    assert len(refused) == 4 and refused.message.str.contains("head dim 80").all()
    assert rows[rows.backend == "naive"].accuracy_ok.all()
    assert len(sage.calls) >= 4


# ---- packaging ------------------------------------------------------------------------------------
def test_sage_extra_and_gpu_wheel_note():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["sage"] == ["sageattention>=1.0.6"]
    lease = (ROOT / "tools/gpu/lease.sh").read_text()
    assert "sageattention==1.0.6" in lease and ".whl/*.whl" in lease
    docs = (ROOT / "docs/backends.md").read_text()
    assert "`sage`" in docs and "attnbench[sage]" in docs
