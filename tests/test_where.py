"""--where: a subset of a suite or sweep from the command line."""

from __future__ import annotations

import pytest

from attnbench.problems.attention import AttentionCase as Case
from attnbench.problems.piecewise import PiecewiseCase
from attnbench.run.where import keep, parse_where

CASES = [
    Case(2, 8, 8, s, s, d, dt, causal)
    for s in (512, 2048, 8192)
    for d in (64, 128)
    for dt in ("bf16", "fp16")
    for causal in (False, True)
] + [
    Case(4, 8, 2, 300, 300, 128, "bf16", True, seqlens=(1, 299)),
    Case(2, 4, 4, 1024, 1024, 64, "bf16", window_left=128, window_right=0),
]


def ids(cases):
    return {c.id for c in cases}


@pytest.mark.parametrize(
    "text, expect",
    [
        ("seqlen>=2048", lambda c: c.seqlen_q >= 2048),
        ("seqlen<2048,causal=true", lambda c: c.seqlen_q < 2048 and c.causal),
        ("head_dim=64|128,dtype=bfloat16", lambda c: c.dtype == "bf16"),
        ("dtype!=fp16, seqlen_k<=512", lambda c: c.dtype == "bf16" and c.seqlen_k <= 512),
        ("causal=0", lambda c: not c.causal),
        ("", lambda c: True),
        ("varlen=true,head_dim=128", lambda c: c.seqlens is not None),
        ("gqa=false,windowed=true", lambda c: c.window_left == 128),
    ],
    ids=[
        "ge",
        "lt-and-bool",
        "any-of-and-alias",
        "ne-and-spaces",
        "bool-0",
        "empty",
        "varlen",
        "gqa-windowed",
    ],
)
def test_conditions_select_the_cases(text, expect):
    assert ids(keep(CASES, parse_where(text, [Case]))) == {c.id for c in CASES if expect(c)}


def test_problem_fields_filter_their_cases():
    cases = [PiecewiseCase(1, 2, 2, 64, 64, 32, "fp32", True, dist_threshold=w) for w in (0, 32)]
    assert [
        c.dist_threshold for c in keep(cases, parse_where("dist_threshold>0", [PiecewiseCase]))
    ] == [32]
    with pytest.raises(ValueError, match="unknown field 'dist_threshold'"):
        parse_where("dist_threshold>0", [Case])


@pytest.mark.parametrize(
    "text, message",
    [
        ("nope=1", "unknown field 'nope'"),
        ("head_dim=big", "expected an integer"),
        ("causal=maybe", "expected true or false"),
        ("dtype>fp16", "dtype takes = or !="),
        ("dtype=fp8", "not one of fp16, bf16, fp32"),
        ("seqlen", "is not FIELD=VALUE"),
        ("seqlens=3", "cannot filter on this field"),
    ],
    ids=["unknown", "int", "bool", "dtype-op", "dtype-value", "no-op", "tuple-field"],
)
def test_bad_conditions_say_why(text, message):
    with pytest.raises(ValueError, match=message):
        parse_where(text, [Case])


def test_cli_bad_where_exits_2_with_one_line(cli):
    r = cli("accuracy", "--suite", "basic", "--device", "cpu", "--where", "nope=1")
    assert r.exit_code == 2 and "unknown field 'nope'" in r.output and "Traceback" not in r.output


def test_cli_where_runs_only_the_subset(cli, tmp_path):
    r = cli(
        "perf", "--sweep", "seqlen", "--device", "cpu", "--only", "naive",
        "--where", "seqlen=256,causal=false", "--modes", "fwd", "--out", tmp_path,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    import pandas as pd

    df = pd.read_parquet(tmp_path)
    assert set(df.seqlen_q) == {256} and not df.causal.any() and (df.status == "ok").all()


def test_cli_where_matching_nothing_exits_2(cli, tmp_path):
    r = cli(
        "perf",
        "--sweep",
        "seqlen",
        "--device",
        "cpu",
        "--where",
        "seqlen>1000000",
        "--out",
        tmp_path,
    )
    assert r.exit_code == 2 and "no cases to run" in r.output and "seqlen>1000000" in r.output
