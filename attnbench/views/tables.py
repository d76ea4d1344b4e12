"""Terminal tables (rich): the accuracy pass/fail matrix and the perf summary."""

from __future__ import annotations

import math
import re
from collections import defaultdict

from rich.table import Table

from ..results.text import (  # noqa: F401
    case_line,
    lossy_suffix,
    memory_bound,
    perf_cell,
    sig3,
    status_text,
    throughput,
)
from ..rule import is_lossy, lossy_text, ratio

_STATUS_CELL = {"unsupported": "[dim]—[/]", "oom": "[yellow]OOM[/]", "error": "[red]ERR[/]"}


def _backends(rows):
    return list(dict.fromkeys(r["backend"] for r in rows))


def _is_lossy(r) -> bool:
    """Whether a row was graded by the lossy rule: by its ``precision`` column, else (rows
    written before perf rows carried it) by its verdict's message (``lossy int8 rule: ...``)."""
    if r.get("precision") is not None and r.get("precision") == r.get("precision"):
        return is_lossy(r["precision"])
    return str(r.get("message") or "").startswith("lossy ")


def _lossy_worst(tens: list[dict]) -> dict:
    """The worst lossy tensor: the lowest cosine similarity, then the highest relative L1."""

    def key(r):
        cos, rel = r.get("cos_sim"), r.get("rel_l1")
        cos = -math.inf if cos is None or cos != cos else cos
        rel = math.inf if rel is None or rel != rel else rel
        return cos, -rel

    return min(tens, key=key)


def accuracy_table(rows: list[dict]) -> Table:
    """Cases x backends; a cell is PASS/FAIL with the worst error ratio to same-dtype torch
    (relative to the rule's factor: 1.0 means right at the limit). A backend graded by the lossy
    rule reads ``PASS lossy cos 0.9995 rL1 0.021``: its verdict, then the worst tensor's cosine
    similarity and relative L1 (``FAIL lossy out cos ...`` names the failing tensor)."""
    names = [
        b
        for b in _backends(rows)
        if any(r["backend"] == b and r["status"] != "unsupported" for r in rows)
    ]
    cells: dict[tuple[str, str], str] = {}
    grouped = defaultdict(list)
    for r in rows:
        grouped[(r["case_id"], r["backend"])].append(r)
    for (case, be), rs in grouped.items():
        st = {r["status"] for r in rs}
        tens = [r for r in rs if r.get("tensor")]
        if tens and any(_is_lossy(r) for r in tens):
            ok = all(r["accuracy_ok"] for r in tens)
            bad = [r for r in tens if not r["accuracy_ok"]]
            worst = _lossy_worst(bad or tens)
            label = "[green]PASS lossy[/]" if ok else f"[red]FAIL lossy {worst['tensor']}[/]"
            cells[(case, be)] = f"{label} {lossy_text(worst.get('cos_sim'), worst.get('rel_l1'))}"
        elif tens:
            worst = max(tens, key=lambda r: _rule_fraction(r))
            frac = _rule_fraction(worst)
            ok = all(r["accuracy_ok"] for r in tens)
            label = "[green]PASS[/]" if ok else f"[red]FAIL {worst['tensor']}[/]"
            cells[(case, be)] = f"{label} {frac:.2f}" if math.isfinite(frac) else label
        else:
            cells[(case, be)] = _STATUS_CELL.get(next(iter(st)), next(iter(st)))
    title = "accuracy: worst err / (k x torch same-dtype err), k=2 out/lse, 3 grads"
    if any(_is_lossy(r) for r in rows if r.get("tensor")):
        title += "; lossy backends: worst cosine similarity and relative L1 vs their tolerances"
    t = Table(title=title, title_justify="left")
    t.add_column("case", no_wrap=True)
    for b in names:
        t.add_column(b, justify="center")
    for case in dict.fromkeys(r["case_id"] for r in rows):
        t.add_row(case, *[cells.get((case, b), "") for b in names])
    return t


def _rule_fraction(r) -> float:
    return ratio(r["tensor"], r.get("max_abs_err"), r.get("baseline_max_abs_err"))


