"""Piecewise attention on a CUDA GPU: the whole accuracy suite on every piecewise backend, and
a short perf sweep whose rows all carry a verdict. Run with ``pytest -m gpu``; FlagAttention
joins when ``flag_attn`` is importable (PYTHONPATH=<FlagAttention>/src), else its rows say so."""

import pandas as pd
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BACKENDS = "piecewise_naive,piecewise_flex,piecewise_triton,flag_attn_piecewise"


def test_piecewise_accuracy_suite_on_every_backend(cli, tmp_path):
    out = tmp_path / "r"
    res = cli("accuracy", "--suite", "piecewise", "--out", out, "--only", BACKENDS)
    df = pd.read_parquet(out)
    assert set(df.problem) == {"piecewise"}
    ran = df[df.status != "unsupported"]
    bad = ran[ran.status != "ok"]
    assert bad.empty, bad[["backend", "case_id", "tensor", "status", "message"]].to_string()
    assert res.exit_code == 0, res.output
    # every backend except FlagAttention (optional) graded every case it declares
    for be in ("piecewise_naive", "piecewise_flex", "piecewise_triton"):
        rows = df[df.backend == be]
        assert (rows.status == "ok").all(), rows.message.dropna().unique()
        assert {"dq1", "dk1", "dq2", "dk2", "dv"} <= set(rows.tensor)
    flag = df[df.backend == "flag_attn_piecewise"]
    skipped = flag[flag.status == "unsupported"].message
    assert skipped.str.contains("not installed|GQA|head dim|fp32").all()


def test_piecewise_perf_rows_have_verdicts(cli, tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "name: pw_small\nproblem: piecewise\nrep_ms: 30\ncases:\n"
        "  - {tokens: 8192, model_dim: 1024, seqlen: [1024, 2048], head_dim: 128,"
        " dist_threshold_frac: 0.5, causal: true, dtype: bf16}\n"
    )
    out = tmp_path / "r"
    res = cli("perf", "--sweep", sweep, "--out", out, "--only", BACKENDS)
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    ok = df[df.status == "ok"]
    assert {"piecewise_flex", "piecewise_triton"} <= set(ok.backend)
    assert ok.accuracy_ok.all() and (ok.tflops > 0).all()
    assert (ok.dist_threshold == ok.seqlen_q // 2).all()
    res = cli("plot", out)
    assert res.exit_code == 0
    assert list((out / "_plots").glob("*/perf_piecewise_fwd_causal_d128_bf16_h*.png"))
