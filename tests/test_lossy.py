"""Low-precision attention as modified attention: the relative metrics (cosine similarity,
relative L1, RMSE) on every graded tensor, the lossy rule of backends that declare a lossy
precision (declared in every row and cell, overridable in the YAML), and the input distributions
(large logits, K outlier channels) that stress quantized kernels. CPU only."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
from rich.console import Console

from attnbench.backends.base import REGISTRY, Backend, Capabilities, register
from attnbench.problems.attention import AttentionCase as Case
from attnbench.problems.attention.inputs import make_inputs
from attnbench.problems.attention.reference import attention_ref, case_kwargs
from attnbench.rule import LOSSY_DEFAULTS, lossy_tolerance
from attnbench.run.check import (
    abs_error,
    error_metrics,
    grade,
    make_truth,
    report_lines,
    verdict,
)
from attnbench.run.config import ConfigError, load_config, select_cases
from attnbench.views.tables import accuracy_table, failed_cases

FAKE = "test_fake_int8"


def _int8(x: torch.Tensor) -> torch.Tensor:
    """x rounded to int8 with one symmetric scale per tensor (max |x| -> 127), dequantized."""
    x = x.detach().float()
    scale = x.abs().max().clamp(min=1e-12) / 127
    return torch.round(x / scale).clamp(-127, 127) * scale


class FakeInt8(Backend):
    """Attention with q and k rounded to int8 (per-tensor scales), the rest in fp32: the
    simplest INT8 Q.K^T kernel, forward only (as SageAttention)."""

    name = FAKE
    description = "q, k rounded to int8 with per-tensor scales (test only)"
    caps = Capabilities(devices={"cpu"}, backward=False, lse=True, precision="int8")

    def forward(self, p, case):
        q, k, v = p.leaves
        out, lse = attention_ref(_int8(q), _int8(k), v.detach().float(), **case_kwargs(case))
        return out.to(q.dtype), lse.float()


@pytest.fixture(scope="module")
def fake():
    register(FakeInt8)
    yield REGISTRY[FAKE]
    REGISTRY.pop(FAKE, None)


def _graded(case: Case, precision: str, backend: Backend | None = None):
    """The fake backend's (out, lse) on ``case``, graded as ``precision``."""
    be = backend or FakeInt8()
    inp = make_inputs(case, "cpu", seed=0)
    truth = make_truth(inp, case, grads=False)
    out, lse = be.forward(be.prepare(inp, case), case)
    return {e.tensor: e for e in grade({"out": out, "lse": lse}, truth, case, precision)}


STANDARD = [
    Case(2, 4, 4, 256, 256, 64, "fp32", causal=True),
    Case(2, 4, 2, 256, 256, 128, "bf16"),
]


# ---- the metrics ------------------------------------------------------------------------------
def test_metrics_of_identical_tensors():
    ref = torch.randn(3, 50, 4, 16, generator=torch.Generator().manual_seed(1))
    m = error_metrics(ref.clone(), ref)
    assert (m.max_abs_err, m.mean_abs_err, m.rel_l1, m.rmse) == (0.0, 0.0, 0.0, 0.0)
    assert m.cos_sim == pytest.approx(1.0, abs=1e-15) and m.cos_sim <= 1.0