def perf_table(rows: list[dict]) -> Table:
    """(mode, case) x backends: median ms and throughput; the best correct backend in bold
    green; accuracy failures are marked, never shown as a plain number; a backend that passed
    the lossy rule is marked ``lossy`` (and is never the bold one: it computes something else)."""
    names = [
        b
        for b in _backends(rows)
        if any(r["backend"] == b and r["status"] != "unsupported" for r in rows)
    ]
    t = Table(
        title="perf: median time and throughput [% of the measured matmul ceiling, or of the memory "
        "bandwidth for decode]; ✗ = failed "
        "the accuracy check, number withheld; lossy = passed the lossy (fp8/int8) rule, not the "
        "exact one",
        title_justify="left",
    )
    t.add_column("mode")
    t.add_column("case", no_wrap=True)
    for b in names:
        t.add_column(b, justify="right")
    keys = list(dict.fromkeys((r["mode"], r["case_id"]) for r in rows))
    by = {(r["mode"], r["case_id"], r["backend"]): r for r in rows}
    for mode, case in sorted(keys, key=lambda k: ("fwd", "bwd", "fwd_bwd").index(k[0])):
        good = [
            by[(mode, case, b)]["tflops"]
            for b in names
            if (mode, case, b) in by
            and by[(mode, case, b)]["status"] == "ok"
            and not _is_lossy(by[(mode, case, b)])  # the best exact one: lossy is marked apart
        ]
        best = max(good) if good else None
        cells = []
        for b in names:
            r = by.get((mode, case, b))
            if r is None:
                cells.append("")
            elif r["status"] == "ok":
                cell = perf_cell(r, lossy=False)
                cell = f"[bold green]{cell}[/]" if r["tflops"] == best else cell
                # utilisation against the roof that binds: bandwidth for a problem judged in bytes
                pct = r.get("pct_of_bw") if memory_bound(r.get("problem")) else None
                pct = pct if pct is not None else r.get("pct_of_peak")
                cell += f" [dim]{pct:.0f}%[/]" if pct is not None else ""
                cells.append(cell + (" [yellow]lossy[/]" + lossy_suffix(r) if _is_lossy(r) else ""))
            elif r["status"] == "accuracy_failed":
                cells.append("[bold red]✗ wrong[/]")
            else:
                cells.append(_STATUS_CELL.get(r["status"], r["status"]))
        t.add_row(mode, case, *cells)
    return t


def unrepeatable(rows: list[dict], tolerance: float = 0.02) -> list[str]:
    """With ``--repeat N``: the cases whose timings spread by more than ``tolerance``
    ((max - min) / median of the N medians), worst first."""
    timed = [r for r in rows if r.get("repeat_spread") is not None]
    bad = sorted(
        (r for r in timed if r["repeat_spread"] > tolerance), key=lambda r: -r["repeat_spread"]
    )
    if not timed:
        return []
    n = timed[0]["repeats"]
    head = f"repeatability ({n} timings per case): {len(timed) - len(bad)}/{len(timed)} within"
    lines = [f"[bold]{head} {tolerance:.0%}[/]"]
    for r in bad[:15]:
        lines.append(
            f"[yellow]  not repeatable: {r['backend']} {r['mode']} {r['case_id']}: "
            f"{r['latency_ms_min']:.4g}-{r['latency_ms_max']:.4g} ms "
            f"(spread {r['repeat_spread']:.1%})[/]"
        )
    if len(bad) > 15:
        lines.append(f"[yellow]  ... and {len(bad) - 15} more[/]")
    return lines


_NOT_HERE = re.compile(r"^(\S+) does not run on (\w+) \(runs on: (.+)\)$")


def unsupported_reasons(rows: list[dict]) -> list[str]:
    """One line per backend and distinct reason, for the end of a run; the backends that do
    not run on this device at all share one line."""
    seen = dict.fromkeys(
        (r["backend"], r["message"])
        for r in rows
        if r["status"] in ("unsupported", "error", "oom") and r.get("message")
    )
    elsewhere: dict[str, list[str]] = defaultdict(list)
    lines = []
    for b, m in seen:
        hit = _NOT_HERE.match(m)
        if hit and hit.group(1) == b:
            elsewhere[hit.group(2)].append(b)
        else:
            lines.append(f"{b}: {m}")
    head = [
        f"not run on {dev} (they run on other devices; `attnbench list` says which): "
        + ", ".join(dict.fromkeys(names))
        for dev, names in elsewhere.items()
    ]
    return head + lines


BAD = ("error", "oom", "accuracy_failed")


def _wrong(r) -> str:
    """``dv (1.16x the limit)``: a failing tensor and its error over the rule's limit (a lossy
    one: ``out (lossy: cos 0.9812 rL1 0.124)``)."""
    if _is_lossy(r):
        return f"{r['tensor']} (lossy: {lossy_text(r.get('cos_sim'), r.get('rel_l1'))})"
    frac = _rule_fraction(r)
    return r["tensor"] + (f" ({frac:.2f}x the limit)" if frac >= 0 else "")


