"""The roofline of a run: every perf row placed by its arithmetic intensity (FLOPs / bytes, the
problem's own counts) and its TFLOP/s, under the two roofs measured in that run: the matmul
ceiling (flat) and the memory bandwidth (``bw_gbps``, the slope). Attention at long sequences
sits under the flat roof, decode under the slope: one picture says which roof limits a kernel
and how far below it the kernel is. Rows that failed the accuracy check are red crosses."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .plot_accuracy import device_label, run_label  # noqa: E402

_MARKERS = {"attention": "o", "piecewise": "s", "decode": "^"}


def roofline_plot(df: pd.DataFrame, out: Path) -> list[Path]:
    """``roofline.png`` (and ``roofline_<dtype>.png`` when the run has several dtypes, each
    under its own matmul roof) in ``out``; nothing when no perf row has bytes."""
    perf = df[(df.kind == "perf") & df.status.isin(["ok", "accuracy_failed"])]
    perf = perf[perf.bytes.notna() & (perf.bytes > 0) & perf.flops.notna() & perf.tflops.notna()]
    if perf.empty:
        return []
    files = []
    dtypes = sorted(perf.dtype.unique())
    for dt in dtypes:
        g = perf[perf.dtype == dt].assign(intensity=lambda d: d.flops / d.bytes)
        name = "roofline.png" if len(dtypes) == 1 else f"roofline_{dt}.png"
        files.append(_draw(g, dt, out / name))
    return files


def _draw(g: pd.DataFrame, dtype: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = plt.get_cmap("tab10" if g.backend.nunique() <= 10 else "tab20")
    for i, (be, d) in enumerate(g.groupby("backend", sort=True)):
        ok = d[d.status == "ok"]
        marker = _MARKERS.get(d.problem.iloc[0], "D")
        if len(ok):
            ax.scatter(ok.intensity, ok.tflops, s=22, marker=marker, label=be, color=colors(i % 20))
        bad = d[d.status == "accuracy_failed"]
        if len(bad):
            ax.scatter(bad.intensity, bad.tflops, s=60, marker="x", color="red",
                       label=f"{be}: wrong output")  # fmt: skip
    x = np.logspace(np.log10(g.intensity.min() / 2), np.log10(g.intensity.max() * 2), 200)
    peak = g.matmul_tflops.median() if g.matmul_tflops.notna().any() else None
    bw = g.bw_gbps.median() if "bw_gbps" in g and g.bw_gbps.notna().any() else None
    if bw is not None:
        slope = bw * x / 1e3  # GB/s x FLOP/byte = GFLOP/s
        roof = np.minimum(slope, peak) if peak is not None else slope
        ax.plot(x, roof, "--", color="gray", lw=1, label=f"roofs: {bw:.0f} GB/s"
                + (f", {peak:.0f} TFLOP/s" if peak is not None else ""))  # fmt: skip
    elif peak is not None:
        ax.axhline(peak, color="gray", ls="--", lw=1, label=f"matmul ceiling {peak:.0f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte, the problem's counts)")
    ax.set_ylabel("TFLOP/s (median)")
    ax.set_title(f"roofline, {dtype}\n{run_label(g)} on {device_label(g)}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
