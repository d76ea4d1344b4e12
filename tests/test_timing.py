"""The one timer (rep planning, argument checks, the CPU path), the Triton kernels' tuning cache
(:mod:`attnbench.kernels._triton.tuning`: kept choices, the registered timer) and the
``kernel_config`` column."""

import json
import os

import pandas as pd
import pytest
import torch

from attnbench.run import timing

SUITE = """
name: tiny_cfg
rep_ms: 5
cases:
  - {batch: 1, heads_q: 2, seqlen: 48, head_dim: 16, dtype: fp32, causal: [false, true]}
"""


@pytest.mark.parametrize(
    "est_ms, n_rep",
    [(0.02, 2000), (0.5, 200), (2.0, 100), (20.0, 100), (50.0, 40), (300.0, 10)],
    ids=["20us-capped", "0.5ms", "2ms-min", "20ms-min", "50ms-2s", "300ms-floor"],
)
def test_plan_reps_fills_rep_time_with_a_floor_and_a_cap(est_ms, n_rep):
    n_warm, n = timing.plan_reps(est_ms, warmup_ms=25, rep_ms=100)
    assert n == n_rep
    assert n_warm >= 1 and n_warm <= timing.MAX_REPS


def test_plan_reps_counts_kernel_time_only():
    # do_bench sized reps from fn + L2 flush; here a 20 us kernel gets rep_ms / 20 us reps
    assert timing.plan_reps(0.02, 25, 10, min_reps=1)[1] == 500
    assert timing.plan_reps(0.02, 25, 100)[1] == timing.MAX_REPS


@pytest.mark.parametrize(
    "kw",
    [dict(rep_ms=0), dict(warmup_ms=-1), dict(min_reps=0), dict(min_reps=10, max_reps=5)],
    ids=["rep0", "warmup-neg", "min0", "max<min"],
)
def test_plan_reps_rejects_bad_arguments(kw):
    args = dict(est_ms=1.0, warmup_ms=25, rep_ms=100) | kw
    with pytest.raises(ValueError, match="bad timing arguments"):
        timing.plan_reps(**args)


def test_spin_covers_the_host_and_is_capped():
    assert timing.spin_ms(0.1) > 0.1
    assert timing.spin_ms(0.0) > 0
    assert timing.spin_ms(1e3) == timing.SPIN_CAP_MS


@pytest.mark.parametrize(
    "host_ms, gpu_ms, want",
    [(1.0, 0.0, 1.52), (1.0, 0.5, 1.02), (1.0, 1.52, 0.0), (2.0, 10.0, 0.0), (1e3, 1.0, 4.0)],
    ids=["lead", "short-kernel", "covered", "long-kernel", "capped"],
)
def test_spin_less_the_kernel_time(host_ms, gpu_ms, want):
    # a rep spins only for the host time its own kernel does not cover: a kernel slower than
    # its launches keeps the host ahead after the lead spin, and spins not at all
    assert timing.spin_ms(host_ms, gpu_ms) == pytest.approx(want)


def test_cpu_bench_counts_reps_and_resets_grads():
    x = torch.randn(64, 64, requires_grad=True)
    calls = []

    def fn():
        assert x.grad is None  # reset before every call
        calls.append(1)
        (x @ x).sum().backward()

    t = timing.bench(fn, [x], torch.device("cpu"), rep_ms=20)
    assert t.reps >= 1
    assert len(calls) > t.reps  # warm-up + the timed blocks (several calls each)
    assert t.p20_ms <= t.median_ms <= t.p80_ms and t.median_ms > 0
    assert x.grad is None and t.peak_mem_mb is None


# ---- Triton kernels' tuning cache ------------------------------------------------------------------
@pytest.fixture
def tuner(tmp_path, monkeypatch):
    import triton
    import triton.language as tl

    from attnbench.kernels._triton import tuning

    monkeypatch.setenv(tuning.ENV_FILE, str(tmp_path / "t" / "tuning.json"))
    monkeypatch.delenv(tuning.ENV_RETUNE, raising=False)

    @triton.jit
    def k(X, N: tl.constexpr, BLOCK: tl.constexpr):
        pass

    configs = [
        triton.Config({"BLOCK": b}, num_warps=w, num_stages=2) for b, w in [(16, 4), (32, 8)]
    ]

    def make():
        return tuning.autotune("test_k", configs, ["N"], prune=lambda c, n, **kw: c)(k)

    return tuning, make, configs