def test_metrics_of_scaled_negated_and_orthogonal_tensors():
    ref = torch.randn(1000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    m = error_metrics(ref * 1.1, ref)
    assert m.cos_sim == pytest.approx(1.0, abs=1e-12)
    assert m.rel_l1 == pytest.approx(0.1, rel=1e-9)
    assert m.rmse == pytest.approx(0.1 * float(ref.pow(2).mean().sqrt()), rel=1e-9)
    assert m.max_abs_err == pytest.approx(0.1 * float(ref.abs().max()), rel=1e-9)
    neg = error_metrics(-ref, ref)
    assert neg.cos_sim == pytest.approx(-1.0, abs=1e-12) and neg.rel_l1 == pytest.approx(2.0)
    orth = error_metrics(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    assert orth.cos_sim == 0.0 and orth.rel_l1 == pytest.approx(1.5)
    assert orth.rmse == pytest.approx(math.sqrt((1 + 4) / 2))
    zeros = torch.zeros(4)
    assert (error_metrics(zeros, zeros).cos_sim, error_metrics(zeros, zeros).rel_l1) == (1.0, 0.0)
    only_x = error_metrics(torch.ones(4), zeros)
    assert (only_x.cos_sim, only_x.rel_l1) == (0.0, math.inf)


def test_metrics_where_the_reference_is_infinite():
    """lse = +inf on rows with no visible key: an infinity of either sign there is exact and
    left out of the sums (as max/mean count it as error 0); a finite value there is an infinite
    error; NaN anywhere makes every metric NaN."""
    ref = torch.tensor([math.inf, 1.0, 2.0])
    exact = error_metrics(torch.tensor([-math.inf, 1.0, 2.0]), ref)
    assert (exact.cos_sim, exact.rel_l1, exact.rmse) == (1.0, 0.0, 0.0)
    off = error_metrics(torch.tensor([math.inf, 1.0, 2.5]), ref)
    assert off.rel_l1 == pytest.approx(0.5 / 3)  # the inf position adds nothing to either sum
    assert off.rmse == pytest.approx(math.sqrt(0.25 / 3))  # nor to the squares; counted as mean
    assert off.cos_sim == pytest.approx((1 + 5) / math.sqrt(5 * 7.25))
    assert (off.max_abs_err, off.mean_abs_err) == abs_error(torch.tensor([math.inf, 1, 2.5]), ref)
    finite_there = error_metrics(torch.tensor([30.0, 1.0, 2.0]), ref)
    assert finite_there.max_abs_err == finite_there.rel_l1 == finite_there.rmse == math.inf
    assert math.isnan(finite_there.cos_sim)
    nan = error_metrics(torch.tensor([math.nan, 1.0, 2.0]), ref)
    assert all(math.isnan(x) for x in vars(nan).values())


def test_exact_backends_get_the_metrics_and_keep_their_verdict():
    case = Case(2, 2, 2, 12, 5, 16, "fp32", causal=True)  # rows with no visible key: lse inf
    inp = make_inputs(case, "cpu", seed=0)
    truth = make_truth(inp, case)
    same = attention_ref(
        *(t.detach() for t in inp.differentiable), upcast=False, **case_kwargs(case)
    )
    errs = grade({"out": same[0], "lse": same[1]}, truth, case)
    for e in errs:
        assert e.precision == "exact" and e.accuracy_ok and e.tolerance is None
        assert (e.max_abs_err, e.mean_abs_err) == abs_error(
            {"out": same[0], "lse": same[1]}[e.tensor], getattr(truth.ref, e.tensor)
        )
        assert e.cos_sim > 0.999999 and 0 <= e.rel_l1 < 1e-6 and 0 <= e.rmse < 1e-6
        assert {"cos_sim", "rel_l1", "rmse", "precision"} <= set(e.columns())
    assert verdict(errs, "fwd") == (True, None)  # exact: no message, as before
    lines = report_lines(errs)
    assert lines[0].startswith("Output max diff:") and any("cos sim" in x for x in lines)
    assert not any("lossy" in x for x in lines)


# ---- the lossy rule ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", STANDARD, ids=[c.id for c in STANDARD])
def test_fake_int8_passes_the_lossy_rule_and_fails_the_exact_one(case):
    lossy = _graded(case, "int8")
    assert all(e.accuracy_ok for e in lossy.values()), {t: vars(e) for t, e in lossy.items()}
    assert all(
        e.precision == "int8" and e.tolerance == LOSSY_DEFAULTS["int8"] for e in lossy.values()
    )
    exact = _graded(case, "exact")  # the very same outputs, graded as an exact backend
    assert not exact["out"].accuracy_ok
    ok, msg = verdict(list(lossy.values()), "fwd")
    assert ok and msg.startswith("lossy int8 rule: cos >= 0.999, rL1 <= 0.05: passed, worst out")
    assert not verdict(list(exact.values()), "fwd")[0]
    assert "graded by the lossy int8 rule" in report_lines(list(lossy.values()))[-1]


def test_lossy_cell_reads_pass_lossy_with_its_numbers():
    errs = _graded(STANDARD[1], "int8")
    rows = [
        dict(case_id=STANDARD[1].id, backend=FAKE, status="ok", **e.columns())
        for e in errs.values()
    ]
    con = Console(width=250, record=True)
    con.print(accuracy_table(rows))
    text = con.export_text()
    worst = min(errs.values(), key=lambda e: e.cos_sim)
    cos = f"{math.floor(worst.cos_sim * 1e4) / 1e4:.4f}"
    assert f"PASS lossy cos {cos} rL1 " in text, text
    assert "lossy backends: worst cosine similarity and relative L1" in text


def test_a_failing_lossy_tensor_is_named_with_its_numbers():
    errs = _graded(replace(STANDARD[1], lossy=(0.99999, None)), "int8")
    assert not errs["out"].accuracy_ok
    ok, msg = verdict(list(errs.values()), "fwd")
    assert not ok and msg.startswith("accuracy failed: out cos 0.99")
    assert "< 0.99999 (lossy int8 rule: cos >= 0.99999, rL1 <= 0.05)" in msg
    row = dict(case_id="c", backend=FAKE, mode="fwd", kind="accuracy", **errs["out"].columns())
    row["status"] = "accuracy_failed"
    assert "wrong out (lossy: cos 0.99" in failed_cases([row])[1]


def test_tolerance_override_keeps_the_other_default():
    assert lossy_tolerance("int8", (0.9, None)).rel_l1 == LOSSY_DEFAULTS["int8"].rel_l1
    assert lossy_tolerance("int8", (None, 0.2)).cos_sim == LOSSY_DEFAULTS["int8"].cos_sim
    assert lossy_tolerance("fp4").cos_sim > 0  # a lossy precision with no entry: the fallback


def _e4m3(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x rounded to e4m3 with one scale per slice along ``dim`` (max |x| -> 448), in fp64."""
    s = x.abs().amax(dim=dim, keepdim=True) / 448
    return (x / s).clamp(-448, 448).to(torch.float8_e4m3fn).double() * s


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_fp8_default_sits_above_the_e4m3_floor(causal):
    """The fp8 default is the floor of e4m3 with margin: attention of the e4m3 roundings of q, k
    (per token), v (per channel) and P (e4m3(p * 2^8)), all else exact in fp64, passes it on
    standard-normal inputs, and would fail the int8 default; a K channel offset with one scale
    per tensor (the error an outlier-blind kernel adds) fails it."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 1024, 128, generator=g, dtype=torch.float64) for _ in range(3))

    def attention(q, k, v, round_p):
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if causal:
            s = s.masked_fill(torch.ones(1024, 1024, dtype=torch.bool).triu(1), -math.inf)
        p = torch.exp(s - s.amax(-1, keepdim=True))
        l = p.sum(-1, keepdim=True)
        p = (p * 256).to(torch.float8_e4m3fn).double() / 256 if round_p else p
        return (p @ v) / l

    def metrics(o, ref):
        m = error_metrics(o, ref)
        return m.cos_sim, m.rel_l1

    ref = attention(q, k, v, False)
    floor = metrics(attention(_e4m3(q, -1), _e4m3(k, -1), _e4m3(v, -2), True), ref)
    fp8, int8 = LOSSY_DEFAULTS["fp8"], LOSSY_DEFAULTS["int8"]
    assert 0.998 < floor[0] < 0.9992 and 0.04 < floor[1] < 0.06  # the floor itself
    assert floor[0] >= fp8.cos_sim and floor[1] <= fp8.rel_l1  # fp8 passes at its floor ...
    assert not (floor[0] >= int8.cos_sim and floor[1] <= int8.rel_l1)  # ... int8's rule: no
    offset = 16 * torch.randn(1, 2, 1, 128, generator=g, dtype=torch.float64)
    ko = k + offset  # softmax unchanged; one scale for the whole tensor
    blind = (ko / (ko.abs().max() / 448)).to(torch.float8_e4m3fn).double() * (ko.abs().max() / 448)
    worse = metrics(attention(_e4m3(q, -1), blind, _e4m3(v, -2), True), attention(q, ko, v, False))
    assert worse[0] < fp8.cos_sim or worse[1] > fp8.rel_l1


# ---- through the command line: rows, cells, the YAML override, perf verdicts, compare ----------
SUITE = """
name: lowp_test
rep_ms: 2
warmup_ms: 1
{lossy}cases:
  - {{batch: 1, heads_q: 2, seqlen: 128, head_dim: 64, dtype: [fp32, bf16], causal: [false, true]}}
"""


def _run(cli, tmp_path, kind, lossy="", *extra):
    f = tmp_path / f"s{len(lossy)}.yaml"
    f.write_text(SUITE.format(lossy=lossy))
    out = tmp_path / "r"
    flag = "--suite" if kind == "accuracy" else "--sweep"
    res = cli(kind, flag, f, "--device", "cpu", "--only", f"naive,{FAKE}", "--out", out, *extra)
    rows = pd.read_parquet(sorted(out.glob("*.parquet"), key=lambda p: p.stat().st_mtime)[-1])
    return res, rows


def test_accuracy_run_declares_the_lossy_verdict_and_the_yaml_override_flips_it(
    cli, fake, tmp_path
):
    res, rows = _run(cli, tmp_path, "accuracy")
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "PASS lossy cos 0.99" in text and "graded by the lossy int8 rule" in text
    mine = rows[rows.backend == FAKE]
    assert set(mine.tensor) == {"out", "lse"} and mine.accuracy_ok.all()
    assert (mine.precision == "int8").all() and (
        rows[rows.backend == "naive"].precision == "exact"
    ).all()
    assert rows.cos_sim.notna().all() and rows.rel_l1.notna().all() and rows.rmse.notna().all()

    tight = "lossy: {cos_sim: 0.99999}\n"  # the same outputs, a tighter tolerance
    res, tight_rows = _run(cli, tmp_path, "accuracy", tight)
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert "FAIL lossy out cos 0.99" in text and "cos >= 0.99999" in text
    assert not tight_rows[tight_rows.backend == FAKE].accuracy_ok.all()
    assert tight_rows[tight_rows.backend == "naive"].accuracy_ok.all()  # exact: unaffected
    # the rows carry the limits that graded them: the override, the default kept; none if exact
    assert (tight_rows[tight_rows.backend == FAKE].tol_cos_sim == 0.99999).all()
    assert (
        tight_rows[tight_rows.backend == FAKE].tol_rel_l1 == LOSSY_DEFAULTS["int8"].rel_l1
    ).all()
    assert tight_rows[tight_rows.backend == "naive"].tol_cos_sim.isna().all()

    # compare: the flipped verdicts carry both sides' metrics; the ids and joins are today's
    base, new = tmp_path / "pass.parquet", tmp_path / "fail.parquet"
    rows.to_parquet(base)
    tight_rows.to_parquet(new)
    res = cli("compare", base, new, "--json")
    j = json.loads(res.stdout)
    assert j["base_only"] == j["new_only"] == []
    lost = [c for c in j["accuracy_changes"] if c["base"] is True]
    assert lost and all(c["case"].startswith(FAKE) for c in lost)
    assert all(c["cos_sim_base"] == c["cos_sim_new"] < 0.99999 for c in lost)
    res = cli("compare", base, new)
    assert "cos 0.99" in res.output and " -> " in res.output


def test_old_runs_without_the_new_columns_still_join(cli, fake, tmp_path):
    _, rows = _run(cli, tmp_path, "perf", "", "--modes", "fwd")
    new_cols = ["q_std", "k_std", "k_channel_offset", "cos_sim", "rel_l1", "rmse", "precision"]
    old = tmp_path / "old.parquet"
    rows.drop(columns=new_cols).to_parquet(old)  # a run written before these columns existed
    now = tmp_path / "now.parquet"
    rows.to_parquet(now)
    res = cli("compare", old, now, "--json")
    assert res.exit_code == 0, res.output
    j = json.loads(res.stdout)
    assert j["base_only"] == j["new_only"] == [] and j["accuracy_changes"] == []
    assert len(j["cases"]) == len(rows) == 8


def test_perf_rows_of_a_lossy_backend_carry_its_verdict(cli, fake, tmp_path):
    res, rows = _run(cli, tmp_path, "perf", "", "--modes", "fwd")
    assert res.exit_code == 0, res.output
    mine = rows[rows.backend == FAKE]
    assert (mine.status == "ok").all() and mine.accuracy_ok.all()
    assert mine.message.str.startswith("lossy int8 rule: cos >= 0.999, rL1 <= 0.05: passed").all()
    assert rows[rows.backend == "naive"].message.isna().all()
    assert "GFLOP/s lossy" in res.output  # the perf table marks the lossy cells
    res, rows = _run(cli, tmp_path, "perf", "lossy: {rel_l1: 0.0001}\n", "--modes", "fwd")
    mine = rows[rows.backend == FAKE]
    assert res.exit_code == 1 and (mine.status == "accuracy_failed").all()
    assert mine.message.str.contains("rL1 .* > 0.0001", regex=True).all()


# ---- the YAML -----------------------------------------------------------------------------------
BAD = {
    "cos_above_1": (
        "lossy: {cos_sim: 1.5}\n",
        "lossy.cos_sim: Input should be less than or equal to 1",
    ),
    "negative_rel_l1": ("lossy: {rel_l1: -0.1}\n", "lossy.rel_l1: Input should be greater than"),
    "unknown_key": ("lossy: {cos: 0.99}\n", "lossy.cos: Extra inputs are not permitted"),
    "nothing": ("lossy: {}\n", "give cos_sim, rel_l1 or both"),
    "nan": ("lossy: {rel_l1: .nan}\n", "lossy.rel_l1: Input should be a finite number"),
    "string": ("lossy: {rel_l1: '0.1'}\n", "lossy.rel_l1: Value error, expected a number"),
    "q_std_zero": ("", "q_std must be a finite number > 0"),
    "negative_offset": ("", "k_channel_offset must be a finite number >= 0"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_lossy_and_distribution_keys_are_config_errors(name, tmp_path):
    top, expected = BAD[name]
    extra = {"q_std_zero": ", q_std: 0.0", "negative_offset": ", k_channel_offset: -1.0"}
    f = tmp_path / "bad.yaml"
    f.write_text(
        f"name: x\n{top}cases:\n  - {{batch: 1, heads_q: 2, seqlen: 8, head_dim: 8"
        f"{extra.get(name, '')}}}\n"
    )
    with pytest.raises(ConfigError) as ei:
        load_config(str(f))
    assert expected in str(ei.value)


def test_lowp_config_covers_the_issue():
    cfg, _ = load_config("lowp")
    assert cfg.lossy is None  # the defaults; a file may override them
    for device in ("cuda", "cpu"):
        cases, _, note = select_cases(cfg, device)
        assert {c.causal for c in cases} == {False, True}
        assert {c.head_dim for c in cases} == {64, 128}
        assert any(c.standard_inputs for c in cases)
        assert any(c.q_std > 1 and c.k_std > 1 for c in cases)  # large logits
        assert any(c.k_channel_offset > 0 for c in cases)  # K outliers
        assert len({c.id for c in cases}) == len(cases)
    gpu, _, _ = select_cases(cfg, "cuda")
    assert {c.seqlen_q for c in gpu} == {1024, 2048, 4096, 8192}
    assert note and all(c.seqlen_q <= 256 for c in select_cases(cfg, "cpu")[0])


# ---- input distributions --------------------------------------------------------------------------
# sha256 of q, k, v, dout (bytes, in that order) from make_inputs(case, "cpu", 0) as it was before
# the input distributions existed: the standard inputs must stay bit for bit the same
PINNED = {
    Case(2, 4, 4, 128, 128, 64, "fp32"): "7e63f35d12db7267",
    Case(3, 4, 2, 77, 77, 32, "bf16", causal=True): "69d6fdb2c7d6a82d",
    Case(1, 2, 2, 50, 131, 64, "fp16"): "169f51dac33b1490",
    Case(3, 4, 1, 80, 80, 64, "fp16", seqlens=(1, 37, 80)): "1db9353c7df78dc2",
}


def _digest(case: Case) -> str:
    inp = make_inputs(case, "cpu", seed=0)
    h = hashlib.sha256()
    for t in (inp.q, inp.k, inp.v, inp.dout):
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("case", PINNED, ids=[c.id for c in PINNED])
def test_standard_inputs_and_ids_are_unchanged(case):
    assert _digest(case) == PINNED[case]
    assert "std" not in case.id and "koff" not in case.id
    explicit = replace(case, q_std=1.0, k_std=1.0, k_channel_offset=0.0, lossy=(0.9, 0.1))
    assert explicit == case and explicit.id == case.id and _digest(explicit) == PINNED[case]
    assert "lossy" not in case.params() and "lossy" not in Case.columns()


def test_distribution_changes_only_q_and_k_and_is_in_the_id():
    base = Case(2, 4, 2, 64, 64, 32, "fp32")
    odd = replace(base, q_std=3.0, k_std=2.0, k_channel_offset=5.0)
    assert odd.id == base.id + "-qstd3-kstd2-koff5" and odd != base
    assert odd.params()["q_std"] == 3.0 and odd.params()["k_channel_offset"] == 5.0
    a, b = make_inputs(base, "cpu", 0), make_inputs(odd, "cpu", 0)
    assert torch.equal(a.v, b.v) and torch.equal(a.dout, b.dout)
    assert torch.equal(b.q, a.q * 3.0)  # the same draws, scaled (fp32: exactly)
    offset = b.k - a.k * 2.0  # one offset per (kv head, channel), the same for every token
    assert torch.allclose(offset, offset[:1, :1].expand_as(offset), atol=1e-5)
    assert offset[0, 0].abs().mean() > 2.0  # of the scale asked (|N(0, 25)| ~ 4)


def test_k_outliers_make_the_fake_int8_worse():
    case = Case(2, 4, 4, 256, 256, 64, "bf16", causal=True)
    standard = _graded(case, "int8")["out"]
    outlier = _graded(replace(case, k_channel_offset=8.0), "int8")["out"]
    logits = _graded(replace(case, q_std=4.0, k_std=4.0), "int8")["out"]
    assert outlier.rel_l1 > 2 * standard.rel_l1 and outlier.cos_sim < standard.cos_sim
    assert logits.rel_l1 > standard.rel_l1 and logits.cos_sim < standard.cos_sim
    # per-tensor int8 with no smoothing does not survive K outliers at the default tolerance
    assert standard.accuracy_ok and not outlier.accuracy_ok
