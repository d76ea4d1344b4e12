"""End-to-end accuracy and perf runs through the CLI on CPU, results, plots, failures."""

import json
import os
import re
import signal
import time

import pandas as pd
import pytest
import torch

from attnbench.backends.base import Backend, Capabilities
from attnbench.problems.attention.reference import attention_ref, case_kwargs
from attnbench.results import COLUMNS

SUITE = """
name: tiny
seed: 3
modes: [fwd, bwd, fwd_bwd]
rep_ms: 20
cases:
  - {batch: 2, heads_q: 4, heads_kv: [4, 2], seqlen: 70, head_dim: 32, dtype: [fp32, bf16], causal: [false, true]}
  - {heads_q: 2, seqlens: [[1, 40, 9]], head_dim: 16, dtype: fp32, causal: true}
"""


@pytest.fixture
def suite(tmp_path):
    f = tmp_path / "tiny.yaml"
    f.write_text(SUITE)
    return f


class SameBatchKV(Backend):
    """The Triton tutorial's batch > 1 bug: every batch reads batch 0's K/V."""

    name = "test_same_batch_kv"
    caps = Capabilities(devices={"cpu"}, lse=True)

    def forward(self, p, case):
        q, k, v = p.leaves
        k0, v0 = k[:1].expand_as(k), v[:1].expand_as(v)
        return attention_ref(q, k0, v0, upcast=False, **case_kwargs(case))


class Crashes(Backend):
    name = "test_crashes"
    caps = Capabilities(devices={"cpu"})

    def forward(self, p, case):
        raise RuntimeError("boom\nsecond line")


class Interrupts(Backend):
    """Finishes one case, then the user hits Ctrl-C."""

    name = "test_interrupts"
    caps = Capabilities(devices={"cpu"})
    calls = 0

    def forward(self, p, case):
        Interrupts.calls += 1
        if Interrupts.calls > 1:
            raise KeyboardInterrupt
        q, k, v = p.leaves
        return attention_ref(q, k, v, upcast=False, **case_kwargs(case))[0], None


class Terminates(Interrupts):
    """Finishes one case, then ``timeout`` (or a scheduler) sends SIGTERM."""

    name = "test_terminates"

    def forward(self, p, case):
        if Interrupts.calls >= 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(p, case)


def test_accuracy_run_end_to_end(cli, suite, tmp_path):
    out = tmp_path / "res"
    res = cli(
        "accuracy",
        "--suite",
        suite,
        "--device",
        "cpu",
        "--out",
        out,
        "--only",
        "naive,sdpa_math,sdpa_flash,sdpa_cudnn",
    )
    assert res.exit_code == 0, res.output
    for line in (
        "Output max diff",
        "Output mean diff",
        "dQ max diff",
        "dK max diff",
        "dV max diff",
        "dQ mean diff",
        "LSE max diff",
    ):
        assert line in res.output
    df = pd.read_parquet(out)
    assert list(df.columns) == COLUMNS
    assert set(df.kind) == {"accuracy"} and df.run_id.nunique() == 1
    ok = df[df.status == "ok"]
    assert set(ok.backend) == {"naive", "sdpa_math", "sdpa_flash"}
    assert set(ok[ok.backend == "naive"].tensor) == {"out", "lse", "dq", "dk", "dv"}
    assert (
        ok.accuracy_ok.all() and (ok.max_abs_err > 0).all() and (ok.baseline_max_abs_err > 0).all()
    )
    uns = df[df.status == "unsupported"]
    assert set(uns.backend) >= {"sdpa_cudnn"}
    assert uns[uns.backend == "sdpa_math"].message.str.contains("varlen").all()
    assert df.torch_version.eq(torch.__version__).all() and df.timestamp.notna().all()


def test_out_defaults_to_attnbench_out(cli, suite, tmp_path, monkeypatch):
    # a wrapper (tools/gpu/lease.sh) sends every run's rows to one folder without editing lines
    out = tmp_path / "from-env"
    monkeypatch.setenv("ATTNBENCH_OUT", str(out))
    res = cli("accuracy", "--suite", suite, "--device", "cpu", "--only", "naive")
    assert res.exit_code == 0, res.output
    assert set(pd.read_parquet(out).backend) == {"naive"}
    monkeypatch.setenv("ATTNBENCH_OUT", str(tmp_path / "res.parquet"))
    (tmp_path / "res.parquet").write_bytes(b"")
    res = cli("accuracy", "--suite", suite, "--device", "cpu", "--only", "naive")
    assert res.exit_code == 2 and "from $ATTNBENCH_OUT" in res.output, res.output


