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

from ..run import timing
from ..run.timing import Timing
from .comm import DistEnv


def dist_bench(
    fn, leaves, env: DistEnv, warmup_ms: int = 25, rep_ms: int = 100, max_reps: int = 1000
) -> Timing:
    """Median/p20/p80 ms of ``fn`` on this rank; every rank must call it with the same fn.
    The pieces are the one timer's (:mod:`attnbench.run.timing`): peak memory, rep planning, the L2
    flush, quantiles; only the agreement between ranks is added here."""
    t_start = time.perf_counter()
    cuda = env.device.startswith("cuda")
    dev = torch.device(env.device)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    peak = timing.peak_memory_mb(fn, leaves, dev)
    if not cuda:
        timing.reset_grads(leaves)
        fn()
    t0 = time.perf_counter()
    for _ in range(3):
        timing.reset_grads(leaves)
        fn()
    sync()
    est = torch.tensor(
        [(time.perf_counter() - t0) * 1e3 / 3], dtype=torch.float64, device=dev if cuda else "cpu"
    )
    dist.all_reduce(est, op=dist.ReduceOp.MAX)  # the same rep count on every rank
    n_warm, n_rep = timing.plan_reps(float(est), warmup_ms, rep_ms, min_reps=5, max_reps=max_reps)
    for _ in range(n_warm):
        timing.reset_grads(leaves)
        fn()
    sync()
    times = []
    if cuda:
        flush = timing.l2_flush()
        flag = torch.zeros(1, device=dev)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        for i in range(n_rep):
            timing.reset_grads(leaves)
            flush()
            dist.all_reduce(flag)  # lines the ranks up on the stream
            starts[i].record()
            fn()
            ends[i].record()
        sync()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        for _ in range(n_rep):
            timing.reset_grads(leaves)
            dist.barrier()
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    timing.reset_grads(leaves)
    med, p20, p80 = timing.quantiles(times)
    return Timing(med, p20, p80, peak, time.perf_counter() - t_start, len(times))