def test_tuning_cache_round_trip(tuner):
    tuning, make, configs = tuner
    key = (64, "torch.float16")
    tuning.store(tuning.env_key(), "test_k", {key: configs[1]})
    data = json.loads(tuning.cache_path().read_text())
    (env,) = data
    assert env.startswith("cpu | torch ") and "triton 3." in env
    assert data[env]["test_k"] == {'[64, "torch.float16"]': tuning.config_dict(configs[1])}
    back = tuning.stored_choices(tuning.env_key(), "test_k", configs)
    assert back == {key: configs[1]}
    # another GPU or version, or a config that is no longer a candidate: not reused
    assert tuning.stored_choices("H200 | torch 9 | triton 9", "test_k", configs) == {}
    assert tuning.stored_choices(tuning.env_key(), "test_k", configs[:1]) == {}
    # merging keeps the other entries
    tuning.store(tuning.env_key(), "test_k", {(128, "torch.float16"): configs[0]})
    assert len(tuning.stored_choices(tuning.env_key(), "test_k", configs)) == 2
    assert tuning.describe(configs[1]) == "32 w8 s2"


def test_autotuner_launch_reuses_the_stored_choice(tuner, monkeypatch):
    """A stored choice is taken at the first launch without timing anything (on the CPU a
    timing would fail: no GPU), and the kernel runs with that config."""
    tuning, make, configs = tuner
    tuning.store(tuning.env_key(), "test_k", {(64, "torch.float32"): configs[1]})
    at = make()
    at[(1,)](torch.zeros(4), N=64)
    assert at.best_config is configs[1]
    monkeypatch.setenv(tuning.ENV_RETUNE, "1")  # --retune: the stored choice is ignored
    at = make()
    with pytest.raises(Exception):  # noqa: B017  (it tries to time on a GPU that is not here)
        at[(1,)](torch.zeros(4), N=64)
    assert not at.cache


@pytest.mark.parametrize("n_timed", [1, 2], ids=["lone-config-not-kept", "contest-kept"])
def test_only_contested_choices_are_kept(tuner, monkeypatch, n_timed):
    """A choice is stored only when at least two candidates were timed for it."""
    from triton.runtime.autotuner import Autotuner

    tuning, make, configs = tuner

    def fake_run(self, *args, **kwargs):  # what Triton's tuning leaves behind, without a GPU
        self.configs_timings = {c: float(i) for i, c in enumerate(configs[:n_timed])}
        self.cache[(64, "torch.float32")] = configs[0]

    monkeypatch.setattr(Autotuner, "run", fake_run)
    make().run(torch.zeros(4), N=64)
    stored = tuning.stored_choices(tuning.env_key(), "test_k", configs)
    assert stored == ({(64, "torch.float32"): configs[0]} if n_timed > 1 else {})


def test_precompile_compiles_every_candidate_in_parallel_threads():
    """Each candidate is submitted as a warmup (no launch) under Triton's AsyncCompileMode, in
    parallel; one that fails to submit is skipped; all are finished when it returns."""
    import threading

    import triton
    from triton.runtime._async_compile import active_mode

    from attnbench.kernels._triton import tuning

    barrier = threading.Barrier(3, timeout=30)  # all three compiles must be in flight at once
    lock, now, running = threading.Lock(), [0], []

    def overlap(b):
        with lock:
            now[0] += 1
            running.append(now[0])
        barrier.wait()  # one by one, this never fills: BrokenBarrierError, the compile fails
        with lock:
            now[0] -= 1
        return b

    class FakeKernel:  # stands for a JITFunction: run(warmup=True) submits a compile
        def __init__(self):
            self.warmups, self.compiled = [], []

        def run(self, *args, **kw):
            mode = active_mode.get()
            assert mode is not None and kw["warmup"] is True and kw["grid"] == (1,)
            if kw["BLOCK"] == 64:
                raise RuntimeError("bad candidate")
            self.warmups.append((args, kw["BLOCK"], kw["num_warps"]))
            compile_fn = lambda b=kw["BLOCK"]: overlap(b)  # noqa: E731
            return mode.submit(("k", kw["BLOCK"]), compile_fn, self.compiled.append)

    configs = [triton.Config({"BLOCK": b}, num_warps=4) for b in (16, 32, 64, 128)]
    fn, x = FakeKernel(), torch.zeros(4)
    n = tuning.precompile(fn, [x], {"grid": (1,), "warmup": False, "N": 8}, configs, workers=3)
    assert n == 3 and sorted(fn.compiled) == [16, 32, 128]  # all finished, 64 skipped
    assert [w[1:] for w in fn.warmups] == [(16, 4), (32, 4), (128, 4)] and fn.warmups[0][0] == (x,)
    assert max(running) == 3, running  # the three compiles ran side by side, not one by one
    assert active_mode.get() is None


