"""Plots from stored results (matplotlib, PNG), one folder of figures per run:
``<out>/<run_id>/`` (``attnbench plot results/ [--run ID] [--latest]``), or with ``--merge``
one folder ``<out>/merged/`` for the chosen runs together: a sweep run in slices (``--where``,
one device call each) drawn as one sweep (:func:`merge_runs`).

- ``perf_<problem>_<mode>_<causal>_d<head_dim>_<dtype>_h<heads>.png``: TFLOP/s against seqlen, one line per
  backend and series of shapes (e.g. 16k tokens per batch, batch = tokens / seqlen), the p20-p80
  band shaded; points that failed the accuracy check are red crosses labelled ``wrong``, never
  part of the line. The title names the run, the device and what varies along x.
- ``perf_headdim_<problem>_<mode>_<causal>_s<seqlen>_<dtype>_b<batch>.png``: the same against head dim.
- ``accuracy.png``: per backend and tensor, the worst error over the rule's limit (error /
  (k x same-dtype torch error), the table's number; 1.0 = at the limit).
- ``accuracy_cases.png``: the same ratio per case x backend, so a failing case is found.
- with ``--roofline``, ``roofline.png`` (:mod:`.plot_roofline`); with ``--tradeoff``, per case
  ``tradeoff_<mode>_<case_id>.png``: TFLOP/s against the rel L1 of out (:mod:`.plot_tradeoff`).

A line never mixes devices or shapes (a point of another series is another line), and never
mixes runs unless ``--merge`` says so; merged runs must share the machine and software.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from ..results import load_results  # noqa: E402
from ..results.schema import ENV_COLUMNS  # noqa: E402
from ..results.units import tflops  # noqa: E402
from .plot_accuracy import accuracy_plot, device_label, rule_ratio, run_label  # noqa: E402, F401
from .plot_roofline import roofline_plot  # noqa: E402
from .plot_tradeoff import no_tradeoff_reason, tradeoff_plot, tradeoff_rows  # noqa: E402

# Named the usual way in titles and file names; every other case column that is fixed in a
# figure and off its default is appended generically (``name value``), so a field of a new
# problem is never merged into one line.
_NAMED = {"problem", "mode", "causal", "dtype", "head_dim", "heads_q", "heads_kv", "batch"}
_NAMED |= {"seqlen_q", "seqlen_k", "sk", "ratio", "custom_scale", "softmax_scale", "case_id"}
_NAMED |= {"varlen", "seqlens", "seqlens_k"}  # varlen rows are not drawn against a length


def size_label(v: float) -> str:
    """512 -> "512", 1024 -> "1k", 16384 -> "16k" (powers of two read as k)."""
    v = int(v)
    return f"{v // 1024}k" if v >= 1024 and v % 1024 == 0 else str(v)


def _series(g: pd.DataFrame, covar: str, x: str, product: str, fixed: str) -> list:
    """Split the points of one figure into series of shapes: ``covar`` (batch or heads) either
    co-varies with ``x`` keeping ``covar * x`` constant (one series, e.g. tokens per batch), or
    is fixed (one series per value). Returns [(label, rows)]."""
    prod = g[covar] * g[x]
    if prod.nunique() == 1 and g[covar].nunique() > 1:
        return [(f"{product} {size_label(prod.iloc[0])} ({fixed})", g)]
    return [(f"{covar} {v}", d) for v, d in g.groupby(covar, sort=True)]


def backend_colors(backends: pd.Series) -> dict:
    """One color per backend, the same in every figure of a plot call (a backend keeps its
    color when another one is missing from a figure): tab10, tab20 past ten backends."""
    names = sorted(set(backends))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {b: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, b in enumerate(names)}


# y metric -> (axis label, the roof column and its legend words)
_Y = {
    "tflops": ("TFLOP/s (median; band p20-p80)", "matmul_tflops", "matmul ceiling"),
    "gbps": ("GB/s (median; band p20-p80)", "bw_gbps", "memory bandwidth"),
    "latency_ms": ("latency ms (median; band p20-p80)", None, None),
}
_XLABEL = {"seqlen_q": "sequence length", "head_dim": "head dim"}


def _band(ok: pd.DataFrame, y: str):
    """(y, low, high) of the rows: the median and the p20-p80 band in the metric ``y``."""
    if y == "latency_ms":
        return ok.latency_ms, ok.latency_ms_p20, ok.latency_ms_p80
    work = ok.flops if y == "tflops" else ok.bytes * 1e-3  # GB/s = bytes / ms / 1e6
    per = tflops if y == "tflops" else (lambda w, ms: w / ms / 1e3)
    return ok[y], per(work, ok.latency_ms_p80), per(work, ok.latency_ms_p20)


def _perf_plot(g: pd.DataFrame, x: str, series: list, title: str, path: Path) -> None:
    """One figure: a line per backend and series, the metric ``g.attrs["y"]`` (TFLOP/s unless
    said) against ``x``, the run's measured roof dashed."""
    y = g.attrs.get("y", "tflops")
    ylabel, roof, roof_words = _Y[y]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    many = len(series) > 1
    for s_label, srows in series:
        for be, d in srows.groupby("backend", sort=False):
            d = d.sort_values(x)
            label = f"{be} ({s_label})" if many else be
            ok = d[d.status == "ok"]
            if len(ok):
                style = {"color": d.color.iloc[0]} if "color" in d and not many else {}
                mid, lo, hi = _band(ok, y)
                (line,) = ax.plot(ok[x], mid, marker="o", label=label, **style)
                ax.fill_between(ok[x], lo, hi, alpha=0.2, color=line.get_color())
            wrong = d[d.status == "accuracy_failed"]
            if len(wrong):
                ax.scatter(
                    wrong[x],
                    wrong[y],
                    marker="x",
                    s=80,
                    color="red",
                    zorder=5,
                    label=f"{label}: wrong output",
                )
                for xv, yv in zip(wrong[x], wrong[y]):
                    ax.annotate(
                        "wrong",
                        (xv, yv),
                        color="red",
                        fontsize=7,
                        textcoords="offset points",
                        xytext=(4, 4),
                    )
    if roof and roof in g and g[roof].notna().any():
        peak = g[roof].median()
        ax.axhline(peak, color="gray", ls="--", lw=1, label=f"{roof_words} {peak:.0f}")
    ax.set_xscale("log", base=2)
    xs = sorted(set(g[x]))
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: size_label(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(_XLABEL.get(x, x.replace("_", " ")))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tag(causal) -> str:
    return "causal" if causal else "full"


def _defaults() -> dict:
    """Default value of every case field of every registered problem (None: no default)."""
    from dataclasses import MISSING, fields

    from ..problems import PROBLEMS

    out = {}
    for prob in PROBLEMS.values():
        for f in fields(prob.case_type):
            out.setdefault(f.name, None if f.default is MISSING else f.default)
    return out


def _same(a, b) -> bool:
    if a is None or b is None or (isinstance(a, float) and pd.isna(a)):
        return (a is None or pd.isna(a)) and (b is None or pd.isna(b))
    return a == b


def _extras(r, keys: list[str]) -> list[tuple[str, str]]:
    """(file name bit, title bit) for each fixed case column off its default: the attention
    knobs in their short forms, any other column (a new problem's field) as ``name value``."""
    defaults = _defaults()
    bits = []
    wl, wr = r.get("window_left"), r.get("window_right")
    if pd.notna(wl) and (wl >= 0 or wr >= 0):
        bits.append((f"win{wl:g},{wr:g}",) * 2)
    if pd.notna(r.get("softcap")) and r.softcap:
        bits.append((f"softcap{r.softcap:g}",) * 2)
    if r.get("alibi") is True:
        bits.append(("alibi",) * 2)
    if r.custom_scale >= 0:
        bits.append((f"scale{r.custom_scale:g}",) * 2)
    if r.get("deterministic") is True:
        bits.append(("det",) * 2)
    done = _NAMED | {"window_left", "window_right", "softcap", "alibi", "deterministic"}
    for k in keys:
        v = r[k]
        if k in done or pd.isna(v) or (k in defaults and _same(v, defaults[k])):
            continue
        v = int(v) if isinstance(v, float) and v.is_integer() else v
        bits.append((f"{k}{v}", f"{k} {v}"))
    return bits


def _covarying(g: pd.DataFrame, x: str, cols: list[str]) -> list[str]:
    """The columns of ``cols`` that vary with ``x`` and are a function of it once the others are
    fixed (a threshold of w = S/2 along a seqlen sweep): drawn along the line, named in the
    title. Every other varying column splits the figure, so a line never has two points at one
    x."""
    out = []
    for c in cols:
        if g[c].nunique(dropna=False) < 2:
            continue
        others = [o for o in cols if o != c]
        per_x = g.groupby(others + [x], dropna=False)[c].nunique(dropna=False)
        if (per_x <= 1).all():
            out.append(c)
    return out


def _figures(perf: pd.DataFrame, x: str, fixed: list[str], covar: str):
    """(figure key columns, co-varying columns, rows) per figure along ``x``: rows that agree in
    every case column but ``x``, ``covar`` (batch or heads, see :func:`_series`) and the columns
    that co-vary with ``x``."""
    from ..results.schema import case_key_columns

    skip = {x, covar, "softmax_scale", "seqlen_k", "heads_kv", "varlen", "seqlens", "seqlens_k"}
    cols = ["mode"] + [c for c in case_key_columns() if c not in skip and c in perf] + fixed
    cols = list(dict.fromkeys(cols))
    cov = _covarying(perf, x, cols)
    keys = [c for c in cols if c not in cov]
    for _, g in perf.groupby(keys, dropna=False, sort=False):
        yield keys, [c for c in cov if g[c].nunique(dropna=False) > 1], g


def _along(g: pd.DataFrame, cov: list[str]) -> str:
    return "".join(f"; {c} {size_label(g[c].min())}-{size_label(g[c].max())} along x" for c in cov)


def perf_plots(df: pd.DataFrame, out: Path) -> list[Path]:
    """The perf figures of one run (rows of one run_id), or of runs merged (:func:`merge_runs`)."""
    varlen = df.varlen.astype("boolean").fillna(False).astype(bool)
    perf = df[(df.kind == "perf") & df.status.isin(["ok", "accuracy_failed"]) & ~varlen]
    if perf.empty:
        return []
    default = np.isclose(perf.softmax_scale, 1 / np.sqrt(perf.head_dim)) | perf.softmax_scale.isna()
    perf = perf.assign(
        sk=np.where(perf.seqlen_k == perf.seqlen_q, -1, perf.seqlen_k),
        custom_scale=np.where(default, -1.0, perf.softmax_scale),
        ratio=perf.heads_q // perf.heads_kv,
        color=perf.backend.map(backend_colors(perf.backend)),
    )
    from ..problems import PROBLEMS

    axes = {p: PROBLEMS[p].plot_axes for p in perf.problem.unique() if p in PROBLEMS}

    def rows_for(axis):
        return perf[perf.problem.isin([p for p, a in axes.items() if axis in [x[0] for x in a]])]

    files = _other_axes(perf, axes, out)
    # x = seqlen: fixed head dim and heads; batch fixed or tokens per batch fixed
    fixed = ["heads_kv", "sk", "custom_scale"]
    for keys, cov, g in _figures(rows_for("seqlen_q"), "seqlen_q", fixed, "batch"):
        if g.seqlen_q.nunique() < 2:
            continue
        r = g.iloc[0]
        heads = f"{r.heads_q}" if r.heads_q == r.heads_kv else f"{r.heads_q}-{r.heads_kv}"
        series = _series(g, "batch", "seqlen_q", "tokens per batch", "batch = tokens / seqlen")
        extra = _extras(r, keys)
        name = f"perf_{r.problem}_{r['mode']}_{_tag(r.causal)}_d{r.head_dim}_{r['dtype']}_h{heads}"
        if r.sk >= 0:
            name += f"_sk{r.sk}"
        name += "".join(f"_{f}" for f, _ in extra)
        what = series[0][0] if len(series) == 1 else "one line per batch size"
        title = (
            f"{r.problem} {r['mode']}, {_tag(r.causal)}, head dim {r.head_dim}, {r['dtype']}, heads {heads}"
            + (f", seqlen_k {r.sk}" if r.sk >= 0 else "")
            + "".join(f", {t}" for _, t in extra)
            + f"\nx: sequence length; {what}{_along(g, cov)}\n{run_label(g)} on {device_label(g)}"
        )
        path = out / f"{name}.png"
        _perf_plot(g, "seqlen_q", series, title, path)
        files.append(path)
    # x = head dim: fixed sequence lengths and batch; heads fixed or model dim fixed
    fixed = ["seqlen_q", "seqlen_k", "batch", "ratio", "custom_scale"]
    for keys, cov, g in _figures(rows_for("head_dim"), "head_dim", fixed, "heads_q"):
        if g.head_dim.nunique() < 2:
            continue
        r = g.iloc[0]
        series = _series(g, "heads_q", "head_dim", "model dim", "heads = model dim / head dim")
        extra = _extras(r, keys)
        seq = f"{r.seqlen_q}" if r.seqlen_q == r.seqlen_k else f"{r.seqlen_q}x{r.seqlen_k}"
        name = (
            f"perf_headdim_{r.problem}_{r['mode']}_{_tag(r.causal)}_s{seq}_{r['dtype']}_b{r.batch}"
        )
        name += "".join(f"_{f}" for f, _ in extra)
        what = series[0][0] if len(series) == 1 else "one line per head count"
        title = (
            f"{r.problem} {r['mode']}, {_tag(r.causal)}, seqlen {seq}, {r['dtype']}, batch {r.batch}"
            + (f", GQA {r.ratio}:1" if r.ratio > 1 else "")
            + "".join(f", {t}" for _, t in extra)
            + f"\nx: head dim; {what}{_along(g, cov)}\n{run_label(g)} on {device_label(g)}"
        )
        path = out / f"{name}.png"
        _perf_plot(g, "head_dim", series, title, path)
        files.append(path)
    return files


def _other_axes(perf: pd.DataFrame, axes: dict, out: Path) -> list[Path]:
    """Figures along the axes a problem declares besides seqlen_q and head_dim (decode: GB/s
    against cache length, latency against batch), named ``perf_<x>_<problem>_<mode>_...``."""
    files = []
    for problem, plot_axes in axes.items():
        rows = perf[perf.problem == problem]
        for x, y, covar in plot_axes:
            if x in ("seqlen_q", "head_dim") or x not in rows or rows[x].isna().all():
                continue
            for keys, cov, g in _figures(rows, x, ["custom_scale"], covar or x):
                if g[x].nunique() < 2:
                    continue
                r = g.iloc[0]
                g = g.copy()
                g.attrs["y"] = y
                if covar and covar != x:
                    series = [(f"{covar} {v}", d) for v, d in g.groupby(covar, sort=True)]
                else:
                    series = [("", g)]
                extra = _extras(r, keys)
                name = f"perf_{x}_{problem}_{r['mode']}_d{r.head_dim}_{r['dtype']}"
                name += "".join(f"_{f}" for f, _ in extra if not f.startswith(f"{covar}"))
                what = "one line per " + covar if len(series) > 1 else ""
                title = (
                    f"{problem} {r['mode']}, head dim {r.head_dim}, {r['dtype']}"
                    + "".join(f", {t}" for _, t in extra)
                    + f"\nx: {_XLABEL.get(x, x)}; {what}{_along(g, cov)}"
                    + f"\n{run_label(g)} on {device_label(g)}"
                )
                path = out / f"{name}.png"
                _perf_plot(g, x, series, title, path)
                files.append(path)
    return files


def choose_runs(df: pd.DataFrame, runs: list[str] | None, latest: bool) -> list[str]:
    """Run ids to plot: the ones named in ``runs`` (an id or a unique prefix), or the newest
    run of each kind with ``latest``, or every run. Raises ValueError naming the known runs."""
    order = df.groupby("run_id").timestamp.max().sort_values().index.tolist()
    if runs:
        chosen = []
        for want in runs:
            hits = [r for r in order if r == want] or [r for r in order if r.startswith(want)]
            if len(hits) != 1:
                what = "no run" if not hits else f"{len(hits)} runs"
                raise ValueError(f"--run {want!r}: {what} match; runs here: {', '.join(order)}")
            chosen.append(hits[0])
        return list(dict.fromkeys(chosen))
    if latest:
        kinds = df.drop_duplicates("run_id").set_index("run_id").kind
        newest = {kinds[r]: r for r in order}
        return [r for r in order if r in newest.values()]
    return order


# What must match for runs to be merged: the machine and the software that ran them (every
# environment column of the schema) and the settings that change numbers.
_SAME_SETUP = [*ENV_COLUMNS, "settings"]
# One measured row of a run: a later run's row with the same key replaces it.
_ROW_KEY = ["kind", "problem", "backend", "case_id", "mode", "tensor", "strategy", "rank"]


def merge_runs(df: pd.DataFrame, warn=None) -> pd.DataFrame:
    """The rows of several runs as one run's: raises ValueError when they ran on other machines
    or software (:data:`_SAME_SETUP`); a row measured again in a later run (same backend, case,
    mode, tensor) keeps the newest. ``warn`` gets one line saying how many rows were replaced,
    and one naming the commits when the runs come from more than one."""
    order = df.groupby("run_id").timestamp.max().sort_values().index.tolist()
    first = df.drop_duplicates("run_id").set_index("run_id")
    cols = [c for c in _SAME_SETUP if c in first.columns]
    setups = first[cols].apply(lambda r: " | ".join(str(v) for v in r if pd.notna(v)), axis=1)
    if setups.nunique() > 1:
        seen = setups.groupby(setups, sort=False).apply(lambda s: s.index[0])
        raise ValueError(
            "--merge: these runs ran on other machines or software: "
            + "; ".join(f"{run} ({setup})" for setup, run in seen.items())
        )
    if warn is not None and "git_sha" in first and first.git_sha.nunique() > 1:
        shas = ", ".join(str(v) for v in dict.fromkeys(first.loc[order, "git_sha"]))
        warn(f"--merge: the runs come from other attnbench commits ({shas})")
    rank = {r: i for i, r in enumerate(order)}
    df = df.assign(_order=df.run_id.map(rank)).sort_values("_order", kind="stable")
    key = [c for c in _ROW_KEY if c in df.columns]
    newest = df.drop_duplicates(key, keep="last")
    if len(newest) < len(df) and warn is not None:
        warn(
            f"--merge: {len(df) - len(newest)} rows measured again in a later run; the newest kept"
        )
    return newest.drop(columns="_order")


class PlotWriteError(Exception):
    """Figures could not be written after the folder checked writable (disk full, folder gone):
    one line naming the folder and how many figures were written."""


def _check_folder(out: Path, default: bool) -> None:
    """``out`` as a folder figures can be written into (made if missing); ValueError with one
    line otherwise: a file in the way, a read-only folder or mount, a path no one may write
    (``/sys``). ``default``: ``out`` is RESULTS_DIR/_plots, not a ``--out`` given."""
    hint = "; give --out FOLDER to write them elsewhere" if default else ""
    name = f"{out}" if default else f"--out {out}"
    if out.exists() and not out.is_dir():
        raise ValueError(f"{name}: is a file, not a folder{hint}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".attnbench-probe-"):
            pass
    except OSError as e:
        why = e.strerror or str(e)
        if default:
            raise ValueError(f"cannot write plots to {out} ({why}){hint}") from None
        raise ValueError(f"{name}: not a writable folder ({why})") from None


def make_plots(
    results_dir: str | Path,
    out: str | Path | None = None,
    warn=None,
    runs: list[str] | None = None,
    latest: bool = False,
    merge: bool = False,
    roofline: bool = False,
    tradeoff: bool = False,
) -> list[Path]:
    """PNGs under ``<out>/<run_id>/`` for every chosen run (default out: RESULTS_DIR/_plots, or
    ``<folder>/_plots`` next to one results file given as RESULTS_DIR) from every readable
    results file under ``results_dir`` (``warn`` gets one line per unreadable file skipped); with
    ``merge``, the chosen runs drawn together under ``<out>/merged/``. Raises ValueError (one
    line) when ``out`` is not a folder figures can go in or ``tradeoff`` finds no perf row with
    the error of out in any chosen run, :class:`PlotWriteError` when a figure cannot be written
    after that."""
    results_dir = Path(results_dir)
    df = load_results(results_dir, warn)
    default = out is None
    if default:
        home = results_dir.parent if results_dir.is_file() else results_dir
        out = home / "_plots"
    out = Path(out)
    chosen = choose_runs(df, runs, latest)
    if merge:
        groups = [("merged", merge_runs(df[df.run_id.isin(chosen)], warn))]
    else:
        groups = [(run_id, df[df.run_id == run_id]) for run_id in chosen]
    if tradeoff:  # asked for and impossible: one line before any figure is written
        placeable = [name for name, d in groups if len(tradeoff_rows(d))]
        if not placeable:
            chosen_rows = pd.concat([d for _, d in groups]) if groups else df.iloc[0:0]
            raise ValueError(f"--tradeoff: {results_dir}: {no_tradeoff_reason(chosen_rows)}")
        for name, d in groups:
            if name not in placeable and (d.kind == "perf").any() and warn is not None:
                warn(f"--tradeoff: run {name}: {no_tradeoff_reason(d)}")
    _check_folder(out, default)
    files = []
    for name, d in groups:
        folder = out / name
        try:
            folder.mkdir(exist_ok=True)
            files += perf_plots(d, folder) + accuracy_plot(d, folder)
            if roofline:
                files += roofline_plot(d, folder)
            if tradeoff:
                files += tradeoff_plot(d, folder)
        except OSError as e:
            plt.close("all")  # the figure whose file failed
            raise PlotWriteError(
                f"cannot write plots to {folder} ({e.strerror or e}); "
                f"{len(files)} figures written before"
            ) from None
    if not files:
        raise FileNotFoundError(
            f"{results_dir}: no perf sweep with two or more sizes, and no accuracy rows, to plot"
        )
    return files


def compare_plot(comp, path: Path) -> Path:
    """Speedup (NEW / BASE TFLOP/s) per matched case, one bar per case, grouped by backend and
    mode; the threshold drawn as a dashed line below 1. Returns the file written (``.png``
    appended to a name without a suffix); LookupError when no matched pair has a speedup."""
    d = comp.cases.dropna(subset=["speedup"])
    if d.empty:
        raise LookupError("no matched ok cases to plot")
    path = Path(path)
    if not path.suffix:  # what savefig would write: say the name it writes
        path = path.with_name(path.name + ".png")
    labels = [f"{r.backend} {r.mode} {r.case_id}" for r in d.itertuples()]
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * len(d) + 1.5)))
    lim = comp.threshold if comp.threshold is not None else 0.02
    colors = ["C3" if s < 1 - lim else ("C2" if s > 1 + lim else "C7") for s in d.speedup]
    ax.barh(range(len(d)), d.speedup - 1, left=1, color=colors)
    ax.axvline(1, color="black", lw=0.8)
    if comp.threshold is not None:
        ax.axvline(1 - comp.threshold, color="C3", ls="--", lw=1, label="threshold")
        ax.legend(fontsize=7)
    ax.set_yticks(range(len(d)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("speedup: NEW TFLOP/s / BASE TFLOP/s")
    ax.set_title(f"{comp.new_label} vs {comp.base_label}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
