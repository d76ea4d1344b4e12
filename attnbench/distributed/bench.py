"""Timing of a distributed callable: the same number of reps on every rank, each rep started
together, median per rank (the slowest rank is the group's time).

``triton.testing.do_bench`` cannot be used as is: it sizes its rep count from each process's own
estimate, so ranks would run different numbers of collectives and hang. Here the estimate is
agreed (max over ranks), and every rep starts after a tiny all-reduce (GPU: on the stream, after
flushing L2 like do_bench; CPU: a gloo barrier), timed with CUDA events or ``perf_counter``.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from ..timing import Timing
from .comm import DistEnv

_FLUSH_BYTES = 256 << 20


def _reset(leaves):
    for t in leaves:
        t.grad = None


def dist_bench(
    fn, leaves, env: DistEnv, warmup_ms: int = 25, rep_ms: int = 100, max_reps: int = 1000
) -> Timing:
    """Median/p20/p80 ms of ``fn`` on this rank; every rank must call it with the same fn."""
    t_start = time.perf_counter()
    cuda = env.device.startswith("cuda")
    dev = torch.device(env.device)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    peak = None
    _reset(leaves)
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(dev)
    fn()
    sync()
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    t0 = time.perf_counter()
    for _ in range(3):
        _reset(leaves)
        fn()
    sync()
    est = torch.tensor(
        [(time.perf_counter() - t0) * 1e3 / 3], dtype=torch.float64, device=dev if cuda else "cpu"
    )
    dist.all_reduce(est, op=dist.ReduceOp.MAX)
    est_ms = max(float(est), 1e-3)
    n_warm = max(1, min(max_reps, int(warmup_ms / est_ms)))
    n_rep = max(5, min(max_reps, int(rep_ms / est_ms)))
    for _ in range(n_warm):
        _reset(leaves)
        fn()
    sync()
    times = []
    if cuda:
        cache = torch.empty(_FLUSH_BYTES, dtype=torch.int8, device=dev)
        flag = torch.zeros(1, device=dev)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        for i in range(n_rep):
            _reset(leaves)
            cache.zero_()
            dist.all_reduce(flag)  # lines the ranks up on the stream
            starts[i].record()
            fn()
            ends[i].record()
        sync()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        for _ in range(n_rep):
            _reset(leaves)
            dist.barrier()
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    _reset(leaves)
    x = torch.tensor(times, dtype=torch.float64)
    p20, med, p80 = (
        float(v) for v in torch.quantile(x, torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64))
    )
    return Timing(med, p20, p80, peak, time.perf_counter() - t_start)
