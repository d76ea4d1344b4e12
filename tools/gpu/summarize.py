"""Short tables from a results folder, for a device call's output tail and the closing notes.

python tools/gpu/summarize.py RESULTS_DIR [--dtype bf16] [--backends a,b,c]
"""

import argparse

import pandas as pd

ap = argparse.ArgumentParser()
ap.add_argument("results")
ap.add_argument("--dtype", default=None)
ap.add_argument("--backends", default=None)
ap.add_argument("--hd", default=None)
a = ap.parse_args()

df = pd.read_parquet(a.results)
pd.set_option("display.width", 250, "display.max_columns", 40, "display.max_rows", 400)
perf = df[df.kind == "perf"]
if a.dtype:
    perf = perf[perf.dtype == a.dtype]
if a.hd:
    perf = perf[perf.head_dim.isin([int(x) for x in a.hd.split(",")])]
if a.backends:
    perf = perf[perf.backend.isin(a.backends.split(","))]
if len(perf):
    perf = perf.assign(
        cell=[
            f"{t:.0f}" if s == "ok" else ("WRONG" if s == "accuracy_failed" else s[:5])
            for t, s in zip(perf.tflops.fillna(0), perf.status)
        ]
    )
    tab = perf.pivot_table(
        index=["dtype", "mode", "causal", "head_dim", "seqlen_q"],
        columns="backend",
        values="cell",
        aggfunc="last",
    )
    print(tab.to_string())
acc = df[(df.kind == "accuracy")]
if len(acc):
    g = acc.groupby("backend")
    summ = pd.DataFrame(
        {
            "ok_rows": g.apply(lambda d: int((d.status == "ok").sum())),
            "failed": g.apply(lambda d: int((d.status == "accuracy_failed").sum())),
            "error": g.apply(lambda d: int(d.status.isin(["error", "oom"]).sum())),
            "unsupported_cases": g.apply(
                lambda d: int(d[d.status == "unsupported"].case_id.nunique())
            ),
        }
    )
    print(summ.to_string())
    bad = acc[acc.status.isin(["accuracy_failed", "error", "oom"])]
    for _, r in bad.drop_duplicates(["backend", "case_id"]).head(25).iterrows():
        print(f"  {r.backend} {r.case_id} {r.status}: {str(r.message)[:150]}")