@pytest.mark.parametrize("during", ["submitting", "waiting"])
def test_precompile_stops_queued_compiles_when_the_run_is_stopped(during):
    """SIGTERM (the run's handler raises) while a table is compiling: the compiles not yet
    started never start, so the run's summary comes within one compile, not the whole table."""
    import signal
    import threading
    import time

    import triton
    from triton.runtime._async_compile import active_mode

    from attnbench.kernels._triton import tuning

    class Stop(BaseException):
        pass

    started = []

    class FakeKernel:
        def run(self, *args, **kw):
            if during == "submitting" and kw["BLOCK"] == 12:
                raise Stop  # the signal comes as the last candidate is submitted
            compile_fn = lambda b=kw["BLOCK"]: started.append(b) or time.sleep(0.4)  # noqa: E731
            return active_mode.get().submit(("k", kw["BLOCK"]), compile_fn, lambda k: None)

    def on_signal(signum, frame):
        raise Stop

    configs = [triton.Config({"BLOCK": b}) for b in range(1, 13)]  # 12 x 0.4 s in 2 threads
    previous = signal.signal(signal.SIGUSR1, on_signal)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    if during == "waiting":
        timer.start()
    try:
        with pytest.raises(Stop):
            tuning.precompile(FakeKernel(), [], {"grid": (1,)}, configs, workers=2)
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    time.sleep(0.5)
    assert len(started) <= 3, started  # the queued ones were dropped (3: one more in the race)
    assert active_mode.get() is None  # the next tuning can compile again


@pytest.mark.parametrize(
    "n_configs,warmup,env,want",
    [
        (2, False, None, True),
        (1, False, None, False),
        (2, True, None, False),
        (2, False, "0", False),
    ],
    ids=["tuning-launch", "lone-config", "warmup-call", "turned-off"],
)
def test_autotuner_precompiles_before_tuning(tuner, monkeypatch, n_configs, warmup, env, want):
    tuning, _, configs = tuner
    calls = []
    from attnbench.kernels._triton import configs as shared_configs

    monkeypatch.setattr(tuning.torch.cuda, "is_available", lambda: True)  # as on a GPU
    monkeypatch.setattr(shared_configs, "INTERPRET", False)  # the suite runs Triton interpreted
    if env is None:
        monkeypatch.delenv(tuning.ENV_PRECOMPILE, raising=False)
    else:
        monkeypatch.setenv(tuning.ENV_PRECOMPILE, env)
    monkeypatch.setattr(tuning, "precompile", lambda fn, a, kw, c: calls.append((a, c)))
    at = tuning.autotune("test_k", configs[:n_configs], ["N"], prune=lambda c, n, **kw: c)(
        _tuner_kernel(tuning)
    )
    x = torch.zeros(4)
    at.nargs = {"X": x}
    got = at.prune_configs({"grid": (1,), "warmup": warmup, "N": 64})
    assert got == configs[:n_configs]
    assert calls == ([([x], configs)] if want else [])


def test_autotuner_forgets_lone_choices_when_tuning_is_turned_on(tuner, monkeypatch):
    """The GPU tests turn tuning off (conftest) and one test turns it on: the pruner reads the
    switch at each new key, and choices made while it was off (the first config alone) are not
    kept in memory once it is on: that test tunes and stores a real choice."""
    tuning, _, configs = tuner
    from attnbench.kernels._triton import configs as shared_configs

    env = "ATTNBENCH_TEST_TUNE"
    prune = shared_configs.make_pruner(
        "fwd", lambda c, d, k: 0, lambda c, d, k, fp32: True, "X", env
    )
    at = tuning.autotune("test_k", configs, ["N"], prune=prune)(_tuner_kernel(tuning))
    assert at.tune_env == env
    timed = []

    def fake_bench(kernel_call, quantiles):  # the second candidate is the faster one
        timed.append(kernel_call)
        return [3.0 - len(timed)] * 3

    at.do_bench = fake_bench
    monkeypatch.setenv(env, "0")
    at[(1,)](torch.zeros(4), N=64)
    assert at.best_config is configs[0] and len(timed) == 1  # the lone first config
    assert tuning.stored_choices(tuning.env_key(), "test_k", configs) == {}
    monkeypatch.setenv(env, "1")
    timed.clear()
    at[(1,)](torch.zeros(4), N=64)
    assert len(timed) == 2 and at.best_config is configs[1]  # tuned now, not the kept lone choice
    key = (64, "torch.float32")
    assert tuning.stored_choices(tuning.env_key(), "test_k", configs) == {key: configs[1]}


