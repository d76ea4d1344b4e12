"""The one timer of attnbench: every timing (perf rows, Triton autotuning, the matmul ceiling)
goes through :func:`bench` or :func:`gpu_times`.

GPU: the loop of ``triton.testing.do_bench`` (triton 3.6: L2 flushed with triton's own
``clear_cache`` before every rep, one pair of CUDA events per rep, median/p20/p80), with two
changes that make short kernels repeatable:

- a spin (``torch.cuda._sleep``) is enqueued after the L2 flush and before each rep's start event,
  sized from the measured host enqueue time of ``fn``: while the GPU spins, Python enqueues the
  whole of ``fn``, so the GPU never waits on the host between the events (do_bench times the
  host's launch latency along with a 20 us kernel). One lead spin before the reps puts the host
  ahead; each rep then spins only for what its own GPU time does not cover, so a kernel slower
  than its launches keeps the host ahead and spins not at all (a 10 ms kernel with 2 ms of
  Python launches no longer idles 3 ms per rep);
- the rep count comes from the time of ``fn`` alone (do_bench's estimate includes the flush) and
  is at least ``min_reps``.

CPU: ``torch.utils.benchmark`` (blocked autorange), the same quantiles.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..results.units import gbps, tflops  # noqa: F401  (re-exported)

QUANTILES = (0.5, 0.2, 0.8)
MIN_REPS = 100  # reps per timing at least, however long rep_ms says
MAX_REPS = 2000  # and at most (bounds the wall time of a 10 us kernel)
MAX_TIMED_MS = 2000.0  # past MIN_REPS, a slow fn (> 20 ms) gets reps for this much GPU time
LONG_MIN_REPS = 10  # but never fewer (a 300 ms FlagAttention backward at S 32k: 10 reps)
SPIN_CAP_MS = 5.0  # longest spin per rep (a fn that synchronises gains nothing from more)


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    peak_mem_mb: float | None
    wall_s: float  # wall time spent in the timing call (warm-up, reps, flushes)
    reps: int | None = None  # timed reps
    repeat_ms: list[float] | None = None  # medians of the repeated timings (--repeat N > 1)


def timing_columns(t: Timing, flops: float, devices: int = 1, nbytes: float | None = None) -> dict:
    """The result columns of one timing: median/p20/p80 ms, FLOPs, TFLOP/s per device (the
    work is ``flops`` split over ``devices``), bytes and GB/s per device, peak memory, wall
    time, rep count."""
    return dict(
        bytes=nbytes,
        gbps=gbps(None if nbytes is None else nbytes / devices, t.median_ms),
        latency_ms=t.median_ms,
        latency_ms_p20=t.p20_ms,
        latency_ms_p80=t.p80_ms,
        flops=flops,
        tflops=tflops(flops / devices, t.median_ms),
        peak_mem_mb=t.peak_mem_mb,
        wall_s=t.wall_s,
        reps=t.reps,
        **repeat_columns(t.repeat_ms),
    )


def repeat_columns(medians: list[float] | None) -> dict:
    """``repeats`` (timings of the case), the min and max of their medians and the spread
    (max - min) / median; spread columns are null for a single timing."""
    if not medians:
        return dict(repeats=1)
    mid = quantiles(medians, (0.5,))[0]
    lo, hi = min(medians), max(medians)
    return dict(
        repeats=len(medians), latency_ms_min=lo, latency_ms_max=hi, repeat_spread=(hi - lo) / mid
    )


def mode_fn(forward, dout: torch.Tensor, mode: str):
    """The callable timed for ``mode``; ``forward()`` returns ``(out, lse)``. bwd runs the forward
    once here, outside the timed region, and times only ``out.backward`` (the graph is retained;
    grads are reset every rep)."""
    if mode == "fwd":
        return forward
    if mode == "bwd":
        out, _ = forward()
        return lambda: out.backward(dout, retain_graph=True)
    if mode == "fwd_bwd":
        return lambda: forward()[0].backward(dout)
    raise ValueError(f"unknown mode {mode!r}")


def first_call_s(fn, leaves, device: torch.device) -> float:
    """Wall seconds of one call of ``fn`` (synchronised), outside any timed region: a backend's
    first call on a case, so compiles, autotuning, JIT and extension builds show up here."""
    reset_grads(leaves)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    reset_grads(leaves)
    return elapsed


def reset_grads(leaves):
    for t in leaves:
        t.grad = None


def peak_memory_mb(fn, leaves, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    reset_grads(leaves)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def quantiles(times_ms, qs=QUANTILES) -> list[float]:
    t = torch.tensor(list(times_ms), dtype=torch.float64)
    return torch.quantile(t, torch.tensor(qs, dtype=torch.float64)).tolist()


def plan_reps(
    est_ms: float,
    warmup_ms: float,
    rep_ms: float,
    min_reps: int = MIN_REPS,
    max_reps: int = MAX_REPS,
) -> tuple[int, int]:
    """(warm-up calls, timed reps) for a fn whose own GPU time is ``est_ms``: enough reps to
    fill ``rep_ms`` of kernel time, at least ``min_reps``, at most ``max_reps``; a fn so slow
    that ``min_reps`` would take more than ``MAX_TIMED_MS`` gets that much kernel time in reps,
    at least ``LONG_MIN_REPS`` (its launch jitter is far below its run-to-run spread)."""
    if warmup_ms < 0 or rep_ms <= 0 or min_reps < 1 or max_reps < min_reps:
        raise ValueError(
            f"bad timing arguments: warmup_ms={warmup_ms}, rep_ms={rep_ms}, "
            f"min_reps={min_reps}, max_reps={max_reps}"
        )
    est = max(est_ms, 1e-4)
    n_warmup = max(1, min(max_reps, math.ceil(warmup_ms / est)))
    n_rep = max(min_reps, min(max_reps, math.ceil(rep_ms / est)))
    if n_rep * est > MAX_TIMED_MS:
        n_rep = min(n_rep, max(LONG_MIN_REPS, math.ceil(MAX_TIMED_MS / est)))
    return n_warmup, n_rep


def spin_ms(host_ms: float, gpu_ms: float = 0.0) -> float:
    """Spin before each rep's start event: 1.5 x the host's enqueue time of fn plus 20 us, less
    the GPU time ``gpu_ms`` of fn itself (while the GPU runs rep i, the host enqueues rep i+1;
    once ahead, it stays ahead when fn's GPU time covers its launches), capped at
    ``SPIN_CAP_MS``. ``gpu_ms=0``: the lead spin before the first rep."""
    return max(0.0, min(SPIN_CAP_MS, 1.5 * max(host_ms, 0.0) + 0.02) - max(gpu_ms, 0.0))


_CYCLES_PER_MS: dict[int, float] = {}


def _cycles_per_ms(device: torch.device) -> float:
    """GPU clock cycles per ms of ``torch.cuda._sleep`` (measured once per device)."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _CYCLES_PER_MS:
        cycles = 2_000_000
        torch.cuda._sleep(cycles)  # warm-up
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        torch.cuda._sleep(cycles)
        e.record()
        torch.cuda.synchronize(device)
        _CYCLES_PER_MS[idx] = cycles / max(s.elapsed_time(e), 1e-3)
    return _CYCLES_PER_MS[idx]


def l2_flush():
    """A callable that flushes the L2 cache the way do_bench does (triton's buffer and
    ``clear_cache``)."""
    from triton import runtime

    drv = runtime.driver.active
    cache = drv.get_empty_cache_for_benchmark()
    return lambda: drv.clear_cache(cache)


def gpu_times(
    fn,
    leaves=(),
    warmup_ms: float = 25,
    rep_ms: float = 100,
    min_reps: int = MIN_REPS,
    max_reps: int = MAX_REPS,
    device: torch.device | None = None,
) -> list[float]:
    """Per-rep GPU times (ms) of ``fn`` on the current CUDA device; see the module docstring."""
    device = device or torch.device("cuda", torch.cuda.current_device())
    plan_reps(1.0, warmup_ms, rep_ms, min_reps, max_reps)  # argument check before any work
    reset_grads(leaves)
    fn()
    torch.cuda.synchronize(device)
    flush = l2_flush()
    cycles = _cycles_per_ms(device)

    # host enqueue time of fn, measured while the GPU is kept busy (launches never wait)
    torch.cuda._sleep(int(cycles * 2 * SPIN_CAP_MS))
    t0 = time.perf_counter()
    for _ in range(3):
        reset_grads(leaves)
        fn()
    host_ms = (time.perf_counter() - t0) * 1e3 / 3
    lead = int(cycles * spin_ms(host_ms))
    torch.cuda.synchronize(device)

    def reps(n: int, spin: int) -> list[float]:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        torch.cuda._sleep(lead)  # the host gets ahead of the GPU here
        for i in range(n):
            reset_grads(leaves)
            flush()
            if spin:
                torch.cuda._sleep(spin)
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]

    est_ms = quantiles(reps(5, lead), (0.5,))[0]  # every rep spins as if the first
    n_warmup, n_rep = plan_reps(est_ms, warmup_ms, rep_ms, min_reps, max_reps)
    for _ in range(n_warmup):
        reset_grads(leaves)
        fn()
    torch.cuda.synchronize(device)
    return reps(n_rep, int(cycles * spin_ms(host_ms, est_ms)))


