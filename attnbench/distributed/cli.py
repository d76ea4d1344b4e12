"""``attnbench dist``: distributed attention checked rank by rank.

    torchrun --nproc_per_node=4 -m attnbench dist accuracy --suite dist
    torchrun --nproc_per_node=4 -m attnbench dist perf --sweep dist
    attnbench dist accuracy --suite dist --nproc 4          # starts torchrun itself
    attnbench dist accuracy --suite dist --nproc 2 --device cpu --out tmp   # gloo
    attnbench dist accuracy --suite dist                    # one launch per world size in the file

Under torchrun every rank runs the loop; rank 0 prints and writes ``<out>/<run_id>.parquet``
(rows with ``strategy``, ``world_size``, ``rank``). Without torchrun the command launches
``python -m torch.distributed.run --standalone --nproc_per_node N -m attnbench dist ...`` for
``--nproc`` or for each of the config's ``world_sizes``. Exit codes: 0 all good; 1 a row failed
accuracy or errored; 2 usage or config error; 124 a rank was stuck past the timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import typer

from ..config import ConfigError
from ..env import default_device
from ..options import (
    DTYPE,
    MODES_OPT,
    OUT,
    fail,
    make_console,
    parse_dtypes,
    parse_modes,
    split_list,
)
from ..report import dist_perf_table
from ..results import ResultsWriter, new_run_id
from ..runner import RunContext
from . import comm
from .accuracy import run_accuracy
from .config import load_dist_config, select
from .context import BAD, DistRun
from .local import get_local_kernel
from .perf import run_perf
from .strategy import STRATEGIES

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Distributed attention (ring, zigzag ring, Ulysses, hybrid), rank by rank.",
)


def _prepare(suite, device, local, strategies, dtype, world: int | None):
    """Validate everything that can be validated before any process group exists."""
    dev = device or default_device()
    if dev not in ("cuda", "cpu"):
        fail(f"--device must be cuda or cpu, got {dev!r}")
    try:
        cfg, path = load_dist_config(suite)
    except ConfigError as e:
        fail(str(e))
    dtypes = parse_dtypes(dtype)
    sel = select(cfg, dev, world or 1, dtypes)
    sel.local_backends = split_list(local) or sel.local_backends
    sel.strategies = split_list(strategies) or sel.strategies
    bad = [s for s in sel.strategies if s not in STRATEGIES]
    if bad:
        fail(f"unknown strategy {bad[0]!r}; expected {', '.join(STRATEGIES)}")
    for name in sel.local_backends:
        try:
            get_local_kernel(name)
        except KeyError as e:
            fail(e.args[0])
    return dev, cfg, path, sel


def _launch(kind: str, nprocs: list[int], dev: str, args: list[str]) -> int:
    if dev == "cuda":
        import torch

        n_gpu = torch.cuda.device_count()
        if n_gpu == 0:
            fail("--device cuda given but no CUDA GPU is visible (use --device cpu)")
        too_many = [n for n in nprocs if n > n_gpu]
        if too_many:
            fail(f"{too_many[0]} processes need {too_many[0]} GPUs; {n_gpu} visible")
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    code = 0
    for n in nprocs:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            "-m",
            "attnbench",
            "dist",
            kind,
            *args,
        ]
        make_console().print(f"[dim]$ {' '.join(cmd[1:])}[/]", highlight=False)
        code = max(code, subprocess.run(cmd, env=env).returncode)
    return code


def _run(
    kind: str, suite: str, device, local, strategies, dtype, out: Path, nproc, timeout, modes=None
) -> None:
    t0 = time.perf_counter()
    if not comm.launched_by_torchrun():
        dev, cfg, _, _ = _prepare(suite, device, local, strategies, dtype, None)
        args = [
            f"--{'suite' if kind == 'accuracy' else 'sweep'}",
            suite,
            "--device",
            dev,
            "--out",
            str(Path(out).resolve()),
        ]
        for flag, val in (
            ("--local-backends", local),
            ("--strategies", strategies),
            ("--dtype", dtype),
            ("--timeout", timeout),
            ("--modes", modes),
        ):
            if val is not None:
                args += [flag, str(val)]
        raise typer.Exit(_launch(kind, [nproc] if nproc else cfg.world_sizes, dev, args))
    world = int(os.environ["WORLD_SIZE"])
    dev, cfg, path, sel = _prepare(suite, device, local, strategies, dtype, world)
    if modes:
        sel.modes = parse_modes(modes)
    if dev == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail("--device cuda given but no CUDA GPU is visible (use --device cpu)")
    timeout_s = timeout or cfg.timeout_s
    env = comm.init(dev, timeout_s, cfg.nccl_high_priority)
    wd = comm.Watchdog(env.rank, timeout_s)
    ctx = None
    if env.rank == 0:
        rkind = f"dist_{kind}"
        run_id = new_run_id(rkind, f"{cfg.name}-w{world}")
        ctx = RunContext(
            kind=rkind,
            suite=cfg.name,
            run_id=run_id,
            device=env.device,
            writer=ResultsWriter(out, run_id),
            console=make_console(),
            seed=cfg.seed,
        )
        if sel.note:
            ctx.console.print(f"[bold yellow]{sel.note}[/] ({path.name})")
        ctx.console.print(
            f"run {run_id}: world size {world} ({env.backend}), {len(sel.cases)} cases x "
            f"{len(sel.local_backends)} local backends ({', '.join(sel.local_backends)}) x "
            f"{len(sel.strategies)} strategies -> {ctx.writer.path}",
            highlight=False,
        )
    run = DistRun(env, cfg, sel, wd, ctx)
    try:
        if kind == "accuracy":
            run_accuracy(run)
        else:
            run_perf(run)
        n_bad = len([r for r in ctx.rows if r["status"] in BAD]) if ctx else 0
        with wd.phase("sharing the verdict"):
            n_bad = run.gather(n_bad)[0]
    finally:
        comm.shutdown()
    if ctx is not None:
        if kind == "perf":
            ctx.console.print(dist_perf_table(ctx.rows, world))
        ctx.console.print(
            f"{len(ctx.rows)} rows -> {ctx.writer.path}  (wall {time.perf_counter() - t0:.1f} s)",
            highlight=False,
        )
        if n_bad:
            ctx.console.print(f"[red]{n_bad} rows failed accuracy or errored[/]")
    raise typer.Exit(1 if n_bad else 0)


_DEVICE = typer.Option(None, "--device", help="cuda (NCCL) or cpu (gloo); default cuda if present")
_LOCAL = typer.Option(None, "--local-backends", help="comma-separated local backends (need an lse)")
_STRATS = typer.Option(None, "--strategies", help=f"subset of {','.join(STRATEGIES)}")
_NPROC = typer.Option(None, "--nproc", help="start torchrun with this many processes")
_TIMEOUT = typer.Option(None, "--timeout", help="collective timeout in seconds (config: 120)")


@app.command()
def accuracy(
    suite: str = typer.Option("dist", "--suite", help="suite name or YAML file"),
    device: str = _DEVICE,
    local: str = _LOCAL,
    strategies: str = _STRATS,
    dtype: str = DTYPE,
    out: Path = OUT,
    nproc: int = _NPROC,
    timeout: float = _TIMEOUT,
):
    """Per-rank max/mean error of out, lse, dq, dk, dv: distributed vs non-distributed vs the
    fp32 reference."""
    _run("accuracy", suite, device, local, strategies, dtype, out, nproc, timeout)


@app.command()
def perf(
    sweep: str = typer.Option("dist", "--sweep", help="sweep name or YAML file"),
    modes: str = MODES_OPT,
    device: str = _DEVICE,
    local: str = _LOCAL,
    strategies: str = _STRATS,
    dtype: str = DTYPE,
    out: Path = OUT,
    nproc: int = _NPROC,
    timeout: float = _TIMEOUT,
):
    """Median time per rank (the slowest counts), TFLOP/s per device and efficiency against
    single-device time / P, each with its accuracy verdict."""
    _run("perf", sweep, device, local, strategies, dtype, out, nproc, timeout, modes)
