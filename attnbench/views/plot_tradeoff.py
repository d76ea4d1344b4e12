"""The speed-accuracy trade-off of a perf run (``attnbench plot RESULTS --tradeoff``): per case,
every backend one point, its TFLOP/s against the relative L1 error of its ``out`` (the same-case
check every perf row carries), exact and lossy backends together.

- ``tradeoff_<mode>_<case_id>.png`` (``tradeoff_<problem>_<mode>_<case_id>.png`` for a problem
  other than attention), one per case, fwd rows (a run without fwd rows: each mode it has);
- x: rel_l1 of out, log scale; a backend that matches the reference exactly (rel_l1 = 0) sits on
  a dotted floor line labelled as such, an infinite error on a ceiling line;
- y: TFLOP/s (median);
- marker and color by precision: ``exact`` one style, each lossy precision (fp8, int8, ...) its
  own; a point that failed its accuracy check is hollow with a red edge and labelled ``wrong``;
- each lossy precision's rel_l1 tolerance a vertical dashed line: the one its rows carry
  (``tol_rel_l1``: a config's ``lossy:`` override included), else the precision's default
  (:mod:`attnbench.rule`);
- a backend whose quantization was timed apart (``quant_ms``) gets a second, small hollow marker
  below its point, joined to it: its TFLOP/s with the quantization counted
  (``flops / (latency_ms + quant_ms)``), what it costs end to end against a backend that
  quantizes inside its call.

Up and to the left is better: faster, and closer to the reference.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ..rule import EXACT  # noqa: E402
from .plot_accuracy import device_label, lossy_tolerances, precisions, run_label  # noqa: E402

_LOSSY_MARKERS = ("s", "^", "D", "v", "P", "X", "<", ">")


def tradeoff_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The perf rows the trade-off can place: measured (ok or accuracy_failed), with TFLOP/s and
    the relative L1 of out (rows written before perf rows carried out's error have none)."""
    need = {"kind", "status", "tflops", "rel_l1"}
    if df.empty or not need <= set(df.columns):
        return df.iloc[0:0]
    perf = df[(df.kind == "perf") & df.status.isin(["ok", "accuracy_failed"])]
    rel = pd.to_numeric(perf.rel_l1, errors="coerce")
    tf = pd.to_numeric(perf.tflops, errors="coerce")
    return perf[rel.notna() & tf.notna() & np.isfinite(tf)]


def _styles(prec: pd.Series) -> dict[str, tuple[str, str]]:
    """(marker, color) per precision, the same in every figure of a call: exact round and blue,
    each lossy precision its own marker and color."""
    lossy = sorted(p for p in set(prec) if p != EXACT)
    styles = {EXACT: ("o", "C0")}
    for i, p in enumerate(lossy):
        styles[p] = (_LOSSY_MARKERS[i % len(_LOSSY_MARKERS)], f"C{(i + 1) % 10}")
    return styles


def _file_name(problem, mode: str, case_id: str) -> str:
    case = re.sub(r"[^A-Za-z0-9._,=+-]", "_", str(case_id))
    prob = "" if problem in (None, "attention") or problem != problem else f"{problem}_"
    return f"tradeoff_{prob}{mode}_{case}.png"


def tradeoff_plot(df: pd.DataFrame, out: Path) -> list[Path]:
    """One figure per case (and mode: fwd, or each mode of a run without fwd rows) in ``out``;
    nothing when no perf row has TFLOP/s and the rel_l1 of out."""
    rows = tradeoff_rows(df)
    if rows.empty:
        return []
    rows = rows.assign(
        precision=precisions(rows),
        problem=rows.problem.fillna("attention") if "problem" in rows else "attention",
        x=pd.to_numeric(rows.rel_l1, errors="coerce").astype(float),
    )
    tol = lossy_tolerances(rows)
    rows = rows.assign(rel_tol=tol.rel_tol.to_numpy(), cos_tol=tol.cos_tol.to_numpy())
    if (rows["mode"] == "fwd").any():
        rows = rows[rows["mode"] == "fwd"]
    styles = _styles(rows.precision)
    # where rel_l1 = 0 and = inf are drawn: a decade past the finite errors (and tolerances) of
    # every figure, so an infinite error is never drawn left of a tolerance
    finite = rows.x[np.isfinite(rows.x) & (rows.x > 0)]
    tols = rows.rel_tol[rows.rel_tol > 0]
    floor = float(finite.min()) / 10 if len(finite) else 1e-9
    top = max(float(finite.max()) if len(finite) else 0.0, float(tols.max()) if len(tols) else 0.0)
    ceil = top * 10 if top > 0 else 1.0
    files = []
    for (problem, mode, case_id), g in rows.groupby(["problem", "mode", "case_id"], sort=False):
        if "timestamp" in g:  # the same backend twice (merged runs): the newest
            g = g.sort_values("timestamp")
        g = g.drop_duplicates("backend", keep="last")
        path = out / _file_name(problem, mode, case_id)
        _draw(g, styles, floor, ceil, f"{'' if problem == 'attention' else problem + ' '}", path)
        files.append(path)
    return files


def _with_quant(r) -> float | None:
    """TFLOP/s with the row's quantization time counted, or None (no ``quant_ms``)."""
    q, ms, tf = r.get("quant_ms"), r.get("latency_ms"), r.get("tflops")
    vals = (q, ms, tf)
    if any(v is None or not np.isfinite(float(v)) for v in vals) or float(ms) <= 0:
        return None
    return float(tf) * float(ms) / (float(ms) + float(q))


