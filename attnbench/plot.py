"""Plots from stored results (matplotlib, PNG).

- ``perf_<problem>_<mode>_<causal>_d<head_dim>_<dtype>.png``: TFLOP/s against seqlen, one line
  per backend, the p20-p80 band shaded; points that failed the accuracy check are red crosses
  labelled ``wrong``, never part of the line (the piecewise sweep is drawn like FlagAttention's
  chart: one figure per mode, causal, head dim and dtype).
- ``perf_headdim_<problem>_<mode>_<causal>_s<seqlen>_<dtype>.png``: the same against head dim.
- ``accuracy.png``: worst error relative to same-dtype torch, per backend and tensor, with the
  rule's limits (2x out/lse, 3x grads).

Where several runs measured the same point, the newest wins.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .results import load_results  # noqa: E402


def _latest(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return df.sort_values("timestamp").drop_duplicates(keys, keep="last")


def _perf_plot(g: pd.DataFrame, x: str, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for be, d in g.groupby("backend", sort=False):
        d = d.sort_values(x)
        ok = d[d.status == "ok"]
        if len(ok):
            (line,) = ax.plot(ok[x], ok.tflops, marker="o", label=be)
            lo = ok.flops / (ok.latency_ms_p80 * 1e-3) / 1e12
            hi = ok.flops / (ok.latency_ms_p20 * 1e-3) / 1e12
            ax.fill_between(ok[x], lo, hi, alpha=0.2, color=line.get_color())
        wrong = d[d.status == "accuracy_failed"]
        if len(wrong):
            ax.scatter(
                wrong[x],
                wrong.tflops,
                marker="x",
                s=80,
                color="red",
                zorder=5,
                label=f"{be} (wrong output)",
            )
            for xv, yv in zip(wrong[x], wrong.tflops):
                ax.annotate(
                    "wrong",
                    (xv, yv),
                    color="red",
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(4, 4),
                )
    if "matmul_tflops" in g and g.matmul_tflops.notna().any():
        peak = g.matmul_tflops.median()
        ax.axhline(peak, color="gray", ls="--", lw=1, label=f"matmul ceiling {peak:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel("TFLOP/s (median; band p20-p80)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def perf_plots(df: pd.DataFrame, out: Path) -> list[Path]:
    perf = df[(df.kind == "perf") & df.status.isin(["ok", "accuracy_failed"]) & ~df.varlen]
    if perf.empty:
        return []
    perf = _latest(perf, ["backend", "case_id", "mode"])
    files = []
    by_seqlen = ["problem", "mode", "causal", "head_dim", "dtype"]
    for (prob, mode, causal, hd, dtype), g in perf.groupby(by_seqlen):
        if g.seqlen_q.nunique() < 2:
            continue
        tag = "causal" if causal else "full"
        path = out / f"perf_{prob}_{mode}_{tag}_d{hd}_{dtype}.png"
        _perf_plot(g, "seqlen_q", f"{prob} {mode}, {tag}, head dim {hd}, {dtype}", path)
        files.append(path)
    by_headdim = ["problem", "mode", "causal", "seqlen_q", "dtype"]
    for (prob, mode, causal, sq, dtype), g in perf.groupby(by_headdim):
        if g.head_dim.nunique() < 2:
            continue
        tag = "causal" if causal else "full"
        path = out / f"perf_headdim_{prob}_{mode}_{tag}_s{sq}_{dtype}.png"
        _perf_plot(g, "head_dim", f"{prob} {mode}, {tag}, seqlen {sq}, {dtype}", path)
        files.append(path)
    return files


def accuracy_plot(df: pd.DataFrame, out: Path) -> list[Path]:
    acc = df[(df.kind == "accuracy") & df.tensor.notna()]
    if acc.empty:
        return []
    acc = _latest(acc, ["backend", "case_id", "tensor"]).copy()
    acc["ratio"] = acc.max_abs_err / acc.baseline_max_abs_err.where(acc.baseline_max_abs_err > 0)
    worst = (
        acc.groupby(["backend", "tensor"], sort=False)
        .agg(ratio=("ratio", "max"), ok=("accuracy_ok", "all"))
        .reset_index()
    )
    tensors = list(dict.fromkeys(acc.tensor))  # out, lse, then each problem's gradients
    backends = list(dict.fromkeys(worst.backend))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(backends) + 2), 4.5))
    width = 0.8 / len(tensors)
    for i, t in enumerate(tensors):
        w = worst[worst.tensor == t].set_index("backend").reindex(backends)
        xs = [j + i * width for j in range(len(backends))]
        bars = ax.bar(
            xs,
            w.ratio.clip(lower=1e-3),
            width,
            label=t,
            color=f"C{i}",
            edgecolor="black",
            linewidth=0.3,
        )
        for bar, ok in zip(bars, w.ok):
            if ok is False:  # failed the rule: hatched, red edge
                bar.set_hatch("xxx")
                bar.set_edgecolor("red")
    ax.axhline(2, color="gray", ls="--", lw=1)
    ax.axhline(3, color="gray", ls=":", lw=1)
    ax.text(len(backends) - 0.5, 2, "2x (out, lse)", fontsize=7, va="bottom", ha="right")
    ax.text(len(backends) - 0.5, 3, "3x (grads)", fontsize=7, va="bottom", ha="right")
    ax.set_yscale("log")
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(backends))],
        backends,
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_ylabel("worst max err / same-dtype torch err")
    ax.set_title("accuracy against the fp32 reference (hatched red: failed the rule)", fontsize=10)
    ax.legend(fontsize=7, ncol=len(tensors))
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def make_plots(results_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    results_dir = Path(results_dir)
    df = load_results(results_dir)
    out = Path(out) if out is not None else results_dir / "_plots"
    out.mkdir(parents=True, exist_ok=True)
    files = perf_plots(df, out) + accuracy_plot(df, out)
    if not files:
        raise FileNotFoundError(f"{results_dir}: no perf or accuracy rows to plot")
    return files


def compare_plot(comp, path: Path) -> Path:
    """Speedup (NEW / BASE TFLOP/s) per matched case, one bar per case, grouped by backend and
    mode; the threshold drawn as a dashed line below 1."""
    d = comp.cases.dropna(subset=["speedup"])
    if d.empty:
        raise FileNotFoundError("no matched ok cases to plot")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
