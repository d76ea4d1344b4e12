"""``attnbench compare``: the command line of :mod:`attnbench.views.compare`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from ..views.compare import compare_frames, parse_threshold, resolve
from ..views.plot import compare_plot
from ..views.tables import agreement_table, compare_header, compare_table
from .options import err_console, fail, make_console

PLOT_FORMATS = (".png", ".pdf", ".svg")


def check_plot_path(path: Path) -> Path:
    """``--plot`` as the file that will be written, checked before anything is compared: a
    name without a suffix gets ``.png`` (what savefig would write), other formats than
    :data:`PLOT_FORMATS`, a folder, or a place this process cannot write end the command with
    one line and exit 2 (a usage error, never the 1 a ``--threshold`` gate reads as slower)."""
    path = Path(path)
    if not path.suffix and not path.is_dir():
        path = path.with_name(path.name + ".png")
    if path.is_dir():
        fail(f"--plot {path}: is a folder; give a file name such as {path / 'speedup.png'}")
    if path.suffix.lower() not in PLOT_FORMATS:
        fail(f"--plot {path}: {path.suffix!r} is not a supported format: use .png, .pdf or .svg")
    try:
        if path.exists():
            with open(path, "ab"):  # opened for writing, nothing written
                pass
        else:
            folder = path.parent  # the nearest folder that exists: the plot's folders go there
            while not folder.exists():
                folder = folder.parent
            if not folder.is_dir():
                fail(f"--plot {path}: {folder} is a file, not a folder")
            with tempfile.TemporaryFile(dir=folder, prefix=".attnbench-probe-"):
                pass
    except OSError as e:
        fail(f"--plot {path}: cannot write there ({e.strerror or e})")
    return path


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
    if plot_path is not None:
        plot_path = check_plot_path(plot_path)

    def warn(m):
        err_console.print(f"[yellow]warning:[/] {m}", highlight=False, soft_wrap=True)

    try:
        th = parse_threshold(threshold)
        b = resolve(base, results, warn)
        n = resolve(new, results, warn) if new is not None else b
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
    if comp.no_speedup:
        shown = ", ".join(comp.no_speedup[:8]) + (" ..." if len(comp.no_speedup) > 8 else "")
        con.print(
            f"[yellow]{len(comp.no_speedup)} pairs have no speedup (TFLOP/s zero or missing on a "
            f"side; not in the geometric mean): {shown}[/]",
            highlight=False,
        )
    if plot_path is not None:
        try:
            con.print(f"plot -> {compare_plot(comp, plot_path)}", highlight=False)
        except LookupError as e:
            con.print(f"[yellow]no plot: {e}[/]")
        except (OSError, ValueError) as e:  # checked above; the disk filled or the folder went
            fail(f"--plot {plot_path}: cannot write there ({getattr(e, 'strerror', None) or e})")
    if comp.failed:
        con.print(
            f"[red]{len(comp.regressions)} cases slower by more than {th:.1%}, "
            f"{len(comp.lost)} lost their accuracy verdict[/]"
        )
        raise typer.Exit(1)