def _label_offsets(x: np.ndarray, y: np.ndarray, top: float) -> list[float]:
    """Vertical offsets (points) that keep the labels of points close on the figure (within 0.3
    decade of rel L1 and 5% of the top speed) from printing over each other: in order of rel L1,
    each moved away from the labels already placed near it (down when it is the slower)."""
    offsets = [0.0] * len(x)
    placed: list[int] = []
    for i in np.argsort(x, kind="stable"):
        near = [
            j
            for j in placed
            if abs(np.log10(max(x[i], 1e-300)) - np.log10(max(x[j], 1e-300))) < 0.3
            and abs(y[i] - y[j]) <= 0.05 * (top or 1.0)
        ]
        if near:  # away from the labels already there: below a faster point, above a slower
            below = y[i] < np.mean([y[j] for j in near])
            offsets[i] = (-12.0 if below else 9.0) * len(near)
        placed.append(int(i))
    return offsets


def _draw(g: pd.DataFrame, styles: dict, floor: float, ceil: float, prob: str, path: Path):
    r0 = g.iloc[0]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = g.x.where(g.x > 0, floor).where(np.isfinite(g.x), ceil)
    nudge = _label_offsets(xs.to_numpy(), g.tflops.to_numpy(), float(g.tflops.max()))
    for (_, r), x, dy in zip(g.iterrows(), xs, nudge):
        marker, color = styles[r.precision]
        wrong = r.status == "accuracy_failed"
        ax.scatter(
            [x],
            [r.tflops],
            s=70,
            marker=marker,
            facecolors="none" if wrong else color,
            edgecolors="red" if wrong else "black",
            linewidths=1.6 if wrong else 0.5,
            zorder=4,
        )
        with_quant = _with_quant(r)
        if with_quant is not None:
            ax.plot([x, x], [with_quant, r.tflops], color=color, lw=0.8, zorder=3)
            ax.scatter([x], [with_quant], s=22, marker=marker, facecolors="none",
                       edgecolors=color, linewidths=1.0, zorder=4)  # fmt: skip
        label = r.backend + (" (wrong)" if wrong else "")
        ax.annotate(label, (x, r.tflops), textcoords="offset points", xytext=(6, 4 + dy),
                    fontsize=7, color="red" if wrong else "black")  # fmt: skip
    # the tolerances: one dashed line per distinct rel_l1 limit, naming the precisions it holds
    limits: dict[float, list[str]] = {}
    for p, tol in g[g.precision != EXACT].groupby("precision").rel_tol.first().items():
        if tol == tol and tol > 0:
            limits.setdefault(float(tol), []).append(p)
    handles = [
        Line2D([], [], ls="", marker=m, markerfacecolor=c, markeredgecolor="black", color=c,
               label=p if p == EXACT else f"{p} (lossy)")
        for p, (m, c) in styles.items() if p in set(g.precision)
    ]  # fmt: skip
    for tol, names in sorted(limits.items()):
        color = styles[names[0]][1]
        ax.axvline(tol, color=color, ls="--", lw=1.2)
        handles.append(Line2D([], [], color=color, ls="--", label=f"{', '.join(names)} rel L1 "
                              f"tolerance {tol:g}"))  # fmt: skip
    if (g.status == "accuracy_failed").any():
        handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none",
                              markeredgecolor="red", label="failed its accuracy check"))  # fmt: skip
    if any(_with_quant(r) is not None for _, r in g.iterrows()):
        handles.append(Line2D([], [], ls="-", lw=0.8, marker="o", markersize=4, color="gray",
                              markerfacecolor="none", label="small: with its quantization (quant_ms)"))  # fmt: skip
    for edge, words, cond in (
        (floor, "rel L1 = 0 (exact match) drawn here", (g.x == 0).any()),
        (ceil, "rel L1 = inf drawn here", np.isinf(g.x).any()),
    ):
        if cond:
            ax.axvline(edge, color="gray", ls=":", lw=1)
            ax.text(edge, 0.02, f" {words}", rotation=90, fontsize=7, color="gray",
                    transform=ax.get_xaxis_transform(), va="bottom")  # fmt: skip
    ax.set_xscale("log")
    xmax = max([float(xs.max())] + list(limits))
    ax.set_xlim(float(xs.min()) / 3, xmax * 3)
    top = float(g.tflops.max())
    ax.set_ylim(0, top * 1.2 if top > 0 else 1)
    ax.set_xlabel("relative L1 error of out vs the reference, sum |x - r| / sum |r| (log)")
    ax.set_ylabel("TFLOP/s (median)")
    ax.set_title(
        f"speed vs error, {prob}{r0['mode']} {r0.case_id} (better: up and left)\n"
        f"{run_label(g)} on {device_label(g)}",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def no_tradeoff_reason(df: pd.DataFrame) -> str:
    """Why ``df`` has nothing for ``--tradeoff``: one line for the error."""
    if df.empty or "kind" not in df or not (df.kind == "perf").any():
        return "no perf rows (the trade-off draws `attnbench perf` runs)"
    perf = df[df.kind == "perf"]
    if not perf.status.isin(["ok", "accuracy_failed"]).any():
        return "no perf row was measured (every one is unsupported, oom or error)"
    return (
        "no perf row has the relative L1 error of out (rel_l1): rows written before perf rows "
        "carried it; run `attnbench perf` again"
    )