def test_wrong_kernel_fails_and_its_speed_is_withheld(cli, suite, tmp_path, tmp_backend):
    tmp_backend(SameBatchKV())
    out = tmp_path / "res"
    res = cli(
        "accuracy",
        "--suite",
        suite,
        "--device",
        "cpu",
        "--out",
        out,
        "--only",
        "test_same_batch_kv",
    )
    assert res.exit_code == 1
    df = pd.read_parquet(out)
    assert (df[df.tensor == "out"].status == "accuracy_failed").all()
    res = cli(
        "perf",
        "--sweep",
        suite,
        "--device",
        "cpu",
        "--out",
        out,
        "--modes",
        "fwd",
        "--only",
        "test_same_batch_kv,naive",
    )
    assert res.exit_code == 1
    assert "✗ wrong" in res.output
    perf = pd.read_parquet(out).query("kind == 'perf'")
    bad = perf[(perf.backend == "test_same_batch_kv") & ~perf.varlen]
    assert (bad.status == "accuracy_failed").all() and (~bad.accuracy_ok).all()
    assert bad.message.str.match(r"accuracy failed: (out|lse) max err").all()


def test_perf_run_json_and_plots(cli, suite, tmp_path):
    out = tmp_path / "res"
    res = cli(
        "perf",
        "--sweep",
        suite,
        "--device",
        "cpu",
        "--out",
        out,
        "--json",
        "--only",
        "naive,sdpa_flash,sdpa_efficient",
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert rows and all(r["kind"] == "perf" for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["mode"] for r in ok} == {"fwd", "bwd", "fwd_bwd"}
    for r in ok:
        assert r["accuracy_ok"] is True
        assert r["latency_ms_p20"] <= r["latency_ms"] <= r["latency_ms_p80"]
        assert r["tflops"] == pytest.approx(r["flops"] / r["latency_ms"] / 1e9)
    fwd = next(r for r in ok if r["mode"] == "fwd" and r["causal"] is False)
    bwd = next(
        r
        for r in ok
        if r["mode"] == "bwd" and r["case_id"] == fwd["case_id"] and r["backend"] == fwd["backend"]
    )
    assert bwd["flops"] == 2.5 * fwd["flops"]
    assert fwd["flops"] == 4 * fwd["batch"] * fwd["heads_q"] * 70 * 70 * 32
    assert {r["backend"] for r in rows if r["status"] == "unsupported"} == {
        "sdpa_efficient",
        "sdpa_flash",
    }
    # a second run, then plots: the folder still reads as one table
    cli("accuracy", "--suite", suite, "--device", "cpu", "--out", out, "--only", "naive")
    res = cli("plot", out)
    assert res.exit_code == 0, res.output
    pngs = sorted(p.name for p in (out / "_plots").rglob("*.png"))
    assert "accuracy.png" in pngs and not [p for p in pngs if p.startswith("perf")]  # one seqlen
    df = pd.read_parquet(out)
    assert df.run_id.nunique() == 2 and set(df.kind) == {"perf", "accuracy"}


class SlowFirstCall(Backend):
    """Same-dtype torch that 'compiles' for 0.3 s on its first call of each case."""

    name = "test_slow_first_call"
    caps = Capabilities(devices={"cpu"}, lse=True)
    seen: set = set()

    def forward(self, p, case):
        if case.id not in SlowFirstCall.seen:
            SlowFirstCall.seen.add(case.id)
            time.sleep(0.3)
        q, k, v = p.leaves
        return attention_ref(q, k, v, upcast=False, **case_kwargs(case))


def test_first_call_is_recorded_and_never_timed(cli, suite, tmp_path, tmp_backend):
    assert "first_call_s" in COLUMNS
    SlowFirstCall.seen = set()
    tmp_backend(SlowFirstCall())
    out = tmp_path / "res"
    args = ("--device", "cpu", "--out", out, "--modes", "fwd,bwd")
    res = cli("perf", "--sweep", suite, *args, "--only", "test_slow_first_call,naive")
    assert res.exit_code == 0, res.output
    assert "in first calls" in res.output
    # per backend, largest first: the slow one's 8 first calls of 0.3 s come to at least 2.4 s
    split = re.search(r"JIT: test_slow_first_call (\d+\.\d)", " ".join(res.output.split()))
    assert split and float(split.group(1)) >= 2.4, res.output
    df = pd.read_parquet(out)
    ok = df[df.status == "ok"]
    assert ok.first_call_s.notna().all() and (ok.first_call_s > 0).all()
    slow = ok[ok.backend == "test_slow_first_call"]  # 8 dense cases (varlen unsupported) x 2
    assert len(slow) == 2 * 8 and (slow.first_call_s >= 0.3).all()
    assert (slow.latency_ms < 300).all()  # the compile stayed out of the timed region


def test_plot_seqlen_lines(cli, tmp_path):
    out = tmp_path / "res"
    res = cli(
        "perf",
        "--sweep",
        "seqlen",
        "--device",
        "cpu",
        "--out",
        out,
        "--only",
        "sdpa_flash",
        "--modes",
        "fwd",
    )
    assert res.exit_code == 0, res.output
    assert "no GPU" in res.output
    res = cli("plot", out, "--out", tmp_path / "png")
    assert res.exit_code == 0
    (png,) = (tmp_path / "png").glob("*-perf-seqlen-*/perf_attention_fwd_causal_d64_bf16_h4.png")
    assert png.stat().st_size > 10_000


def test_plot_empty_folder(cli, tmp_path):
    res = cli("plot", tmp_path)
    assert res.exit_code == 2 and "no results" in res.output


def test_failing_backend_is_a_row_and_the_run_goes_on(cli, suite, tmp_path, tmp_backend):
    tmp_backend(Crashes())
    out = tmp_path / "res"
    res = cli(
        "accuracy",
        "--suite",
        suite,
        "--device",
        "cpu",
        "--out",
        out,
        "--only",
        "test_crashes,naive",
    )
    assert res.exit_code == 1
    df = pd.read_parquet(out)
    crash = df[df.backend == "test_crashes"]
    assert list(crash.status) == ["error"] * 8 + ["unsupported"]  # the last case is varlen
    assert (crash[crash.status == "error"].message == "RuntimeError: boom").all()
    assert (df[df.backend == "naive"].status == "ok").all()


def test_interrupted_run_keeps_finished_rows(cli, suite, tmp_path, tmp_backend):
    Interrupts.calls = 0
    tmp_backend(Interrupts())
    out = tmp_path / "res"
    res = cli(
        "accuracy",
        "--suite",
        suite,
        "--device",
        "cpu",
        "--out",
        out,
        "--only",
        "naive,test_interrupts",
    )
    assert res.exit_code == 130 and "interrupted" in res.output
    df = pd.read_parquet(out)
    # case 1: naive (5 tensors) + test_interrupts (out, dq, dk, dv); case 2: naive only
    assert len(df) == 5 + 4 + 5
    assert df.case_id.nunique() == 2
    assert not list(out.glob(".*.tmp"))


def test_sigterm_keeps_finished_rows_and_says_where_the_time_went(
    cli, suite, tmp_path, tmp_backend
):
    Interrupts.calls = 0
    tmp_backend(Terminates())
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "res"
    res = cli(
        "accuracy", "--suite", suite, "--device", "cpu", "--out", out,
        "--only", "naive,test_terminates",
    )  # fmt: skip
    assert res.exit_code == 143, res.output
    assert "terminated (SIGTERM): 14 finished rows kept" in res.output
    assert "(2 cases, wall " in res.output
    assert len(pd.read_parquet(out)) == 5 + 4 + 5
    # the handler is the run's alone: afterwards SIGTERM is what it was before
    assert signal.getsignal(signal.SIGTERM) is before


def test_list_and_env(cli):
    res = cli("list", "--device", "cpu")
    assert res.exit_code == 0
    for name in ("naive", "sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn"):
        assert name in res.output
    assert "runs on cuda only" in res.output
    res = cli("env")
    assert res.exit_code == 0
    for key in (
        "gpu_name",
        "torch_version",
        "triton_version",
        "flash_attn_version",
        "attnbench_version",
        "git_sha",
    ):
        assert key in res.output


# ---- the run's settings ------------------------------------------------------------------------
ONE_CASE = """
name: one
warmup_ms: 1
rep_ms: 5
modes: [fwd]
cases:
  - {batch: 1, heads_q: 2, seqlen: 32, head_dim: 16, dtype: fp32}
"""


class SeesSettings(Backend):
    """Records the settings active while it runs."""

    name = "test_sees_settings"
    caps = Capabilities(devices={"cpu"}, lse=True)
    seen: list = []

    def forward(self, p, case):
        from attnbench.settings import current

        SeesSettings.seen.append(current())
        q, k, v = p.leaves
        return attention_ref(q, k, v, upcast=False, **case_kwargs(case))


SETTINGS_RUNS = {
    "default-null": ((), {}, None),
    "flex-dynamic-from-env": ((), {"ATTNBENCH_FLEX_DYNAMIC": "1"}, {"flex_dynamic": True}),
    "retune-flag": (("--retune",), {}, {"retune": True}),
}


@pytest.mark.parametrize(
    "flags, env, expected", list(SETTINGS_RUNS.values()), ids=list(SETTINGS_RUNS)
)
def test_rows_carry_the_runs_settings(
    cli, tmp_path, tmp_backend, monkeypatch, flags, env, expected
):
    """Every row records the run's non-default settings (null when all are default); the
    backends run under them; afterwards the process is as before (no ATTNBENCH_RETUNE left in
    the environment, no switch pinned)."""
    from attnbench.kernels import switches
    from attnbench.settings import Settings, current

    for name in (Settings.env_name(f) for f in Settings.__dataclass_fields__):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    SeesSettings.seen = []
    tmp_backend(SeesSettings())
    f = tmp_path / "one.yaml"
    f.write_text(ONE_CASE)
    out = tmp_path / "res"
    only = ("--only", "test_sees_settings,naive")
    res = cli("perf", "--sweep", f, "--device", "cpu", "--out", out, "--json", *only, *flags)
    assert res.exit_code == 0, res.output
    column = json.dumps(expected, sort_keys=True) if expected else None
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2 and [r["settings"] for r in rows] == [column, column]
    stored = pd.read_parquet(out).settings
    assert [v if isinstance(v, str) else None for v in stored] == [column, column]
    assert SeesSettings.seen and {s.column() for s in SeesSettings.seen} == {column}
    for k in env:
        monkeypatch.delenv(k)
    assert "ATTNBENCH_RETUNE" not in os.environ and not switches.on("retune")
    assert current().column() is None
