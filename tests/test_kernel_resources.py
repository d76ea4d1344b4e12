"""python -m attnbench.kernels.resources: the kernels compile offline for sm_90 (no GPU) and the pruners'
shared-memory estimates agree with Triton's own count, so a config the pruner keeps fits.

Run in a subprocess: the test session interprets Triton (TRITON_INTERPRET=1), the tool compiles.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")
TOOL = ["-m", "attnbench.kernels.resources"]
LINE = re.compile(r"shared\s+(\d+) KiB \(estimate (\d+)\) (fits|OOR)\s+regs (\d+)\s+stack (\d+) B")


def run_tool(*args: str) -> list[str]:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run(
        [sys.executable, *TOOL, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    assert not any("error:" in ln for ln in lines), lines  # every config compiles offline
    return lines


@pytest.mark.parametrize(
    "package, kind, tiles",
    [
        ("piecewise", "fwd", "64x64w4s3,128x64w8s3bs2,64x64w4s3sp"),
        ("piecewise", "dq", "64x64w4s2,64x64w4s2sp"),
        ("triton_fa2", "fwd", "64x64w4s3"),
        ("fp8", "fwd", "128x64w8s2"),
        ("fp8", "fwd_pv16", "128x64w8s2"),
        ("fp8", "fwd_int8", "128x64w8s2"),
    ],
    ids=lambda x: x.replace(",", "+") if isinstance(x, str) else x,
)
def test_estimate_matches_tritons_count(package, kind, tiles):
    lines = run_tool(package, kind, "--head-dims", "64", "--tiles", tiles)
    assert len(lines) == len(tiles.split(",")), lines
    if package == "fp8":  # Q.K^T on FP8 (INT8) tensor cores; P @ V on FP8 or, pv16/int8, fp16
        qk = "s8" if kind == "fwd_int8" else "e4m3"
        assert f"m64n64k32 {qk}" in lines[0], lines
        assert ("m64n64k16 f16" in lines[0]) == (kind != "fwd"), lines
    for ln in lines:
        m = LINE.search(ln)
        assert m, ln
        shared, estimate, fits, regs, _ = m.groups()
        assert abs(int(shared) - int(estimate)) <= 2, ln
        assert fits == "fits" and 0 < int(regs) <= 255, ln


@pytest.mark.parametrize(
    "args, message",
    [
        (["piecewise", "fwd,nope"], "unknown kernel nope"),
        (["piecewise", "fwd", "--tiles", "128x64"], "bad tile '128x64'"),
        (["triton_fa2", "dq", "--head-dims", "six"], "invalid literal"),
        (["piecewise", "dkdv", "--tiles", "64x64w4s3bs2sp"], "bsB and sp exclude each other"),
    ],
    ids=["kernel", "tile", "head-dim", "bs-and-sp"],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    out = subprocess.run(
        [sys.executable, *TOOL, *args],
        env={**os.environ, "TRITON_INTERPRET": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out


def test_ptx_hash_is_printed_and_stable():
    """--ptx: the same kernel and config give the same instruction hash (refactor checks)."""
    first = run_tool("piecewise", "dq", "--head-dims", "64", "--tiles", "64x64w4s2", "--ptx")
    again = run_tool("piecewise", "dq", "--head-dims", "64", "--tiles", "64x64w4s2", "--ptx")
    assert re.search(r"ptx [0-9a-f]{12}$", first[0]) and first == again


def test_wgmma_serialization_is_reported():
    """--wgmma: ptxas serializes the fused piecewise dK/dV 128x128 tile at head dim 64 (255
    registers, 1 KiB of spills; the H200's S 16k choice) but not the merged-split 64x128 one."""
    lines = run_tool(
        "piecewise", "dkdv", "--head-dims", "64", "--tiles", "128x128w8s2,64x128w8s2sp2", "--wgmma"
    )
    assert lines[0].endswith("wgmma serialized") and lines[1].endswith("wgmma ok"), lines
