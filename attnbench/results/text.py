"""Rows as short text: status words, a perf cell, one line per (backend, case). Shared by the
run's progress lines and the tables."""

from __future__ import annotations

import math


def sig3(x: float) -> str:
    """Three significant figures, trailing zeros kept (2.00, 64.0, 0.913); whole from 100."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:#.3g}"


def throughput(tflops: float | None) -> str:
    """Three significant figures, in GFLOP/s below 1 TFLOP/s (CPU runs), else TFLOP/s."""
    if tflops is None or not math.isfinite(tflops):
        return "-"
    return f"{sig3(tflops)} TFLOP/s" if tflops >= 1 else f"{sig3(tflops * 1e3)} GFLOP/s"


def memory_bound(problem: str | None) -> bool:
    """A problem judged in bytes (its first plot axis is GB/s: decode)."""
    from ..problems import PROBLEMS

    p = PROBLEMS.get(problem or "attention")
    return p is not None and bool(p.plot_axes) and p.plot_axes[0][1] == "gbps"


def bandwidth(gbps: float | None) -> str:
    """Three significant figures of GB/s."""
    if gbps is None or not math.isfinite(gbps):
        return "-"
    return f"{sig3(gbps)} GB/s"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def lossy_suffix(r: dict) -> str:
    """`` fp8 rL1 0.0493 +0.081 ms quant``: a lossy row's out relative L1 and its quantization
    time (when measured apart); empty for an exact row."""
    text = ""
    precision = r.get("precision")
    if isinstance(precision, str) and precision != "exact" and _finite(r.get("rel_l1")):
        text += f" {precision} rL1 {r['rel_l1']:.3g}"
    if _finite(r.get("quant_ms")):
        text += f" +{sig3(r['quant_ms'])} ms quant"
    return text


def perf_cell(r: dict, lossy: bool = True) -> str:
    """``0.213 ms 12.3 GFLOP/s``: the median time and the throughput it gives (GB/s for a
    problem judged in bytes, e.g. ``0.031 ms 16.6 GB/s`` for decode), then (``lossy``) what
    :func:`lossy_suffix` says of a lossy row: its speed is never read without its error."""
    if memory_bound(r.get("problem")) and r.get("gbps") is not None:
        text = f"{sig3(r['latency_ms'])} ms {bandwidth(r['gbps'])}"
    else:
        text = f"{sig3(r['latency_ms'])} ms {throughput(r['tflops'])}"
    return text + lossy_suffix(r) if lossy else text


def status_text(status: str, message: str | None) -> str:
    """``status: message``, once: unsupported reasons already start with ``unsupported:``."""
    message = (message or "").strip()
    if message.startswith(f"{status}:") or message.startswith(f"{status} "):
        return message
    return f"{status}: {message}".strip().rstrip(":")


def case_line(rows: list[dict]) -> str:
    """One line for one backend on one case (perf, output that is not a terminal)."""
    r0 = rows[0]
    parts = []
    for r in rows:
        if r["status"] == "ok":
            parts.append(f"{r['mode']} {perf_cell(r)}")
        elif r["status"] == "accuracy_failed":
            parts.append(f"{r['mode']} wrong ({r.get('message') or 'accuracy failed'})")
        else:
            parts.append(f"{r['mode']} {r['status']}")
    return f"{r0['case_id']} · {r0['backend']}: " + "; ".join(parts)
