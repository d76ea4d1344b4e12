"""The timer, the measured ceiling, telemetry and the kept Triton tuning on a CUDA GPU.
Run with ``pytest -m gpu``."""

import pandas as pd
import pytest
import torch

from attnbench.run import ceiling, timing

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_ceiling_is_positive_and_plausible():
    c = ceiling.ceiling("cuda", "bf16")
    assert 10 < c["matmul_tflops"] < 5000
    assert 100 < c["copy_gbps"] < 20000
    assert c["bw_gbps"] == max(c["copy_gbps"], c["read_gbps"]) and "warm-up" in c["ceiling_method"]
    assert ceiling.ceiling("cuda", "bf16") is c  # measured once per run


def test_no_row_of_a_run_exceeds_its_ceilings(cli, tmp_path):
    """The roofs are measured so that no kernel touches them: every TFLOP/s row of a run is below
    its matmul ceiling and every GB/s row below its bandwidth (FA4's forward read 98-99% of a
    cold 8192^3 matmul before the warm-up and the best-of-shapes)."""
    f = tmp_path / "s.yaml"
    f.write_text(
        "name: g\nrep_ms: 30\nmodes: [fwd, bwd]\ncases:\n"
        "  - {tokens: 16384, heads_q: 16, seqlen: [2048, 8192], head_dim: 128, dtype: bf16,"
        " causal: [false, true]}\n"
    )
    out = tmp_path / "r"
    res = cli("perf", "--sweep", f, "--only", "sdpa_flash,sdpa_cudnn,fa4", "--out", out)
    assert res.exit_code in (0, 1), res.output
    df = pd.read_parquet(out)
    ok = df[df.status == "ok"]
    assert len(ok) and (ok.tflops < ok.matmul_tflops).all(), ok[["backend", "tflops"]]
    g = ok[ok.gbps.notna()]
    assert (g.gbps < g.bw_gbps).all()


def test_short_kernel_gets_enough_reps_and_a_tight_spread():
    x = torch.randn(4096, 4096, device="cuda")  # a ~20 us copy
    y = torch.empty_like(x)
    times = timing.gpu_times(lambda: y.copy_(x), warmup_ms=10, rep_ms=20)
    assert len(times) >= timing.MIN_REPS
    p20, p80 = timing.quantiles(times, (0.2, 0.8))
    assert (p80 - p20) / p20 < 0.2, (p20, p80)


def test_perf_rows_carry_ceiling_telemetry_and_kernel_config(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNBENCH_TUNING_CACHE", str(tmp_path / "tuning.json"))
    monkeypatch.setenv("ATTNBENCH_TRITON_FA2_TUNE", "1")  # conftest turns tuning off
    f = tmp_path / "s.yaml"
    f.write_text(
        "name: g\nrep_ms: 20\ncases:\n"
        "  - {batch: 2, heads_q: 8, seqlen: 1024, head_dim: 128, dtype: bf16, causal: true}\n"
    )
    out = tmp_path / "r"
    args = ["perf", "--sweep", f, "--out", out, "--only", "triton_fa2,sdpa_cudnn"]
    res = cli(*args, "--modes", "fwd,bwd")
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out).query("status == 'ok'")
    assert len(df) == 4 and (df.matmul_tflops > 10).all() and (df.copy_gbps > 100).all()
    assert ((df.pct_of_peak > 0) & (df.pct_of_peak < 100)).all()
    assert df.kernel_config.notna().all()
    nvml = df.sm_clock_mhz_start.notna()
    assert (nvml & (df.sm_clock_mhz_end > 0) & (df.gpu_power_w_end > 0)).all() or (
        df.env_note.str.contains("NVML").all()
    )
    assert (df[df.backend == "sdpa_cudnn"].kernel_config == "cudnn_attention").all()
    assert tuning_entries(tmp_path / "tuning.json") >= 3  # fwd, bwd_dkdv, bwd_dq
    # a second run reuses the kept choices: the same configs
    first = df.set_index(["backend", "mode"]).kernel_config
    res = cli(*args, "--modes", "fwd,bwd")
    again = pd.read_parquet(out).sort_values("timestamp").query("status == 'ok'").tail(4)
    assert (again.set_index(["backend", "mode"]).kernel_config == first).all()


def tuning_entries(path) -> int:
    import json

    data = json.loads(path.read_text())
    return sum(len(v) for env in data.values() for v in env.values())


def test_tuning_compiles_its_candidates_in_parallel_first(cli, tmp_path, monkeypatch):
    # a shape no other GPU test tunes (the tuner's choices also live in the process's memory)
    from attnbench.kernels.triton_fa2 import tuning

    monkeypatch.setenv("ATTNBENCH_TUNING_CACHE", str(tmp_path / "tuning.json"))
    monkeypatch.setenv("ATTNBENCH_TRITON_FA2_TUNE", "1")  # conftest turns tuning off
    monkeypatch.delenv(tuning.ENV_PRECOMPILE, raising=False)
    seen, real = [], tuning.precompile

    def spy(fn, args, kwargs, configs):
        n = real(fn, args, kwargs, configs)
        seen.append((len(configs), n))
        return n

    monkeypatch.setattr(tuning, "precompile", spy)
    f = tmp_path / "s.yaml"
    f.write_text(
        "name: g\nrep_ms: 20\ncases:\n"
        "  - {batch: 1, heads_q: 4, seqlen: 1536, head_dim: 64, dtype: fp16, causal: false}\n"
    )
    out = tmp_path / "r"
    res = cli("perf", "--sweep", f, "--out", out, "--only", "triton_fa2", "--modes", "fwd,bwd")
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert (df.status == "ok").all() and df.accuracy_ok.all() and len(df) == 2
    assert seen and all(n == c > 1 for c, n in seen), seen  # every candidate compiled up front
