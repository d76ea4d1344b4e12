"""Timing: ``triton.testing.do_bench`` on GPUs (L2 flushed before every rep; median, p20, p80),
``torch.utils.benchmark`` on CPUs; peak memory of one call."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    peak_mem_mb: float | None
    wall_s: float  # wall time spent in the timing call (warm-up, reps, flushes)


def timing_columns(t: Timing, flops: float, devices: int = 1) -> dict:
    """The result columns of one timing: median/p20/p80 ms, FLOPs, TFLOP/s per device (the
    work is ``flops`` split over ``devices``), peak memory, wall time."""
    return dict(
        latency_ms=t.median_ms,
        latency_ms_p20=t.p20_ms,
        latency_ms_p80=t.p80_ms,
        flops=flops,
        tflops=flops / devices / (t.median_ms * 1e-3) / 1e12,
        peak_mem_mb=t.peak_mem_mb,
        wall_s=t.wall_s,
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
    _reset_grads(leaves)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    _reset_grads(leaves)
    return elapsed


def _reset_grads(leaves):
    for t in leaves:
        t.grad = None


def peak_memory_mb(fn, leaves, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    _reset_grads(leaves)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def bench(fn, leaves, device: torch.device, warmup_ms: int = 25, rep_ms: int = 100) -> Timing:
    t0 = time.perf_counter()
    peak = peak_memory_mb(fn, leaves, device)
    if device.type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(
            fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=list(leaves), quantiles=[0.5, 0.2, 0.8]
        )
    else:
        from torch.utils import benchmark

        def run():
            _reset_grads(leaves)
            fn()

        run()  # warm-up
        m = benchmark.Timer(stmt="run()", globals={"run": run}).blocked_autorange(
            min_run_time=max(rep_ms, 50) / 1000
        )
        times = torch.tensor(m.times, dtype=torch.float64) * 1e3
        q = torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64)
        med, p20, p80 = torch.quantile(times, q).tolist()
    _reset_grads(leaves)
    return Timing(float(med), float(p20), float(p80), peak, time.perf_counter() - t0)
