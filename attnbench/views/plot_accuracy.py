"""Accuracy figures of one run (called by :func:`attnbench.views.plot.make_plots`).

- ``accuracy.png``: per backend and tensor, the worst error over the rule's limit, error /
  (k x same-dtype torch error): the accuracy table's number, one line at 1.0 (the limit).
- ``accuracy_cases.png``: the same ratio per case x backend (worst tensor), failures marked,
  so a failing case is found at a glance.

A backend graded by the lossy rule (``precision`` fp8, int8, ...) is drawn by that rule, never
by the exact one it does not claim to meet: the larger of rel_l1 / its rel_l1 tolerance and
(1 - cos_sim) / (1 - its cos_sim tolerance), also 1.0 at the limit; its name is marked
``(lossy <precision>)`` on the axis. The tolerances are the ones the rows carry
(``tol_cos_sim``, ``tol_rel_l1``), else :func:`attnbench.rule.lossy_tolerance`'s defaults.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..rule import EXACT, factor, lossy_tolerance  # noqa: E402


def device_label(g: pd.DataFrame) -> str:
    """``cpu (Intel Xeon ...)`` or ``cuda (NVIDIA H200)``: the device of a run, named."""
    r = g.iloc[0]
    dev = str(r.device)
    name = r.gpu_name if dev.startswith("cuda") else r.cpu_name
    return f"{dev} ({name})" if isinstance(name, str) and name else dev


def run_label(g: pd.DataFrame) -> str:
    """``run <id>``, or for merged runs ``3 runs merged (<first> .. <last>)``, each run by the
    date and time its id starts with."""
    ids = list(dict.fromkeys(g.sort_values("timestamp").run_id))
    if len(ids) == 1:
        return f"run {ids[0]}"
    return f"{len(ids)} runs merged ({ids[0][:15]} .. {ids[-1][:15]})"


def rule_ratio(acc: pd.DataFrame) -> pd.Series:
    """Error over the rule's limit, error / (k x same-dtype torch error): the accuracy table's
    number (1.0 = at the limit; NaN/Inf error -> inf)."""
    k = acc.tensor.map(factor).astype(float)
    limit = k * acc.baseline_max_abs_err
    r = acc.max_abs_err / limit.where(limit > 0)
    r = r.where(limit > 0, np.where(acc.max_abs_err == 0, 0.0, np.inf))
    return r.where(np.isfinite(acc.max_abs_err), np.inf)


def precisions(df: pd.DataFrame) -> pd.Series:
    """Each row's declared precision (``exact`` where the column is missing or null: rows
    written before it existed)."""
    if "precision" not in df:
        return pd.Series(EXACT, index=df.index, dtype=object)
    return df.precision.where(df.precision.notna(), EXACT).astype(object)


def lossy_tolerances(df: pd.DataFrame) -> pd.DataFrame:
    """``cos_tol`` and ``rel_tol`` of each lossy row (NaN on exact rows): the limits of the rule
    that graded it (its ``tol_cos_sim`` / ``tol_rel_l1``), else (rows written before those
    columns) the precision's default."""
    prec = precisions(df)
    cols = {}
    for name, col, field in (
        ("cos_tol", "tol_cos_sim", "cos_sim"),
        ("rel_tol", "tol_rel_l1", "rel_l1"),
    ):
        given = df[col].astype(float) if col in df else pd.Series(np.nan, index=df.index)
        default = prec.map(
            lambda p, f=field: np.nan if p == EXACT else getattr(lossy_tolerance(p), f)
        )
        cols[name] = given.where(given.notna(), default.astype(float)).where(prec != EXACT)
    return pd.DataFrame(cols, index=df.index, dtype=float)


def lossy_ratio(acc: pd.DataFrame) -> pd.Series:
    """A lossy row's distance to its rule, the larger of rel_l1 / rel_l1 tolerance and
    (1 - cos_sim) / (1 - cos_sim tolerance): 1.0 at the limit, > 1 failing; NaN or infinite
    metrics -> inf (they fail)."""
    tol = lossy_tolerances(acc)

    def over(x: pd.Series, limit: pd.Series) -> pd.Series:
        x, limit = x.astype(float), limit.astype(float)
        r = x / limit.where(limit > 0)
        return r.where(limit > 0, np.where(x <= 0, 0.0, np.inf))

    rel = acc.rel_l1.astype(float) if "rel_l1" in acc else pd.Series(np.nan, index=acc.index)
    cos = acc.cos_sim.astype(float) if "cos_sim" in acc else pd.Series(np.nan, index=acc.index)
    r = np.maximum(over(rel, tol.rel_tol), over(1.0 - cos, 1.0 - tol.cos_tol))
    return r.where(np.isfinite(rel) & np.isfinite(cos), np.inf)


def accuracy_ratio(acc: pd.DataFrame) -> pd.Series:
    """Each accuracy row's distance to the rule that graded it (1.0 = at the limit): exact rows
    by :func:`rule_ratio`, lossy rows by :func:`lossy_ratio`."""
    lossy = precisions(acc) != EXACT
    r = rule_ratio(acc)
    if lossy.any():
        r = r.where(~lossy, lossy_ratio(acc))
    return r


