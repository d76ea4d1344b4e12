"""``attnbench compare``: the command line of :mod:`attnbench.views.compare`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..views.compare import compare_frames, parse_threshold, resolve
from ..views.plot import compare_plot
from ..views.tables import agreement_table, compare_header, compare_table
from .options import err_console, fail, make_console


def compare_command(
    base: str = typer.Argument(..., help="BASE: run id, parquet file or folder"),
    new: str = typer.Argument(None, help="NEW: run id, parquet file or folder"),
    backend: str = typer.Option(None, "--backend", help="within one run: this backend (NEW)"),
    vs: str = typer.Option(None, "--vs", help="... against this backend (BASE)"),
    threshold: str = typer.Option(
        None, "--threshold", help="exit 1 on a slowdown beyond this (e.g. 3%) or a lost verdict"
    ),
    results: Path = typer.Option(Path("results"), "--results", help="where run ids are looked up"),
    plot_path: Path = typer.Option(None, "--plot", help="write a speedup-per-case PNG here"),
    json_out: bool = typer.Option(
        False, "--json", help="the comparison as JSON on stdout", metavar=""
    ),
):
    """Speedups of NEW over BASE per backend and case, accuracy changes, one-sided cases."""

    if (backend is None) != (vs is None):
        fail("--backend and --vs go together (compare RUN --backend A --vs B)")
    if backend is not None and new is not None:
        fail("give one run with --backend A --vs B, or two runs BASE NEW, not both")
    if backend is None and new is None:
        fail("compare needs BASE and NEW (or one run with --backend A --vs B)")
    try:
        th = parse_threshold(threshold)
        b = resolve(base, results)
        n = resolve(new, results) if new is not None else b
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    if backend is not None:
        missing = [x for x in (backend, vs) if x not in set(b.backend)]
        if missing:
            fail(f"backend {missing[0]!r} not in {base} (has: {', '.join(sorted(set(b.backend)))})")
        b, n = b[b.backend == vs], b[b.backend == backend]
        comp = compare_frames(b, n, vs, backend, th, join_backend=False)
    else:
        comp = compare_frames(b, n, base, new, th)
    if comp.cases.empty and not comp.accuracy_changes:
        fail("no case is in both BASE and NEW")
    con = err_console if json_out else make_console()
    if json_out:
        print(json.dumps(comp.to_json(), default=str, indent=1))
    else:
        for line in compare_header(comp):
            con.print(line, highlight=False)
        con.print(compare_table(comp))
        if backend is None:  # two runs: how far apart the same cases landed
            con.print(agreement_table(comp))
    if plot_path is not None:
        try:
            con.print(f"plot -> {compare_plot(comp, plot_path)}", highlight=False)
        except FileNotFoundError as e:
            con.print(f"[yellow]no plot: {e}[/]")
    if comp.failed:
        con.print(
            f"[red]{len(comp.regressions)} cases slower by more than {th:.1%}, "
            f"{len(comp.lost)} lost their accuracy verdict[/]"
        )
        raise typer.Exit(1)
