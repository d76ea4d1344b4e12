"""The driver of ``attnbench dist accuracy|perf``: the run driver of :mod:`attnbench.run.session`
(selection, settings, context, signals, accounting, exit codes) around the distributed loops.

Without torchrun it checks everything it can, then starts the ranks (:mod:`.launch`) once per
world size; under torchrun every rank selects the same cases, local backends and strategies,
runs the loop, and rank 0 prints and writes. ``--only``/``--skip`` pick strategies (``ring``,
``zigzag``, ``ulysses``, ``hybrid``, ``hybrid_zigzag``; ``--strategies`` is the old name of
``--only``), ``--local-backends`` the local kernels, ``--where`` the cases. Exit codes as
:mod:`attnbench.run.session`, plus 124: a collective timed out (the line names the ranks that
never reached it).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..results.env import default_device
from ..run.config import ConfigError
from ..run.repro import DistRepro
from ..run.session import (
    RunError,
    Session,
    activated,
    check_out_dir,
    err_console,
    make_console,
    parse_dtypes,
    parse_modes,
    split_list,
    where_cases,
)
from ..settings import Settings
from . import comm
from .config import MIN_TIMEOUT_S, DistConfig, Selection, load_dist_config, select
from .strategy import STRATEGIES

NOTHING_RAN = "no case ran: every strategy and local backend was unsupported (reasons above)"


@dataclass
class DistRequest:
    """What ``attnbench dist accuracy|perf`` was asked (None: not given)."""

    kind: str  # accuracy | perf
    config: str  # suite or sweep: a name or a YAML file
    device: str | None = None
    local: str | None = None  # --local-backends
    only: str | None = None  # strategies
    skip: str | None = None
    strategies: str | None = None  # the old name of --only
    dtype: str | None = None
    where: str | None = None
    modes: str | None = None
    out: Path = Path("results")
    nproc: int | None = None
    timeout: float | None = None
    json_out: bool = False


def strategies(default: list[str], req: DistRequest) -> list[str]:
    """The strategies ``--only`` (or its old name ``--strategies``) and ``--skip`` leave."""
    if req.strategies is not None and req.only is not None:
        raise RunError("--strategies is the old name of --only: give one of them")
    old = req.strategies is not None
    only = split_list(req.strategies if old else req.only, "--strategies" if old else "--only")
    skip = split_list(req.skip, "--skip")
    bad = [s for s in (only or []) + (skip or []) if s not in STRATEGIES]
    if bad:
        raise RunError(f"unknown strategy {bad[0]!r}; expected {', '.join(STRATEGIES)}")
    chosen = [s for s in (only or default) if s not in (skip or [])]
    if not chosen:
        raise RunError("--only/--skip leave no strategy to run")
    return chosen


def prepare(req: DistRequest, world: int | None) -> tuple[str, DistConfig, Path, Selection]:
    """Every check that needs no process group, for ``world`` ranks (None: the world size is
    not known yet: the cases are not checked)."""
    from ..problems.attention import AttentionCase
    from .local import get_local_kernel

    dev = req.device or default_device()
    if dev not in ("cuda", "cpu"):
        raise RunError(f"--device must be cuda or cpu, got {dev!r}")
    try:
        cfg, path = load_dist_config(req.config)
    except ConfigError as e:
        raise RunError(str(e)) from None
    sel = select(cfg, dev, world or 1, parse_dtypes(req.dtype))
    sel.local_backends = split_list(req.local, "--local-backends") or sel.local_backends
    sel.strategies = strategies(sel.strategies, req)
    for name in sel.local_backends:
        try:
            get_local_kernel(name)
        except KeyError as e:
            raise RunError(e.args[0]) from None
    sel.modes = parse_modes(req.modes) or sel.modes
    sel.cases = where_cases(sel.cases, req.where, [AttentionCase])
    if world is not None and not sel.cases:
        where = f" where {req.where}" if req.where else ""
        raise RunError(f"{path}: no cases to run on {dev} at world size {world}{where}")
    return dev, cfg, path, sel


def run(req: DistRequest) -> int:
    """``attnbench dist accuracy|perf``: the exit code (0, 1, 124; rank failures), or
    :class:`RunError`."""
    if req.nproc is not None and req.nproc < 1:
        raise RunError(f"--nproc must be >= 1, got {req.nproc}")
    if req.timeout is not None and not (0 < req.timeout < float("inf")):
        raise RunError(f"--timeout must be a number of seconds > 0, got {req.timeout:g}")
    if req.timeout is not None and req.timeout < MIN_TIMEOUT_S:
        raise RunError(
            f"--timeout must be at least {MIN_TIMEOUT_S:g} s (a collective between processes "
            f"cannot complete in less), got {req.timeout:g}"
        )
    torchrun = comm.launched_by_torchrun()
    if torchrun:
        from .launch import follow_launcher

        follow_launcher()  # a rank never outlives its launcher
    if req.strategies is not None and (not torchrun or os.environ.get("RANK") == "0"):
        err_console.print("[dim]note: --strategies is now --only (strategies by name)[/]")
    return _rank(req) if torchrun else _launch(req)


def _launch(req: DistRequest) -> int:
    from . import launch as launcher

    dev, cfg, _, _ = prepare(req, None)
    worlds = [req.nproc] if req.nproc else cfg.world_sizes
    for n in worlds:  # --where leaves cases at every world size
        prepare(req, n)
    launcher.check_capacity(dev, worlds, req.nproc is not None)
    check_out_dir(req.out)
    flags = {
        "--local-backends": req.local,
        "--only": req.strategies if req.strategies is not None else req.only,
        "--skip": req.skip,
        "--dtype": req.dtype,
        "--where": req.where,
        "--timeout": req.timeout,
        "--modes": req.modes,
        "--json": req.json_out,
    }
    args = launcher.rank_args(req.kind, req.config, dev, req.out, flags)
    console = err_console if req.json_out else make_console()
    return launcher.launch(req.kind, worlds, dev, args, console)


def _rank(req: DistRequest) -> int:
    """One rank of the run (under torchrun); rank 0 prints and writes."""
    from ..views.tables import dist_perf_table
    from .accuracy import run_accuracy
    from .context import BAD, DistRun
    from .perf import run_perf

    world = int(os.environ["WORLD_SIZE"])
    dev, cfg, path, sel = prepare(req, world)
    if dev == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RunError("--device cuda given but no CUDA GPU is visible (use --device cpu)")
    session = Session(req.json_out, Settings.from_env())  # the launcher's environment
    with activated(session.settings):
        timeout_s = req.timeout or cfg.timeout_s
        try:
            env = comm.init(dev, timeout_s, cfg.nccl_high_priority)
        except comm.DistTimeout as e:  # a peer that never came: one line, 124
            _exit(str(e), 124)
        wd = comm.Watchdog(env.rank, timeout_s)
        ctx = None
        if env.rank == 0:
            kind, name = f"dist_{req.kind}", f"{cfg.name}-w{world}"
            every = select(cfg, dev, world, parse_dtypes(req.dtype)).cases  # before --where
            repro = DistRepro(
                req.kind, path, dev, world, req.dtype is not None, every, session.settings
            )
            out = check_out_dir(req.out)
            ctx = session.open(kind, name, cfg.name, env.device, out, cfg.seed, repro)
            if sel.note:
                ctx.console.print(f"[bold yellow]{sel.note}[/] ({path.name})")
            ctx.console.print(
                f"run {ctx.run_id}: world size {world} ({env.backend}), {len(sel.cases)} cases x "
                f"{len(sel.local_backends)} local backends ({', '.join(sel.local_backends)}) x "
                f"{len(sel.strategies)} strategies -> {ctx.writer.path}",
                highlight=False,
            )
        run = DistRun(env, cfg, sel, wd, ctx)
        verdict = [0, 0]

        def loop() -> None:
            if req.kind == "accuracy":
                run_accuracy(run)
            else:
                run_perf(run)
            rows = ctx.rows if ctx else []
            n_bad = len([r for r in rows if r["status"] in BAD])
            n_ok = len([r for r in rows if r["status"] == "ok"])
            with wd.phase("sharing the verdict"):
                verdict[:] = run.gather((n_bad, n_ok))[0]

        try:
            session.drive(loop)
        except comm.DistTimeout as e:  # the rows written so far stay; no shutdown of a dead group
            kept = f"; {ctx.writer.n_written} rows kept in {ctx.writer.path}" if ctx else ""
            _exit(f"{e}{kept}", 124)
        except RunError as e:  # Ctrl-C, SIGTERM, a results file that cannot be written
            _exit(e.message if ctx is not None else "", e.code)
        comm.shutdown()
        if ctx is None:
            return 1 if verdict[0] or not verdict[1] else 0
        head = [dist_perf_table(ctx.rows, world)] if req.kind == "perf" else []
        return session.finish(*head, nothing_ran=f"world size {world}: {NOTHING_RAN}")


def _exit(message: str, code: int) -> None:
    """One line (rank 0) and out, without waiting on a process group that may be dead."""
    if message:
        err_console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)