def _backend_labels(acc: pd.DataFrame, backends: list[str]) -> list[str]:
    """Backend names for the axis, a lossy one marked ``(lossy int8)``."""
    prec = precisions(acc).groupby(acc.backend).first()
    return [b if prec.get(b, EXACT) == EXACT else f"{b} (lossy {prec[b]})" for b in backends]


_LOSSY_WORDS = "lossy: max(rL1 / tol, (1 - cos) / (1 - tol))"


def accuracy_plot(df: pd.DataFrame, out: Path) -> list[Path]:
    """The accuracy figures of one run (or of runs merged): worst ratio per backend and tensor,
    and a case x backend heatmap of the worst ratio over the tensors."""
    acc = df[(df.kind == "accuracy") & df.tensor.notna()].copy()
    if acc.empty:
        return []
    acc["ratio"] = accuracy_ratio(acc)
    any_lossy = bool((precisions(acc) != EXACT).any())
    run = f"{run_label(acc)} on {device_label(acc)}"
    worst = (
        acc.groupby(["backend", "tensor"], sort=False)
        .agg(ratio=("ratio", "max"), ok=("accuracy_ok", "all"))
        .reset_index()
    )
    tensors = list(dict.fromkeys(acc.tensor))  # out, lse, then each problem's gradients
    backends = list(dict.fromkeys(worst.backend))
    top = max(2.0, float(np.nanmax(worst.ratio.replace(np.inf, np.nan).fillna(1.0))) * 1.5)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(backends) + 2), 4.5))
    width = 0.8 / len(tensors)
    for i, t in enumerate(tensors):
        w = worst[worst.tensor == t].set_index("backend").reindex(backends)
        xs = [j + i * width for j in range(len(backends))]
        bars = ax.bar(
            xs,
            w.ratio.replace(np.inf, top).clip(lower=1e-3),
            width,
            label=t,
            color=f"C{i}",
            edgecolor="black",
            linewidth=0.3,
        )
        for bar, ok in zip(bars, w.ok):
            if ok is False or ok is np.False_:  # failed the rule: hatched, red edge
                bar.set_hatch("xxx")
                bar.set_edgecolor("red")
    ax.axhline(1.0, color="red", ls="--", lw=1)
    ax.text(len(backends) - 0.5, 1.0, "limit", fontsize=7, va="bottom", ha="right", color="red")
    ax.set_yscale("log")
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(backends))],
        _backend_labels(acc, backends),
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ylabel = "worst err / (k x same-dtype torch err)"
    ax.set_ylabel(f"exact: {ylabel}\n{_LOSSY_WORDS}" if any_lossy else ylabel, fontsize=8)
    lossy = "\nlossy backends by their own rule's tolerances (1 = the limit)" if any_lossy else ""
    ax.set_title(
        f"accuracy against the fp32 reference, k = 2 out/lse, 3 grads (hatched red: failed)"
        f"{lossy}\n{run}",
        fontsize=9,
    )
    ax.legend(fontsize=7, ncol=len(tensors))
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path, _accuracy_heatmap(acc, run, out / "accuracy_cases.png", any_lossy)]


def _accuracy_heatmap(acc: pd.DataFrame, run: str, path: Path, any_lossy: bool = False) -> Path:
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cases = list(dict.fromkeys(acc.case_id))
    backends = list(dict.fromkeys(acc.backend))
    grid = acc.groupby(["case_id", "backend"]).agg(
        ratio=("ratio", "max"), ok=("accuracy_ok", "all")
    )
    ratio = grid.ratio.unstack().reindex(index=cases, columns=backends)
    ok = grid.ok.unstack().reindex(index=cases, columns=backends)
    vals = ratio.to_numpy(dtype=float)
    bounds = [0, 0.5, 1.0, 2.0, 10.0, 1e300]
    cmap = ListedColormap(["#1a9850", "#a6d96a", "#fdae61", "#d73027", "#7f0000"]).with_extremes(
        bad="white"
    )
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(backends) + 4), max(3, 0.28 * len(cases) + 2)))
    shown = np.where(np.isinf(vals), 1e299, vals)
    im = ax.imshow(
        np.ma.masked_invalid(shown), cmap=cmap, norm=BoundaryNorm(bounds, cmap.N), aspect="auto"
    )
    for (i, j), v in np.ndenumerate(vals):
        if np.isnan(v):
            continue
        failed = ok.iat[i, j] is False or ok.iat[i, j] is np.False_
        txt = ("FAIL " if failed else "") + ("inf" if np.isinf(v) else f"{v:.2f}")
        ax.text(j, i, txt, ha="center", va="center", fontsize=6, weight="bold" if failed else None)
    labels = _backend_labels(acc, backends)
    ax.set_xticks(range(len(backends)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(cases)), cases, fontsize=6)
    cb = fig.colorbar(im, ax=ax, ticks=[0.25, 0.75, 1.5, 6, 1e299])
    cb.ax.set_yticklabels(["< 0.5", "0.5-1", "1-2 (over)", "2-10", "> 10"], fontsize=7)
    what = "worst err / (k x same-dtype torch err)"
    what = f"exact: {what}\n{_LOSSY_WORDS}\n" if any_lossy else f"{what} "
    ax.set_title(f"{what}per case; 1 = the limit; blank: not run\n{run}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
