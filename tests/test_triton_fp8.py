"""The ``triton_fp8*`` backends (our FP8 forward, :mod:`attnbench.kernels.fp8`) in the harness:
registration and capabilities, the lossy verdict on standard and K-outlier inputs through the
command line, ``quant_ms`` on perf rows, the trade-off plot. CPU: the kernel runs in Triton's
interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1`` without a GPU)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

pytest.importorskip("triton")

from attnbench.backends import REGISTRY, triton_fp8  # noqa: E402
from attnbench.problems.attention import AttentionCase as Case  # noqa: E402
from attnbench.problems.attention.inputs import make_inputs  # noqa: E402
from attnbench.run.check import check_backend, make_truth  # noqa: E402

NAMES = ["triton_fp8", "triton_fp8_rot", "triton_fp8_smooth", "triton_fp8_pv16"]  # e4m3 Q.K^T
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_registered_lossy_forward_only_with_the_kernels_head_dims():
    from attnbench.kernels import fp8

    for name in NAMES:
        be = REGISTRY[name]
        assert be.caps.precision == "fp8" and not be.caps.backward and be.caps.lse
        assert be.caps.head_dims == frozenset(fp8.HEAD_DIMS)
    case = Case(1, 2, 2, 64, 64, 96, "fp16")
    assert "head dim 96" in REGISTRY["triton_fp8"].why_unsupported(case, DEVICE)
    assert "varlen" in REGISTRY["triton_fp8"].why_unsupported(
        Case(2, 2, 2, 64, 64, 64, "fp16", seqlens=(30, 64)), DEVICE
    )
    assert "backward" in REGISTRY["triton_fp8"].why_unsupported(
        Case(1, 2, 2, 64, 64, 64, "fp16"), DEVICE, "fwd_bwd"
    )


@pytest.mark.parametrize("name", NAMES)
def test_inputs_untouched_quantization_apart_and_the_verdict(name):
    """prepare() quantizes (the harness's q, k, v are not modified), forward() only runs the
    kernel, quant_fn() redoes the quantization alone; the e4m3 variants pass the fp8 rule on a
    standard GQA causal case with Sq != Sk."""
    be = REGISTRY[name]
    case = Case(1, 4, 2, 96, 128, 64, "fp16", causal=True)
    inp = make_inputs(case, DEVICE, seed=0)
    before = [t.clone() for t in (inp.q, inp.k, inp.v)]
    p = be.prepare(inp, case)
    assert p.leaves[0].dtype == torch.float8_e4m3fn and p.leaves[1].dtype == torch.float8_e4m3fn
    z = be.quant_fn(p, case)()
    assert torch.equal(z.q8.view(torch.uint8), p.args["z"].q8.view(torch.uint8))
    errs = check_backend(be, case, inp, make_truth(inp, case, grads=False), grads=False)
    assert {e.tensor for e in errs} == {"out", "lse"}
    assert all(e.accuracy_ok for e in errs), [(e.tensor, e.cos_sim, e.rel_l1) for e in errs]
    for a, b in zip(before, (inp.q, inp.k, inp.v)):
        assert torch.equal(a, b)
    text = be.kernel_config(p, case, "fwd")
    assert "Q/K fp8 scales per 128/128 tokens" in text
    assert ("PV fp16" in text) == name.endswith("16")


def test_triton_int8_is_sage_recipe_and_passes_the_int8_rule_where_fp8_cannot():
    """INT8 Q.K^T (one scale per 128 tokens, K smoothed) with fp16 P.V: declared int8, its
    codes int8, and on a standard case it meets the int8 rule (cos >= 0.999, rel L1 <= 0.05),
    which no all-e4m3 variant can (e4m3's floor)."""
    be = REGISTRY["triton_int8"]
    assert be.caps.precision == "int8" and not be.caps.backward
    case = Case(1, 4, 2, 192, 192, 64, "fp16", causal=True)
    inp = make_inputs(case, DEVICE, seed=0)
    p = be.prepare(inp, case)
    assert p.leaves[0].dtype == torch.int8 and p.leaves[2].dtype == torch.float16
    assert "Q/K int8 scales" in be.kernel_config(p, case, "fwd")
    truth = make_truth(inp, case, grads=False)
    errs = {e.tensor: e for e in check_backend(be, case, inp, truth, grads=False)}
    assert all(e.accuracy_ok for e in errs.values())
    assert errs["out"].cos_sim > 0.9995 and errs["out"].rel_l1 < 0.03
    fp8 = {e.tensor: e for e in check_backend(REGISTRY["triton_fp8"], case, inp, truth, False)}
    assert fp8["out"].rel_l1 > 1.5 * errs["out"].rel_l1


def test_k_outliers_fail_without_smoothing_and_pass_with_it(cli, tmp_path):
    """The lowp config's K-outlier case (offset 16) through the command line: the plain and
    rotated variants fail the fp8 rule (a block scale set by the offset), the smoothed ones
    pass; the run exits 1 (a finding) and every row says its precision and numbers."""
    out = tmp_path / "res"
    res = cli(
        "accuracy", "--suite", "lowp", "--device", "cpu", "--only", ",".join(NAMES),
        "--where", "k_channel_offset=16,head_dim=64,causal=false",
        "--out", out,
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    df = pd.concat(pd.read_parquet(f) for f in out.glob("*.parquet"))
    got = df[df.tensor == "out"].set_index("backend")
    assert sorted(got.index) == sorted(NAMES)  # one case
    assert (got.precision == "fp8").all()
    assert not got.loc["triton_fp8", "accuracy_ok"] and not got.loc["triton_fp8_rot", "accuracy_ok"]
    assert got.loc["triton_fp8_smooth", "accuracy_ok"] and got.loc["triton_fp8_pv16", "accuracy_ok"]
    assert got.loc["triton_fp8", "rel_l1"] > 3 * got.loc["triton_fp8_smooth", "rel_l1"]
    assert "triton_fp8 " in res.output and "lossy" in res.output


def test_perf_rows_carry_quant_ms_rel_l1_and_draw_a_tradeoff(cli, tmp_path):
    out = tmp_path / "res"
    res = cli(
        "perf", "--sweep", "lowp_seqlen", "--device", "cpu", "--only", "triton_fp8_pv16,sdpa_math",
        "--where", "seqlen=128,causal=true", "--out", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    df = pd.concat(pd.read_parquet(f) for f in out.glob("*.parquet"))
    mine = df[df.backend == "triton_fp8_pv16"].iloc[0]
    assert mine.status == "ok" and mine.quant_ms > 0 and 0 < mine.rel_l1 < 0.07
    assert pd.isna(df[df.backend == "sdpa_math"].iloc[0].quant_ms)
    res = cli("plot", out, "--tradeoff", "--out", tmp_path / "png")
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "png").rglob("tradeoff_*.png"))) == 1


def test_list_names_every_variant_on_either_device(cli):
    for device in ("cpu", "cuda"):  # no traceback asking a CPU-only machine about CUDA
        res = cli("list", "--device", device)
        assert res.exit_code == 0, res.output
        assert all(name in res.output for name in [*NAMES, "triton_int8"])


def test_a_lossy_perf_cell_says_its_quantization_time_and_error():
    from attnbench.results.text import perf_cell

    row = {"latency_ms": 0.512, "tflops": 812.0, "problem": "attention"}
    assert perf_cell(row) == "0.512 ms 812 TFLOP/s"
    lossy = {**row, "quant_ms": 0.0812, "precision": "fp8", "rel_l1": 0.04931}
    assert perf_cell(lossy) == "0.512 ms 812 TFLOP/s fp8 rL1 0.0493 +0.0812 ms quant"
    exact = {**row, "precision": "exact", "rel_l1": 0.001, "quant_ms": float("nan")}
    assert perf_cell(exact) == "0.512 ms 812 TFLOP/s"


def test_head_dims_listed_match_the_kernel_package():
    from attnbench.kernels import fp8

    assert triton_fp8.HEAD_DIMS == frozenset(fp8.HEAD_DIMS)
