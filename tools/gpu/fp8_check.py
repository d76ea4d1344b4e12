"""One-call GPU check of our FP8/INT8 forward (``triton_fp8*``, ``triton_int8``): accuracy, then
TFLOP/s beside bf16.

Usage (on the GPU machine, from the repo root)::

    python tools/gpu/fp8_check.py                      # ~2-4 min: checks + timings, no tuning
    python tools/gpu/fp8_check.py --configs --head-dims 128 --seqlens 8192
                                                       # autotune; TFLOP/s of every candidate

1. Accuracy (the lossy fp8 / int8 rule, :mod:`attnbench.rule`) of the five variants on awkward shapes:
   batch > 1, odd lengths, Sq != Sk both ways with causal, GQA/MQA, head dims 64/128/256,
   bf16/fp16; the K-outlier case (offset 16) for every variant (plain and rotated are expected
   to fail it, smoothed ones to pass).
2. Forward TFLOP/s (:func:`attnbench.run.timing.bench`, median, as ``attnbench perf --sweep
   lowp_seqlen`` times them) at 16k tokens per batch, model width 2048, bf16, causal and not:
   the five variants (attention only; their quantization apart, ``quant`` ms), ``sage`` when
   installed, and the bf16 anchors ``triton_fa2``, ``sdpa_cudnn`` (``fa4`` when installed).
   Each timed backend prints its verdict on that case (out's rel L1 for lossy ones).

Without ``--configs`` the kernel runs with the first config that fits (``ATTNBENCH_FP8_TUNE=0``,
quick); with it, it autotunes and every candidate's TFLOP/s is printed. Targets (issue #28):
``triton_fp8`` >= 800 TFLOP/s at head dim 128, S >= 8k, non-causal, >= 1.5x ``sage``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", action="store_true", help="autotune and print every candidate")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--seqlens", default="2048,8192,16384")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    return ap.parse_args()


ARGS = parse()
os.environ["ATTNBENCH_FP8_TUNE"] = "1" if ARGS.configs else "0"
os.environ["ATTNBENCH_TRITON_FA2_TUNE"] = "0"  # the bf16 anchor with its shipped H200 choices
if ARGS.configs:  # time every candidate again (kept choices would skip the timings printed here)
    os.environ["ATTNBENCH_RETUNE"] = "1"

import torch  # noqa: E402
from common import candidate_line, grade_cases  # noqa: E402  (tools/gpu/common.py)

from attnbench.backends import REGISTRY  # noqa: E402
from attnbench.kernels._triton import tuning  # noqa: E402
from attnbench.kernels.fp8 import fwd  # noqa: E402
from attnbench.problems.attention import AttentionCase as Case  # noqa: E402
from attnbench.problems.attention.case import case_flops  # noqa: E402
from attnbench.problems.attention.inputs import make_inputs  # noqa: E402
from attnbench.run.check import check_backend, make_truth, verdict  # noqa: E402
from attnbench.run.timing import autotune_bench, bench, mode_fn, timing_columns  # noqa: E402

tuning.set_bench(autotune_bench)  # candidates timed as attnbench perf times them

DEV = torch.device("cuda")
VARIANTS = ("triton_fp8", "triton_fp8_rot", "triton_fp8_smooth", "triton_fp8_pv16", "triton_int8")
ANCHORS = ("sage", "triton_fa2", "sdpa_cudnn", "fa4")


def check_cases():
    return [
        Case(2, 16, 4, 1000, 1000, 64, "bf16", causal=True),
        Case(1, 8, 8, 777, 1537, 128, "fp16", causal=True),
        Case(2, 8, 1, 1537, 777, 128, "bf16", causal=True),
        Case(2, 16, 16, 1024, 1024, 128, "fp16"),
        Case(2, 4, 4, 513, 513, 256, "bf16"),
    ]


OUTLIERS = [Case(1, 16, 4, 4096, 4096, 128, "bf16", k_channel_offset=16.0)]
SMOOTHED = ("triton_fp8_smooth", "triton_fp8_pv16", "triton_int8")  # pass OUTLIERS; others fail


def bench_case(d, s, causal):
    """Forward TFLOP/s of every variant and anchor on one case (each with its verdict)."""
    b, h = 16384 // s, 2048 // d
    case = Case(b, h, h, s, s, d, "bf16", causal)
    flops = case_flops(case, "fwd")
    inp = make_inputs(case, "cuda", seed=0)
    truth = make_truth(inp, case, grads=False)
    cells, marks, lines = {}, [], []
    for name in VARIANTS + ANCHORS:
        be = REGISTRY[name]
        why = be.why_unsupported(case, "cuda", "fwd")
        if why:
            marks.append(f"{name}: {why[:60]}")
            continue
        errs = check_backend(be, case, inp, truth, grads=False)
        ok, msg = verdict(errs, "fwd")
        out = next(e for e in errs if e.tensor == "out")
        mark = f"rL1 {out.rel_l1:.3f}" if be.caps.precision != "exact" else "ok"
        marks.append(f"{name} {mark if ok else 'FAIL ' + str(msg)[:40]}")
        p = be.prepare(inp, case)
        t = bench(mode_fn(lambda p=p, be=be: be.forward(p, case), inp.dout, "fwd"), p.leaves, DEV)
        cells[name] = timing_columns(t, flops)["tflops"]
        quant = be.quant_fn(p, case)
        if quant is not None:
            cells[name + " quant"] = bench(quant, (), DEV).median_ms
        if ARGS.configs and name == "triton_fp8":
            lines.append(candidate_line(fwd._fwd_kernel, "fwd", flops))
    row = []
    for n in VARIANTS + ANCHORS:
        tf = f"{cells[n]:5.0f}" if n in cells else "    -"
        q = f"+{cells[n + ' quant']:.2f}" if n + " quant" in cells else ""
        row.append(tf + q)
    tag = "causal" if causal else "full  "
    print(f"D{d:<4}S{s:<6}{tag} B{b:<2}H{h:<3}| " + " ".join(row) + " | " + "; ".join(marks))
    for line in lines:
        print(line)


def main():
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  configs {fwd.ARCH}")
    t0 = time.time()
    ok = True
    if not ARGS.skip_check:
        for name in VARIANTS:
            ok &= grade_cases(REGISTRY[name], check_cases(), "cuda", grads=False)
        print("== K channel offset 16 (expected: plain and rotated FAIL, smoothed ok) ==")
        for name in VARIANTS:
            passed = grade_cases(REGISTRY[name], OUTLIERS, "cuda", grads=False)
            ok &= passed == (name in SMOOTHED)
        print(f"accuracy: {'all ok' if ok else 'FAILURES'} ({time.time() - t0:.0f}s)", flush=True)
    if not ARGS.skip_bench:
        print("== fwd TFLOP/s (+quant ms), bf16, 16k tokens/batch, width 2048 ==")
        print("case                      | " + " ".join(VARIANTS + ANCHORS) + " | verdicts")
        for d in (int(x) for x in ARGS.head_dims.split(",")):
            for causal in (False, True):
                for s in (int(x) for x in ARGS.seqlens.split(",")):
                    bench_case(d, s, causal)
    print(f"total {time.time() - t0:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
