"""Core harness on a CUDA GPU: SDPA kernels pass the rule, perf rows are do_bench timings with a
verdict, bottom-right causal is honoured. Run with ``pytest -m gpu``."""

import pandas as pd
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SUITE = """
name: gpu_small
rep_ms: 30
cases:
  - {batch: 2, heads_q: 8, heads_kv: [8, 2], seqlen: 1000, head_dim: [64, 128], dtype: [fp16, bf16], causal: [false, true]}
  - {batch: 2, heads_q: 4, seqlen_q: 300, seqlen_k: 1100, head_dim: 64, dtype: bf16, causal: true}
"""


def test_sdpa_accuracy_and_perf_on_gpu(cli, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(SUITE)
    out = tmp_path / "r"
    only = "naive,sdpa_math,sdpa_flash,sdpa_efficient,sdpa_cudnn"
    res = cli("accuracy", "--suite", f, "--out", out, "--only", only)
    df = pd.read_parquet(out)
    ran = df[df.status != "unsupported"]
    assert set(ran.backend) >= {"naive", "sdpa_math", "sdpa_flash", "sdpa_efficient"}
    assert (ran.status == "ok").all(), ran[ran.status != "ok"][["backend", "case_id", "message"]]
    assert res.exit_code == 0
    # Sq != Sk causal: flash takes no mask -> unsupported with the reason, efficient runs it
    cross = df[df.case_id.str.contains("S300x1100")]
    assert (cross[cross.backend == "sdpa_flash"].status == "unsupported").all()
    assert (cross[cross.backend == "sdpa_efficient"].status == "ok").all()

    res = cli(
        "perf",
        "--sweep",
        f,
        "--out",
        out,
        "--only",
        "sdpa_flash,sdpa_efficient",
        "--modes",
        "fwd,bwd",
    )
    assert res.exit_code == 0, res.output
    perf = pd.read_parquet(out).query("kind == 'perf' and status == 'ok'")
    assert len(perf) > 0 and perf.accuracy_ok.all()
    assert (perf.tflops > 1).all() and (perf.peak_mem_mb > 0).all()
    assert (perf.gpu_name.str.len() > 0).all()
