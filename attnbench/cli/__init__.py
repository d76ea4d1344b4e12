"""The ``attnbench`` command line.

    attnbench list
    attnbench env
    attnbench accuracy --suite basic [--only a,b] [--skip c] [--device cuda|cpu] [--dtype bf16]
    attnbench perf --sweep seqlen [--only ...] [--json]
    attnbench plot results/
    attnbench repro RUN_ID [--backend b --case CASE_ID --mode fwd]

Exit codes: 0 all good; 1 some case failed accuracy or errored, no case ran, or the results
could not be written (rows written before are kept); 2 usage or config error (nothing run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from .. import backends as _backends  # noqa: F401  (registers every backend)
from ..backends.base import REGISTRY
from ..results.env import default_device, environment
from ..run.session import Request
from ..run.session import run as run_session
from .compare import compare_command
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
    err_console,
    fail,
    make_console,
    one_line_errors,
    split_list,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Accuracy and performance benchmarks for attention kernels.",
)


def _run(req: Request) -> None:
    """The run driver (attnbench.run.session); its errors as one line and the exit code."""
    with one_line_errors():
        code = run_session(req)
    raise typer.Exit(code)


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
    req = Request(
        "accuracy", suite, only=only, skip=skip, device=device, dtype=dtype, where=where,
        out=out, json_out=json_out,
    )  # fmt: skip
    _run(req)


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
    cuda_graph: bool = typer.Option(
        False,
        "--cuda-graph",
        help="time fwd by CUDA-graph replay where a backend allows capture (settings column)",
        metavar="",
    ),
):
    """Median-time TFLOP/s (p20-p80, peak memory), each with its accuracy verdict."""
    req = Request(
        "perf", sweep, only=only, skip=skip, device=device, dtype=dtype, where=where,
        modes=modes, out=out, json_out=json_out, retune=retune, repeat=repeat,
        cuda_graph=cuda_graph,
    )  # fmt: skip
    _run(req)


@app.command("list")
def list_backends(device: str = DEVICE):
    """Every registered backend, whether it can run here, and why not."""
    dev = device or default_device()
    if dev.split(":")[0] != "cuda":  # cuda is listed without a GPU: what would run there
        dev = check_device(dev)
    dev = dev.split(":")[0]
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
        ] + sorted(c.features)
        feats += [] if c.precision == "exact" else [f"precision={c.precision}"]
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
    results_dir: Path = typer.Argument(
        Path("results"), help="folder of parquet results, or one results file"
    ),
    out: Path = typer.Option(
        None, "--out", help="PNG folder (default RESULTS_DIR/_plots, or _plots next to the file)"
    ),
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
    roofline: bool = typer.Option(
        False,
        "--roofline",
        help="also roofline.png: every perf row by FLOP/byte under the run's measured roofs",
        metavar="",
    ),
    tradeoff: bool = typer.Option(
        False,
        "--tradeoff",
        help="also per case tradeoff_*.png: TFLOP/s against the rel L1 error of out, every "
        "backend a point, exact and lossy together",
        metavar="",
    ),
):
    """TFLOP/s-vs-seqlen and accuracy charts from stored results, one folder per run."""
    from ..views.plot import PlotWriteError, make_plots

    try:
        files = make_plots(
            results_dir,
            out,
            warn=lambda m: err_console.print(f"[yellow]warning:[/] {m}", highlight=False),
            runs=split_list(run, "--run"),
            latest=latest,
            merge=merge,
            roofline=roofline,
            tradeoff=tradeoff,
        )
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    except PlotWriteError as e:  # checked writable, then failed (disk full): not a usage error
        fail(str(e), 1)
    for f in files:
        make_console().print(str(f), highlight=False)


@app.command()
def show(
    results_dir: Path = typer.Argument(
        Path("results"), help="folder of parquet results, or one results file"
    ),
    run: str = typer.Option(None, "--run", help="comma-separated run ids (or unique prefixes)"),
    latest: bool = typer.Option(
        False, "--latest", help="only the newest run of each kind", metavar=""
    ),
):
    """The tables of stored runs (accuracy, perf, distributed perf), as the run printed them."""
    from ..results import load_results
    from ..views.plot import choose_runs
    from ..views.tables import accuracy_table, dist_perf_table, perf_table

    warn = lambda m: err_console.print(f"[yellow]warning:[/] {m}", highlight=False)  # noqa: E731
    try:
        df = load_results(results_dir, warn)
        chosen = choose_runs(df, split_list(run, "--run"), latest)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    con = make_console()
    for run_id in chosen:
        d = df[df.run_id == run_id]
        rows = d.astype(object).where(d.notna(), None).to_dict("records")
        kind = rows[0]["kind"]
        con.print(f"[bold]{run_id}[/] ({kind}, {len(rows)} rows)", highlight=False)
        if kind == "accuracy":
            con.print(accuracy_table(rows))
        elif kind == "perf":
            con.print(perf_table(rows))
        elif kind == "dist_perf":
            for world in sorted({r["world_size"] for r in rows if r.get("world_size")}):
                con.print(dist_perf_table([r for r in rows if r["world_size"] == world], world))
        else:
            con.print(accuracy_table([r for r in rows if r.get("rank") in (None, 0)]))


@app.command()
def repro(
    row_or_run: str = typer.Argument(
        ..., metavar="ROW_OR_RUN", help="a run id (or a unique prefix), or a results parquet file"
    ),
    results: Path = typer.Option(
        Path("results"),
        "--results",
        envvar="ATTNBENCH_OUT",
        help="the folder of results a run id is looked up in (default: $ATTNBENCH_OUT, else results)",
    ),
    backend: str = typer.Option(None, "--backend", help="only these backends' rows (a,b)"),
    case: str = typer.Option(None, "--case", help="only this case id's rows"),
    mode: str = typer.Option(None, "--mode", help="only these modes' rows (fwd,bwd,fwd_bwd)"),
):
    """The command lines that run stored rows' cases and backends again (their repro column),
    one per distinct command of the matching rows."""
    from ..results import load_results

    warn = lambda m: err_console.print(f"[yellow]warning:[/] {m}", highlight=False)  # noqa: E731
    given = Path(row_or_run).expanduser()
    try:
        if given.is_file():
            df, what = load_results(given, warn), str(given)
        else:
            df = load_results(results, warn)
            ids = list(dict.fromkeys(df.run_id))
            hits = [r for r in ids if r == row_or_run] or [
                r for r in ids if r.startswith(row_or_run)
            ]
            if len(hits) != 1:
                which = "no run" if not hits else f"{len(hits)} runs ({', '.join(hits)})"
                fail(f"{row_or_run!r}: {which} in {results} match (and no such file)")
            df, what = df[df.run_id == hits[0]], hits[0]
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    picked = []
    for col, want in (
        ("backend", split_list(backend, "--backend")),
        ("case_id", None if case is None else [case]),
        ("mode", split_list(mode, "--mode")),
    ):
        if want is not None:
            df = df[df[col].isin(want)]
            picked.append(f"{col} {','.join(want)}")
    if df.empty:
        fail(f"no row of {what} has {' and '.join(picked)}" if picked else f"{what}: no rows")
    commands = list(dict.fromkeys(c for c in df["repro"] if isinstance(c, str) and c))
    if not commands:
        fail(
            f"{len(df)} matching rows of {what} have no repro command (distributed rows, rows of "
            "a case --where cannot select alone, and rows written before the column have none)"
        )
    for c in commands:
        typer.echo(c)


app.command("compare")(compare_command)
app.add_typer(dist_app, name="dist", help="Distributed attention (ring, zigzag, Ulysses).")


def main() -> None:
    """The console script (and ``python -m attnbench``): output that cannot fail on a terminal
    short of characters, every ``--where`` applied when given several times, and a Ctrl-C
    before any run started (imports, checks, plots) one line and exit 130, as a run's own is."""
    from ..run.session import safe_stdio
    from .options import interrupted, merge_where

    safe_stdio()
    try:
        app(args=merge_where(sys.argv[1:]), prog_name="attnbench")
    except SystemExit as e:
        # typer ends a KeyboardInterrupt it caught with a silent exit 130 (an Exit raised from
        # the interrupt); the run driver's own Ctrl-C already printed its line (Exit from RunError)
        if e.code == 130 and isinstance(
            getattr(e.__context__, "__cause__", None), KeyboardInterrupt
        ):
            interrupted()
        raise
    except KeyboardInterrupt:
        interrupted()
        sys.exit(130)


if __name__ == "__main__":
    sys.exit(main())
