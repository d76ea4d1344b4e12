"""The ``attnbench`` command line.

    attnbench list
    attnbench env
    attnbench accuracy --suite basic [--only a,b] [--skip c] [--device cuda|cpu] [--dtype bf16]
    attnbench perf --sweep seqlen [--only ...] [--json]
    attnbench plot results/

Exit codes: 0 all good; 1 some case failed accuracy or errored, no case ran, or the results
could not be written (rows written before are kept); 2 usage or config error (nothing run).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import typer
from rich.table import Table

from .. import backends as _backends  # noqa: F401  (registers every backend)
from ..backends.base import REGISTRY, get_backends
from ..problems import PROBLEMS
from ..results import ResultsWriteError, ResultsWriter, new_run_id
from ..results.env import default_device, environment
from ..run.config import ConfigError, load_config, select_cases
from ..run.runner import RunContext, run_accuracy, run_perf
from ..run.where import keep, parse_where
from ..views.compare import compare_command
from ..views.tables import (
    accuracy_table,
    failed_cases,
    perf_table,
    unrepeatable,
    unsupported_reasons,
)
from .dist import app as dist_app
from .options import (
    DEVICE,
    DTYPE,
    JSON,
    MODES_OPT,
    ONLY,
    OUT,
    SKIP,
    WHERE,
    check_device,
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
    help="Accuracy and performance benchmarks for attention kernels.",
)


def _nothing_runs(cases, backends, modes, dev) -> str | None:
    """None when some backend can run some case here; else why not, one reason per backend."""
    reasons: dict[str, str] = {}
    for be in backends:
        run_modes = modes or ["fwd_bwd" if be.caps.backward else "fwd"]
        for case in cases:
            for m in run_modes:
                why = be.why_unsupported(case, dev, m)
                if not why:
                    return None
                reasons.setdefault(be.name, why)
    return "; ".join(f"{b}: {w}" for b, w in reasons.items())


def _common(
    kind: str, config: str, only, skip, device, dtype, out, json_out, modes=None, where=None
):
    console = err_console if json_out else make_console()
    dev = check_device(device)
    try:
        backends = get_backends(split_list(only, "--only"), split_list(skip, "--skip"))
    except KeyError as e:
        fail(e.args[0])
    if not backends:
        fail("--only/--skip leave no backend to run")
    dtypes = parse_dtypes(dtype)
    run_modes = parse_modes(modes)
    try:
        cfg, path = load_config(config)
        cases, cfg_modes, note = select_cases(cfg, dev.split(":")[0], dtypes)
        cases = keep(cases, parse_where(where, [PROBLEMS[cfg.problem].case_type]))
    except (ConfigError, ValueError) as e:
        fail(str(e))
    wrong = [b.name for b in backends if b.caps.problem != cfg.problem]
    if only and wrong:
        fail(f"{', '.join(wrong)}: not a {cfg.problem} backend ({cfg.name} poses {cfg.problem})")
    backends = [b for b in backends if b.caps.problem == cfg.problem]
    if not backends:
        fail(f"--only/--skip leave no {cfg.problem} backend to run")
    if cfg.kind is not None and cfg.kind != kind:
        flag = "--suite" if cfg.kind == "accuracy" else "--sweep"
        fail(f"{path}: kind: {cfg.kind}, not {kind}; run it with `attnbench {cfg.kind} {flag} ...`")
    if not cases:
        fail(f"{path}: no cases to run on {dev}" + (f" where {where}" if where else ""))
    run_modes = run_modes or cfg_modes
    why = _nothing_runs(cases, backends, run_modes if kind == "perf" else None, dev)
    if why:
        fail(f"nothing to run: no selected backend supports any of the {len(cases)} cases ({why})")
    out = check_out_dir(out)
    run_id = new_run_id(kind, cfg.name)
    writer = ResultsWriter(out, run_id)
    ctx = RunContext(
        kind=kind,
        suite=cfg.name,
        run_id=run_id,
        device=dev,
        writer=writer,
        console=console,
        json_out=json_out,
        seed=cfg.seed,
    )
    if note:
        console.print(f"[bold yellow]{note}[/] ({path.name}: {len(cases)} cases)")
    console.print(
        f"run {run_id}: {len(cases)} cases x {len(backends)} backends on {dev} -> {out}/",
        highlight=False,
    )
    return ctx, cfg, cases, run_modes, backends


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, a job scheduler, a device lease running out) during a run."""