def failed_cases(rows: list[dict]) -> list[str]:
    """The run's last lines when something failed: one per failed backend (strategy · local
    backend for distributed rows) x case (x mode for perf), naming the failing tensors with their
    error over the rule's limit, or the error; then, in words, what the failures are: an
    accuracy failure is a finding about that backend on that case (its output disagrees with the
    fp32 reference by more than the rule allows), an error is the backend failing to run. Empty
    when nothing failed."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["status"] in BAD:
            mode = r["mode"] if r["kind"] in ("perf", "dist_perf") else None
            name = f"{r['strategy']} · {r['backend']}" if r.get("strategy") else r["backend"]
            groups[(name, r["case_id"], mode)].append(r)
    if not groups:
        return []
    lines = [f"{len(groups)} cases failed:"]
    wrong, broken = set(), set()
    for (be, case, mode), rs in groups.items():
        bad = [r for r in rs if r.get("tensor") and r["status"] == "accuracy_failed"]
        r = rs[0]
        if bad:
            what = "wrong " + ", ".join(dict.fromkeys(_wrong(x) for x in bad))
        elif r["status"] == "accuracy_failed":
            what = r.get("message") or "accuracy failed"
        else:
            what = status_text(r["status"], r.get("message"))
        (wrong if r["status"] == "accuracy_failed" or bad else broken).add(be.split(" · ")[-1])
        lines.append(f"  {be}  {case}" + (f"  {mode}" if mode else "") + f"  {what}")
    if wrong:
        lossy = any(_is_lossy(r) for rs in groups.values() for r in rs)
        rule = "k x same-dtype torch's error" + (
            "; lossy backends: their cos_sim / rel_l1 tolerances" if lossy else ""
        )
        lines.append(
            f"exit 1: {', '.join(sorted(wrong))} computed outputs further from the fp32 reference "
            f"than the rule allows ({rule}): a finding about "
            + ("that backend" if len(wrong) == 1 else "those backends")
            + ", kept in the results with its numbers"
        )
    if broken:
        lines.append(f"exit 1: {', '.join(sorted(broken))} failed to run some cases (see above)")
    return lines


def dist_perf_table(rows: list[dict], world: int) -> Table:
    """One line per (strategy, local backend, case, mode) of a distributed perf run: the slowest
    rank's time (the group row), TFLOP/s per device, both efficiencies, each rank's time and the
    accuracy verdict."""
    t = Table(
        title=f"distributed perf, world size {world} (slowest rank; TFLOP/s per device)",
        title_justify="left",
    )
    cols = ("strategy", "local", "case", "mode", "ms", "TFLOP/s", "efficiency", "vs P x S/P")
    for c in (*cols, "per-rank ms", "accuracy"):
        t.add_column(c)
    timed = [r for r in rows if r.get("latency_ms") is not None and r.get("strategy") != "single"]
    per_rank = defaultdict(list)
    for r in timed:
        if r.get("rank") is not None:
            per_rank[_dist_key(r)].append((r["rank"], r["latency_ms"]))
    for g in (r for r in timed if r.get("rank") is None):
        eff, share = g.get("efficiency"), g.get("efficiency_share")
        t.add_row(
            *_dist_key(g),
            f"{g['latency_ms']:.3f}",
            f"{g['tflops']:.3g}",
            f"{eff:.0%}" if eff else "-",
            f"{share:.0%}" if share else "-",
            " ".join(f"{ms:.3f}" for _, ms in sorted(per_rank[_dist_key(g)])),
            "[green]ok[/]" if g["status"] == "ok" else "[red]FAIL[/]",
        )
    return t


def _dist_key(r: dict) -> tuple[str, str, str, str]:
    return r["strategy"], r["backend"], r["case_id"], r["mode"]


def _ratio_cell(x, threshold) -> str:
    if x is None or x != x or not math.isfinite(x):
        return "[dim]—[/]"
    lim = threshold if threshold is not None else 0.02
    style = "red" if x < 1 - lim else ("green" if x > 1 + lim else "")
    return f"[{style}]{x:.3f}[/]" if style else f"{x:.3f}"


def compare_header(comp) -> list[str]:
    """Lines printed above the comparison table: environment differences (in yellow), accuracy
    changes (lost verdicts in red, first), one-sided cases."""
    lines = [f"[bold]compare[/] NEW {comp.new_label} against BASE {comp.base_label}"]
    for col, (a, b) in comp.env_differences.items():
        lines.append(f"[bold yellow]different {col}:[/] BASE {', '.join(a)} / NEW {', '.join(b)}")
    for col, (a, b) in comp.info.items():
        lines.append(f"[dim]{col}: BASE {', '.join(a)} / NEW {', '.join(b)}[/]")
    for c in sorted(comp.accuracy_changes, key=lambda c: c["base"] is not True):
        lost = c["base"] is True
        word = {True: "PASS", False: "FAIL", None: "none"}
        verdict = f"{word[c['base']]} ({c['status_base']}) -> {word[c['new']]} ({c['status_new']})"
        style = "bold red" if lost else "green"
        msg = f": {c['message']}" if c.get("message") and lost else ""
        lines.append(f"[{style}]accuracy {verdict}: {c['case']}{msg}{_metric_change(c)}[/]")
    changed = comp.cases[comp.cases.config_changed]
    if len(changed):
        lines.append(
            f"[yellow]{len(changed)} cases ran another kernel config (marked *): "
            + ", ".join(f"{r.case_key} ({r.kernel_config_base} -> {r.kernel_config_new})"
                        for r in changed.head(4).itertuples())
            + (" ..." if len(changed) > 4 else "")
            + "[/]"
        )  # fmt: skip
    for side, cases in (("BASE", comp.base_only), ("NEW", comp.new_only)):
        if cases:
            shown = ", ".join(cases[:8]) + (
                f", ... ({len(cases)} in all)" if len(cases) > 8 else ""
            )
            lines.append(f"[dim]only in {side}: {shown}[/]")
    return lines


def _metric_change(c: dict) -> str:
    """`` (cos 0.999512 -> 0.981234, rL1 0.02104 -> 0.1241)``: an accuracy change's relative metrics on
    both sides, where either side has them ("" where neither does)."""
    parts = []
    for m, word, f in (("cos_sim", "cos", ".6f"), ("rel_l1", "rL1", ".4g")):
        a, b = c.get(f"{m}_base"), c.get(f"{m}_new")
        if a is None and b is None:
            continue
        shown = ["—" if v is None else format(v, f) for v in (a, b)]
        parts.append(f"{word} {shown[0]} -> {shown[1]}")
    return f" ({', '.join(parts)})" if parts else ""


def compare_table(comp) -> Table:
    """(backend, mode, case) rows: ms and TFLOP/s of both sides, NEW/BASE ratios; one geometric
    mean line per backend."""
    t = Table(
        title="speedup = NEW TFLOP/s / BASE TFLOP/s (> 1: NEW faster); ms ratio = NEW / BASE",
        title_justify="left",
    )
    for c in ("backend", "mode", "case", "BASE ms", "NEW ms", "BASE TF/s", "NEW TF/s"):
        t.add_column(c, justify="right" if c[0].isupper() else "left", no_wrap=c == "case")
    t.add_column("speedup", justify="right")
    t.add_column("ms ratio", justify="right")
    order = {m: i for i, m in enumerate(("fwd", "bwd", "fwd_bwd"))}
    geo = comp.geomean

    def num(v, f=".3g"):
        return "[dim]—[/]" if v is None or v != v else format(v, f)

    for be, g in comp.cases.groupby("backend", sort=False):
        g = g.assign(_o=g["mode"].map(order)).sort_values(["_o", "seqlen_q", "case_id"])
        for r in g.to_dict("records"):
            t.add_row(
                be,
                r["mode"],
                r["case_id"],
                num(r["ms_base"]),
                num(r["ms_new"]),
                num(r["tflops_base"], ".4g"),
                num(r["tflops_new"], ".4g"),
                _ratio_cell(r["speedup"], comp.threshold) + (" *" if r["config_changed"] else ""),
                num(r["ms_ratio"], ".3f"),
            )
        if be in geo:
            t.add_row(
                f"[bold]{be}[/]", "", "[bold]geometric mean[/]", "", "", "", "",
                _ratio_cell(geo[be], comp.threshold), "",
                end_section=True,
            )  # fmt: skip
    return t


def agreement_table(comp) -> Table:
    """Matched pairs per seqlen_q within 2% and 5% (|speedup - 1|): the repeatability of two
    runs of the same code."""
    t = Table(title="agreement: |speedup - 1| of matched ok pairs", title_justify="left")
    for c in ("seqlen_q", "pairs", "within 2%", "within 5%", "worst"):
        t.add_column(c, justify="right")
    for a in comp.agreement():
        n = a["pairs"]
        pct = [f"{a[k]}/{n} ({a[k] / n:.0%})" if n else "—" for k in ("within_2%", "within_5%")]
        worst = f"{a['worst']:.1%}" if a["worst"] is not None else "—"
        t.add_row(str(a["seqlen_q"]), str(n), *pct, worst, end_section=a["seqlen_q"] == "all")
    return t