def timed_prepare(backend, inp, case, device: torch.device):
    """``backend.prepare(inp, case)`` (untimed by the timer: packing, block tables, a library's
    plan) and its wall ms, the row's ``plan_ms``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    sync(device)
    t0 = time.perf_counter()
    p = backend.prepare(inp, case)
    sync(device)
    return p, (time.perf_counter() - t0) * 1e3


def as_graph(fn, device: torch.device, mode: str, wanted: bool):
    """``(fn, note)``: with ``wanted`` (``--cuda-graph``), on CUDA, in fwd mode, ``fn`` captured
    once into a CUDA graph and timed by replay (no launch overhead at all; what a serving engine
    that replays graphs sees). A capture that fails leaves ``fn`` eager and says why in the
    note (the row's ``kernel_config``); otherwise the note is ``cuda graph``."""
    if not wanted or device.type != "cuda" or mode != "fwd":
        return fn, None
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize(device)
    except Exception as e:  # a host sync, a CPU tensor, an unsupported op
        torch.cuda.synchronize(device)
        return fn, f"eager: no cuda graph ({type(e).__name__})"
    return graph.replay, "cuda graph"


def autotune_bench(kernel_call, quantiles=QUANTILES):
    """``do_bench`` for ``triton.autotune``: the same loop, more reps than Triton's default."""
    return _quantiles_or_median(gpu_times(kernel_call, warmup_ms=25, rep_ms=100), quantiles)


def _quantiles_or_median(times, qs):
    return quantiles(times, qs) if qs else quantiles(times, (0.5,))[0]


def cpu_times(fn, leaves=(), rep_ms: float = 100) -> list[float]:
    """Per-block mean times (ms) of ``fn`` on the CPU (``torch.utils.benchmark``)."""
    from torch.utils import benchmark

    def run():
        reset_grads(leaves)
        fn()

    run()  # warm-up
    m = benchmark.Timer(stmt="run()", globals={"run": run}).blocked_autorange(
        min_run_time=max(rep_ms, 50) / 1000
    )
    return [t * 1e3 for t in m.times]


def bench(
    fn,
    leaves,
    device: torch.device,
    warmup_ms: float = 25,
    rep_ms: float = 100,
    min_reps: int = MIN_REPS,
    repeat: int = 1,
) -> Timing:
    """Median/p20/p80 ms of ``fn`` on ``device`` (grads of ``leaves`` reset every rep), its
    peak memory (CUDA) and the wall time of the whole timing. ``repeat`` > 1 times it that many
    times (each a full timing: estimate, warm-up, reps) and keeps the timing with the median
    median, plus every median in ``repeat_ms``."""
    if repeat < 1:
        raise ValueError(f"bad timing arguments: repeat={repeat} (must be >= 1)")
    t0 = time.perf_counter()
    peak = peak_memory_mb(fn, leaves, device)
    runs = []
    for _ in range(repeat):
        if device.type == "cuda":
            times = gpu_times(fn, leaves, warmup_ms, rep_ms, min_reps=min_reps, device=device)
        else:
            times = cpu_times(fn, leaves, rep_ms)
        runs.append((quantiles(times), len(times)))
    reset_grads(leaves)
    medians = [q[0] for q, _ in runs]
    (med, p20, p80), _ = sorted(runs)[(len(runs) - 1) // 2]
    reps = sum(n for _, n in runs)
    wall = time.perf_counter() - t0
    return Timing(med, p20, p80, peak, wall, reps, medians if repeat > 1 else None)