def _tuner_kernel(tuning):
    import triton
    import triton.language as tl

    @triton.jit
    def k(X, N: tl.constexpr, BLOCK: tl.constexpr):
        pass

    return k


def test_tuning_cache_survives_a_corrupt_file(tuner):
    tuning, _, configs = tuner
    tuning.cache_path().parent.mkdir(parents=True)
    tuning.cache_path().write_text("{not json")
    assert tuning.stored_choices(tuning.env_key(), "test_k", configs) == {}
    tuning.store(tuning.env_key(), "test_k", {(1,): configs[0]})
    assert tuning.stored_choices(tuning.env_key(), "test_k", configs) == {(1,): configs[0]}


def test_autotuning_times_with_the_registered_timer(tuner, monkeypatch):
    """The kernels never import the harness: the harness registers its timer
    (``tuning.set_bench``) and the autotuner times every candidate with it; with none
    registered, Triton's ``do_bench``."""
    import triton.testing

    tuning, make, configs = tuner
    monkeypatch.setattr(tuning, "_bench_fn", None)
    seen = []
    monkeypatch.setattr(
        triton.testing, "do_bench", lambda fn, quantiles=None: seen.append(quantiles) or 1.0
    )
    assert tuning.bench(lambda: None, (0.5,)) == 1.0 and seen == [(0.5,)]

    def mine(kernel_call, quantiles):  # the second candidate is the faster one
        seen.append(kernel_call)
        return [3.0 - len(seen)] * 3

    assert tuning.set_bench(mine) is None
    seen.clear()
    at = make()
    at[(1,)](torch.zeros(4), N=64)
    assert len(seen) == 2 and at.best_config is configs[1]
    assert tuning.set_bench(None) is mine


def test_host_side_choice_is_timed_once_and_kept(tuner, monkeypatch):
    """``tuning.choose``: a config picked on the host (the decode kernel's splits) is timed with
    the registered timer once per key, kept in the tuning file and found again; with the
    kernel's tuning switch off, the first candidate; ``retune`` times again."""
    tuning, _, configs = tuner
    configs = [*configs, triton_config(64, 4)]
    launched = []

    def timer(kernel_call, quantiles):
        kernel_call()
        return {16: 2.0, 32: 1.0, 64: 3.0}[launched[-1]]

    def launch(cfg):
        if cfg.kwargs["BLOCK"] == 64:
            raise RuntimeError("out of resources")
        launched.append(cfg.kwargs["BLOCK"])

    monkeypatch.setattr(tuning, "_bench_fn", timer)
    key = (128, "torch.float16")
    assert tuning.choose("test_host", key, configs, launch) is configs[1]
    assert launched == [16, 32]
    assert tuning.stored_choices(tuning.env_key(), "test_host", configs) == {key: configs[1]}
    assert tuning.choose("test_host", key, configs, launch) is configs[1] and len(launched) == 2
    monkeypatch.setenv("ATTNBENCH_TEST_TUNE", "0")
    assert tuning.choose("test_host", (1,), configs, launch, "ATTNBENCH_TEST_TUNE") is configs[0]
    monkeypatch.setenv(tuning.ENV_RETUNE, "1")
    assert tuning.choose("test_host", key, configs, launch) is configs[1] and len(launched) == 4


def triton_config(block: int, warps: int):
    import triton

    return triton.Config({"BLOCK": block}, num_warps=warps, num_stages=2)


def test_triton_backends_register_the_harness_timer(monkeypatch):
    from attnbench.backends import decode_triton, piecewise_triton, triton_common, triton_fa2
    from attnbench.kernels._triton import tuning
    from attnbench.run.timing import autotune_bench

    for backend in (triton_fa2, piecewise_triton, decode_triton):
        monkeypatch.setattr(triton_common, "_loaded", {})
        monkeypatch.setattr(tuning, "_bench_fn", None)
        kernels = backend._kernels()
        assert tuning._bench_fn is autotune_bench and backend._kernels() is kernels


def kernel_imports(root):
    """(file, its package under ``root``, each module it imports: ``..x`` for
    ``from .. import x``)."""
    import re

    stmt = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\s+\(?([\w, ]+)|import\s+([\w.]+))", re.M)
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        pkg = parts[0] if len(parts) > 1 else ""
        for frm, names, mod in stmt.findall(path.read_text()):
            if mod:
                yield path, pkg, mod
            elif frm.strip(".") or not frm:
                yield path, pkg, frm
            else:  # from .. import a, b
                for n in names.split(","):
                    yield path, pkg, frm + n.split(" as ")[0].strip()


