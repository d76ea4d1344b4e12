"""``attnbench dist``: distributed attention checked rank by rank.

    torchrun --nproc_per_node=4 -m attnbench dist accuracy --suite dist
    torchrun --nproc_per_node=4 -m attnbench dist perf --sweep dist
    attnbench dist accuracy --suite dist --nproc 4          # starts torchrun itself
    attnbench dist accuracy --suite dist --nproc 2 --device cpu --out tmp   # gloo
    attnbench dist accuracy --suite dist                    # one launch per world size in the file

Under torchrun every rank runs the loop; rank 0 prints and writes ``<out>/<run_id>.parquet``
(rows with ``strategy``, ``world_size``, ``rank``). Without torchrun the command starts the ranks
with torchrun's launcher (``--standalone --nproc_per_node N``) for ``--nproc`` or for each of the
config's ``world_sizes``; a rank that dies is one line, not a launcher traceback. Exit codes: 0
all good; 1 a row failed accuracy or errored, no case ran, or a rank died; 2 usage or config
error (checked before launching); 124 a collective timed out (the line names the ranks that
never reached it).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer

from ..distributed import comm
from ..distributed.accuracy import run_accuracy
from ..distributed.config import load_dist_config, select
from ..distributed.context import BAD, DistRun
from ..distributed.local import get_local_kernel
from ..distributed.perf import run_perf
from ..distributed.strategy import STRATEGIES
from ..results import ResultsWriteError, ResultsWriter, new_run_id
from ..results.env import default_device
from ..run.config import ConfigError
from ..run.runner import RunContext
from ..views.tables import dist_perf_table, failed_cases
from .options import (
    DTYPE,
    MODES_OPT,
    OUT,
    check_out_dir,
    err_console,
    fail,
    make_console,
    parse_dtypes,
    parse_modes,
    split_list,
)

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
    sel.local_backends = split_list(local, "--local-backends") or sel.local_backends
    sel.strategies = split_list(strategies, "--strategies") or sel.strategies
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
    """Start ``nproc`` ranks of ``attnbench dist KIND ARGS`` per world size with torchrun's
    launcher (``--standalone``). A rank that fails gives one line, not torchrun's traceback;
    the exit code is the worst of the launches: 124 a stuck rank, 2 usage, 1 anything else."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if dev == "cuda":
        import torch

        n_gpu = torch.cuda.device_count()
        if n_gpu == 0:
            fail("--device cuda given but no CUDA GPU is visible (use --device cpu)")
        too_many = [n for n in nprocs if n > n_gpu]
        if too_many:
            fail(f"{too_many[0]} processes need {too_many[0]} GPUs; {n_gpu} visible")
    os.environ.update(NCCL_NVLS_ENABLE="0", PYTHONUNBUFFERED="1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    code = 0
    for n in nprocs:
        make_console().print(
            f"[dim]$ torchrun --standalone --nproc_per_node={n} -m attnbench dist {kind} "
            f"{' '.join(args)}[/]",
            highlight=False,
        )
        cfg = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=n,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            monitor_interval=0.5,
        )
        try:
            elastic_launch(cfg, sys.executable)("-m", "attnbench", "dist", kind, *args)
        except ChildFailedError as e:
            codes = {r: f.exitcode for r, f in e.failures.items()}
            code = max(code, _worst(codes))
            ended = (0, 1, 2, 124, -15)  # -15: stopped by the launcher after another rank
            died = {r: c for r, c in codes.items() if c not in ended}
            if died:
                what = ", ".join(f"rank {r} {_how(c)}" for r, c in sorted(died.items()))
                err_console.print(f"[red]error:[/] world size {n}: {what}", highlight=False)
    return code


def _worst(codes: dict[int, int]) -> int:
    vals = set(codes.values())
    for c in (124, 2):
        if c in vals:
            return c
    return 1


def _how(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _run(
    kind: str, suite: str, device, local, strategies, dtype, out: Path, nproc, timeout, modes=None
) -> None:
    t0 = time.perf_counter()
    if nproc is not None and nproc < 1:
        fail(f"--nproc must be >= 1, got {nproc}")
    if timeout is not None and not (0 < timeout < float("inf")):
        fail(f"--timeout must be a number of seconds > 0, got {timeout:g}")
    if not comm.launched_by_torchrun():
        dev, cfg, _, _ = _prepare(suite, device, local, strategies, dtype, None)
        check_out_dir(out)
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
            writer=ResultsWriter(check_out_dir(out), run_id),
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
        n_ok = len([r for r in ctx.rows if r["status"] == "ok"]) if ctx else 0
        with wd.phase("sharing the verdict"):
            n_bad, n_ok = run.gather((n_bad, n_ok))[0]
    except comm.DistTimeout as e:  # the rows written so far stay; no shutdown of a dead group
        kept = f"; {ctx.writer.n_written} rows kept in {ctx.writer.path}" if ctx else ""
        err_console.print(f"[red]error:[/] {e}{kept}", highlight=False, soft_wrap=True)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(124)
    except ResultsWriteError as e:
        err_console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.stderr.flush()
        os._exit(1)
    comm.shutdown()
    if ctx is not None:
        if kind == "perf":
            ctx.console.print(dist_perf_table(ctx.rows, world))
        where = f"-> {ctx.writer.path}" if ctx.writer.written else "(nothing written)"
        ctx.console.print(
            f"{len(ctx.rows)} rows {where}  (wall {time.perf_counter() - t0:.1f} s)",
            highlight=False,
        )
        if n_bad:
            for i, line in enumerate(failed_cases(ctx.rows)):
                ctx.console.print(f"[red]{line}[/]" if i == 0 else line, highlight=False)
        elif not n_ok:
            err_console.print(
                f"[red]error:[/] world size {world}: no case ran: every strategy and local "
                "backend was unsupported (reasons above)",
                highlight=False,
            )
    raise typer.Exit(1 if n_bad or not n_ok else 0)


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