def _on_sigterm(signum, frame):
    raise Terminated


def _run(ctx: RunContext, loop, t0: float) -> None:
    """Run ``loop()``; Ctrl-C, SIGTERM and a results file that cannot be written end in one
    line that says what was kept and where the wall time went (exit 130, 143, 1)."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave SIGTERM alone
        previous = None
    try:
        loop()
    except KeyboardInterrupt as e:
        term = isinstance(e, Terminated)
        why = "terminated (SIGTERM)" if term else "interrupted"
        fail(f"{why}: {_kept(ctx)}  {_accounting(ctx, t0)}", 143 if term else 130)
    except ResultsWriteError as e:
        fail(str(e), 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _kept(ctx: RunContext) -> str:
    w = ctx.writer
    return f"{w.n_written} finished rows kept in {w.path}" if w.written else "no rows written"


def _accounting(ctx: RunContext, t0: float) -> str:
    """(cases done, wall s, s in timing calls, s in first calls: compiles, autotuning, JIT)."""
    timed = sum(r.get("wall_s") or 0 for r in ctx.rows)
    # one first call per (case, backend), shared by its mode rows
    firsts = {(r["case_id"], r["backend"]): r.get("first_call_s") or 0 for r in ctx.rows}
    first = sum(firsts.values())
    per_backend: dict[str, float] = {}
    for (_, backend), s in firsts.items():
        per_backend[backend] = per_backend.get(backend, 0.0) + s
    split = ", ".join(
        f"{b} {s:.1f}" for b, s in sorted(per_backend.items(), key=lambda x: -x[1]) if s >= 0.05
    )
    split = f": {split}" if split else ""
    cases = len({r["case_id"] for r in ctx.rows})
    return (
        f"({cases} cases, wall {time.perf_counter() - t0:.1f} s"
        + (f", of which {timed:.1f} s in timing calls" if timed else "")
        + (f", {first:.1f} s in first calls (compiles, autotuning, JIT{split})" if first else "")
        + ")"
    )


def _finish(ctx: RunContext, table, t0: float) -> None:
    con = ctx.console
    con.print(table)
    for line in unsupported_reasons(ctx.rows):
        con.print(f"[dim]{line}[/]", highlight=False)
    bad = [r for r in ctx.rows if r["status"] in ("error", "oom", "accuracy_failed")]
    con.print(f"{_kept(ctx)}  {_accounting(ctx, t0)}", highlight=False, soft_wrap=True)
    if ctx.kind == "perf" and not ctx.device.startswith("cuda"):
        con.print("[dim]peak_mem_mb: measured on CUDA only (empty on the CPU)[/]")
    if bad:
        for i, line in enumerate(failed_cases(ctx.rows)):
            con.print(f"[red]{line}[/]" if i == 0 else line, highlight=False)
        raise typer.Exit(1)
    if not any(r["status"] == "ok" for r in ctx.rows):
        fail("no case ran: every backend was unsupported on every case (see the reasons above)", 1)


@app.command()
def accuracy(
    suite: str = typer.Option("basic", "--suite", help="suite name or YAML file"),
    only: str = ONLY,
    skip: str = SKIP,
    device: str = DEVICE,
    dtype: str = DTYPE,
    where: str = WHERE,
    out: Path = OUT,
    json_out: bool = JSON,
):
    """Max/mean error of out, lse, dq, dk, dv of every backend against the fp32 reference."""
    t0 = time.perf_counter()
    ctx, cfg, cases, _, backends = _common(
        "accuracy", suite, only, skip, device, dtype, out, json_out, where=where
    )
    _run(ctx, lambda: run_accuracy(cases, backends, ctx), t0)
    _finish(ctx, accuracy_table(ctx.rows), t0)


@app.command()
def perf(
    sweep: str = typer.Option("seqlen", "--sweep", help="sweep name or YAML file"),
    modes: str = MODES_OPT,
    only: str = ONLY,
    skip: str = SKIP,
    device: str = DEVICE,
    dtype: str = DTYPE,
    where: str = WHERE,
    out: Path = OUT,
    json_out: bool = JSON,
    retune: bool = typer.Option(
        False,
        "--retune",
        help="re-tune Triton kernels instead of reusing kept choices",
        metavar="",
    ),
    repeat: int = typer.Option(1, "--repeat", help="time every case N times; report the spread"),
):
    """Median-time TFLOP/s (p20-p80, peak memory), each with its accuracy verdict."""
    t0 = time.perf_counter()
    if retune:
        os.environ["ATTNBENCH_RETUNE"] = "1"  # read by kernels/triton_fa2/tuning.py
    if repeat < 1:
        fail(f"--repeat must be >= 1, got {repeat}")
    ctx, cfg, cases, run_modes, backends = _common(
        "perf", sweep, only, skip, device, dtype, out, json_out, modes, where
    )
    ctx.repeat = repeat
    _run(ctx, lambda: run_perf(cases, backends, run_modes, ctx, cfg.warmup_ms, cfg.rep_ms), t0)
    for line in unrepeatable(ctx.rows):
        ctx.console.print(line, highlight=False)
    _finish(ctx, perf_table(ctx.rows), t0)


@app.command("list")
def list_backends(device: str = DEVICE):
    """Every registered backend, whether it can run here, and why not."""
    dev = (device or default_device()).split(":")[0]
    con = make_console()
    # the names users type after --only never truncate: a narrow terminal gets fewer columns
    wide = con.width >= 140
    t = Table(title=f"backends (device: {dev})", title_justify="left")
    t.add_column("backend", no_wrap=True, min_width=max(map(len, REGISTRY)))
    t.add_column("problem", no_wrap=True)
    cols = ("available", "devices", "dtypes", "head dims", "features", "description")
    for c in cols if wide else cols[:1]:
        t.add_column(c, overflow="fold")
    for name, be in REGISTRY.items():
        c = be.caps
        why = None if dev in c.devices else f"runs on {', '.join(sorted(c.devices))} only"
        why = why or be.availability(dev)
        avail = "[green]yes[/]" if not why else f"[red]no[/]: {why}"
        if not wide:
            t.add_row(name, c.problem, avail)
            continue
        feats = [
            f
            for f in (
                "causal",
                "gqa",
                "varlen",
                "backward",
                "lse",
                "window",
                "softcap",
                "alibi",
                "deterministic",
            )
            if getattr(c, f)
        ]
        hd = ",".join(map(str, sorted(c.head_dims))) if c.head_dims else f"<={c.max_head_dim}"
        t.add_row(
            name,
            c.problem,
            avail,
            ",".join(sorted(c.devices)),
            ",".join(sorted(c.dtypes)),
            hd,
            " ".join(feats),
            be.description,
        )
    con.print(t)
    if not wide:
        con.print("[dim](a wider terminal shows dtypes, head dims, features, descriptions)[/]")


@app.command()
def env(device: str = DEVICE):
    """The environment facts every result row carries (and backend build flags)."""
    dev = check_device(device)
    con = make_console()
    for k, v in environment(dev).items():
        con.print(f"{k:20s} {v}", highlight=False)
    for name, be in REGISTRY.items():
        flags = be.build_flags()
        if flags:
            con.print(f"{'build_flags.' + name:20s} {flags}", highlight=False)


@app.command()
def plot(
    results_dir: Path = typer.Argument(Path("results"), help="folder of parquet results"),
    out: Path = typer.Option(None, "--out", help="PNG folder (default RESULTS_DIR/_plots)"),
    run: str = typer.Option(None, "--run", help="comma-separated run ids (or unique prefixes)"),
    latest: bool = typer.Option(
        False, "--latest", help="only the newest run of each kind", metavar=""
    ),
    merge: bool = typer.Option(
        False,
        "--merge",
        help="draw the chosen runs as one (a sweep run in slices; same machine and software)",
        metavar="",
    ),
):
    """TFLOP/s-vs-seqlen and accuracy charts from stored results, one folder per run."""
    from ..views.plot import make_plots

    try:
        files = make_plots(
            results_dir,
            out,
            warn=lambda m: err_console.print(f"[yellow]warning:[/] {m}", highlight=False),
            runs=split_list(run, "--run"),
            latest=latest,
            merge=merge,
        )
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    for f in files:
        make_console().print(str(f), highlight=False)


app.command("compare")(compare_command)
app.add_typer(dist_app, name="dist", help="Distributed attention (ring, zigzag, Ulysses).")


def main() -> None:
    app(prog_name="attnbench")


if __name__ == "__main__":
    sys.exit(main())