def test_kernels_never_import_the_harness_nor_each_other():
    """``attnbench.kernels`` imports nothing of the harness (run, problems, results, views, cli,
    backends, settings), and the Triton kernel packages share code through ``_triton`` only."""
    import re
    from pathlib import Path

    import attnbench.kernels

    harness = re.compile(r"^(\.\.\.|attnbench\.(run|problems|results|views|cli|backends|settings))")
    sibling = re.compile(r"^(?:\.\.|attnbench\.kernels\.)(\w+)")
    own = {"triton_fa2", "piecewise", "cuda"}  # decode: another author's, not checked here
    root = Path(attnbench.kernels.__file__).parent
    for path, pkg, name in kernel_imports(root):
        assert not harness.match(name), f"{path}: imports {name}"
        other = sibling.match(name)
        if pkg in own and other:
            assert other.group(1) in ("_triton", "switches", pkg), f"{path}: imports {name}"


# ---- kernel_config column ----------------------------------------------------------------------
def test_kernel_config_column(cli, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(SUITE)
    out = tmp_path / "r"
    only = "naive,sdpa_math,sdpa_flash,triton_fa2"
    res = cli("perf", "--sweep", f, "--device", "cpu", "--out", out, "--only", only)
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out).query("status == 'ok'")
    cfg = df.groupby(["backend", "mode"]).kernel_config.first()
    assert cfg["sdpa_flash", "fwd"] == "flash_attention_for_cpu"
    assert cfg["sdpa_math", "fwd"] == "math (aten ops)"
    assert pd.isna(cfg["naive", "fwd"])
    # interpreter: the one config of each kernel, in the form "BLOCK_MxBLOCK_N wW sS"
    assert cfg["triton_fa2", "fwd"] == "fwd 32x16 w4 s1"
    assert cfg["triton_fa2", "bwd"] == "bwd_dkdv 16x32 w4 s1; bwd_dq 32x16 w4 s1"
    assert cfg["triton_fa2", "fwd_bwd"].count(";") == 2
    assert (df.reps >= 1).all()


# ---- --repeat, ceiling and telemetry columns on the CPU ---------------------------------------
def test_repeat_spread_columns_and_summary(cli, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(SUITE)
    out = tmp_path / "r"
    args = ["perf", "--sweep", f, "--device", "cpu", "--out", out, "--only", "sdpa_math"]
    res = cli(*args, "--modes", "fwd", "--repeat", "3")
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert len(df) == 2 and (df.repeats == 3).all()  # one row per case, not one per timing
    assert (df.latency_ms_min <= df.latency_ms).all() and (df.latency_ms <= df.latency_ms_max).all()
    spread = (df.latency_ms_max - df.latency_ms_min) / df.latency_ms
    assert spread.to_numpy() == pytest.approx(df.repeat_spread.to_numpy())
    assert "repeatability (3 timings per case):" in res.output
    # ceiling and telemetry: null on the CPU, with the reason
    assert df.matmul_tflops.isna().all() and df.pct_of_peak.isna().all()
    assert df.sm_clock_mhz_start.isna().all() and df.gpu_power_w_end.isna().all()
    assert (df.env_note == "cpu run: no GPU ceiling or telemetry").all()
    # a single timing has no spread to report
    cli(*args, "--modes", "fwd")
    one = pd.read_parquet(out).query("repeats == 1")
    assert len(one) == 2 and one.repeat_spread.isna().all()
    assert cli(*args, "--repeat", "0").exit_code == 2


def test_bench_repeat_keeps_every_median():
    x = torch.randn(32, 32)
    t = timing.bench(lambda: x @ x, [], torch.device("cpu"), rep_ms=5, repeat=3)
    assert len(t.repeat_ms) == 3 and min(t.repeat_ms) <= t.median_ms <= max(t.repeat_ms)
    cols = timing.timing_columns(t, flops=2 * 32**3)
    assert cols["repeats"] == 3 and cols["latency_ms_max"] == max(t.repeat_ms)
    with pytest.raises(ValueError, match="repeat=0"):
        timing.bench(lambda: x @ x, [], torch.device("cpu"), repeat=0)


def test_pct_of_peak():
    from attnbench.run.ceiling import pct_of_peak

    assert pct_of_peak(673.0, 790.0) == pytest.approx(85.19, abs=0.01)
    assert pct_of_peak(1.0, None) is None and pct_of_peak(None, 790.0) is None
