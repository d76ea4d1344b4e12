"""Shared memory, registers and spills of the Triton attention kernels' launch configs, compiled
offline for a GPU architecture: no GPU needed (Triton's compiler, its bundled ptxas and
cuobjdump). Use it before spending device time: a config whose shared memory exceeds the
limit is refused on the GPU, and the package's pruner estimate should agree with Triton.

    python -m attnbench.kernels.resources piecewise fwd,dkdv,dq --head-dims 64,128
    python -m attnbench.kernels.resources triton_fa2 fwd --head-dims 128 --tiles 128x128w8s3
    python -m attnbench.kernels.resources piecewise dkdv --tiles 64x128w8s3bs2,64x128w8s2sp
    python -m attnbench.kernels.resources triton_fa2 fwd,dkdv,dq --ptx   # before/after a refactor
    python -m attnbench.kernels.resources fp8 fwd,fwd_pv16,fwd_int8 --head-dims 64,128,256 --wgmma

One line per (kernel, head dim, config): Triton's shared-memory count against the pruner's
estimate, ``fits`` / ``OOR`` against the sm_90 limit (227 KiB), registers per thread and the
stack frame in bytes (non-zero: register spills); ``fp8`` adds the ``wgmma`` shapes and operand
types the PTX uses (``e4m3`` for the FP8 products, ``s8`` for INT8). The tables are the packages' Hopper tables
(``kernels/*/configs.py``) unless ``--tiles`` names configs (``BMxBNwWsS``, piecewise also
``bsB``, ``sp`` for the split band or ``sp2`` for the merged split). bf16, causal,
every pointer and stride 16-divisible (what the GPU launch sees for contiguous tensors), so the
counts match what the autotuner compiles there. ``--ptx`` adds a hash of the PTX instructions
(debug info and labels dropped): a refactor that leaves every hash unchanged cannot change what
runs on the GPU. ``--wgmma`` re-runs ptxas on the PTX (sm_90a, ``-v``) and prints ``wgmma
serialized`` when ptxas reports that it serializes the kernel's ``wgmma.mma_async`` for lack of
registers (its C7510-C7519 "Potential Performance Loss" notes, silent when Triton compiles): a
tile that spills may still keep its tensor-core pipeline, one with this note does not.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

SMEM_LIMIT = 227 * 1024  # sm_90 opt-in shared memory per block
NO_SPECIALIZE = {"seqlen_q", "seqlen_k", "group", "w"}


def packages():
    """{package: {kind: (jit kernel, configs module, hopper table, make[, launch])}}; ``launch``
    (optional): argument types and constexprs that differ from the defaults below."""
    from attnbench.kernels import fp8, piecewise, triton_fa2
    from attnbench.kernels.fp8 import fwd as f8
    from attnbench.kernels.piecewise import configs as pc
    from attnbench.kernels.triton_fa2 import configs as tc

    def pw_make(tiles):
        return pc._make({pc.ARCH: tiles})

    def fa2_make(tiles):
        return tc._make({tc.ARCH: tiles}, ("BLOCK_M", "BLOCK_N"))

    def fp8_make(tiles):
        return [
            triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
            for m, n, w, st in tiles
        ]

    def fp8_launch(v_type, qk_type="*fp8e4nv"):
        types = {n: "*fp32" for n in ("QS", "KS", "VS", "LseShift", "Lse")}
        types.update(Q8=qk_type, K8=qk_type, VT8=v_type, sm_scale="fp32")
        return {"types": types, "consts": dict(LSE_SHIFT=False, BLOCK_Q=128, BLOCK_K=128)}

    fp8_mod = _Fp8Estimates(f8)
    return {
        "fp8": {
            "fwd": (fp8.fwd._fwd_kernel, fp8_mod, f8._FWD, fp8_make, fp8_launch("*fp8e4nv")),
            "fwd_pv16": (fp8.fwd._fwd_kernel, fp8_mod, f8._FWD, fp8_make, fp8_launch("*fp16")),
            "fwd_int8": (
                fp8.fwd._fwd_kernel,
                fp8_mod,
                f8._FWD,
                fp8_make,
                fp8_launch("*fp16", "*i8"),
            ),
        },
        "piecewise": {
            "fwd": (piecewise.fwd._fwd_kernel, pc, pc._FWD, pw_make),
            "dkdv": (piecewise.bwd._bwd_dkdv_kernel, pc, pc._BWD_DKDV, pw_make),
            "dq": (piecewise.bwd._bwd_dq_kernel, pc, pc._BWD_DQ, pw_make),
        },
        "triton_fa2": {
            "fwd": (triton_fa2.fwd._fwd_kernel, tc, tc._FWD, fa2_make),
            "dkdv": (triton_fa2.bwd._bwd_dkdv_kernel, tc, tc._BWD_DKDV, fa2_make),
            "dq": (triton_fa2.bwd._bwd_dq_kernel, tc, tc._BWD_DQ, fa2_make),
        },
    }


class _Fp8Estimates:
    """The fp8 package's shared-memory estimate in the (cfg, d, kind) form of the others."""

    def __init__(self, fwd):
        self.fwd = fwd

    def _smem_estimate(self, cfg, d, kind):
        return self.fwd.smem_estimate(cfg, d, 1 if kind == "fwd" else 2)


def compile_config(
    kernel, cfg: triton.Config, head_dim: int, arch: int = 90, wgmma=False, launch=None
):
    """(shared bytes, registers, stack bytes, PTX hash, ptxas performance notes or None,
    PTX) of ``kernel`` under ``cfg``, bf16, causal; ``launch`` overrides argument types
    (``types``) and constexprs (``consts``)."""
    launch = launch or {}
    fn = getattr(kernel, "fn", kernel)
    # constexpr defaults first (SPLIT_BAND=False), then what the launch and the config set
    consts = {p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}
    consts.update(HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim, CAUSAL=True, DOT_PREC="ieee")
    consts.update(IS_VARLEN=False, **launch.get("consts", {}), **cfg.kwargs)
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}
    sig = {}
    for n in fn.arg_names:
        if n in consts:
            sig[n] = "constexpr"
        elif n in launch.get("types", {}):
            sig[n] = launch["types"][n]
        elif n.startswith("cu_seqlens"):
            sig[n] = "*i32"
        elif n[0].isupper() and n != "SEQ_BUCKET":
            sig[n] = "*fp32" if n in ("Lse", "Delta") else "*bf16"
        elif n in ("qk_scale", "sm_scale"):
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(fn.arg_names)
        if sig[n].startswith("*") or (sig[n] == "i32" and n not in NO_SPECIALIZE)
    }
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    regs, stack = cubin_resources(compiled.asm["cubin"])
    notes = ptxas_notes(compiled.asm["ptx"], arch) if wgmma else None
    ptx = compiled.asm["ptx"]
    return compiled.metadata.shared, regs, stack, ptx_hash(ptx), notes, ptx


def wgmma_shapes(ptx: str) -> str:
    """The ``wgmma`` shapes and operand types of a kernel's PTX, e.g. ``m64n128k32 e4m3``."""
    found = re.findall(
        r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)\.(?:f32|s32)\.(\w+)\.\w+", ptx
    )
    return ", ".join(sorted({f"{shape} {t}" for shape, t in found})) or "no wgmma"


def ptxas_notes(ptx: str, arch: int = 90) -> list[str]:
    """ptxas's "Potential Performance Loss" notes (codes C75xx) for ``ptx``, e.g. "(C7512)
    ... wgmma.mma_async instructions are serialized due to insufficient register resources"."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run(
            [tool, "-v", f"--gpu-name=sm_{arch}a", src, "-o", src + ".o"],
            capture_output=True,
            text=True,
        )
    return re.findall(r"\(C75\d\d\)[^\n]*", out.stdout + out.stderr)


def ptx_hash(ptx: str) -> str:
    """Hash of the PTX instructions alone: no debug sections, ``.loc``/``.file`` lines or
    ``$L__tmp`` labels (those move with source lines and inlined scopes)."""
    lines = ptx.splitlines()
    end = next((i for i, ln in enumerate(lines) if ".section" in ln and "debug" in ln), len(lines))
    body = [
        re.sub(r"\$L__tmp\d+", "", ln)
        for ln in lines[:end]
        if not ln.strip().startswith((".loc", ".file", "$L__tmp"))
    ]
    return hashlib.sha1("\n".join(body).encode()).hexdigest()[:12]


def cubin_resources(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers per thread, stack bytes) from ``cuobjdump --dump-resource-usage``."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True
        )
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", out.stdout, re.S)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def wgmma_state(notes: list[str]) -> str:
    return "serialized" if any("serialized" in n for n in notes) else "ok"


def main(argv=None) -> int:
    from attnbench.kernels._triton.tuning import describe
    from attnbench.kernels.piecewise.configs import parse_tiles

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", choices=["piecewise", "triton_fa2", "fp8"])
    ap.add_argument("kinds", help="comma-separated: fwd,dkdv,dq (fp8: fwd,fwd_pv16,fwd_int8)")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument(
        "--tiles", default="", help="BMxBNwWsS[bsB|sp|sp2],... instead of the Hopper table"
    )
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90")
    ap.add_argument("--ptx", action="store_true", help="also print a hash of the PTX instructions")
    ap.add_argument(
        "--wgmma", action="store_true", help="also say when ptxas serializes the wgmma (slower)"
    )
    a = ap.parse_args(argv)
    pkg = packages()[a.package]
    kinds = a.kinds.split(",")
    try:
        unknown = [k for k in kinds if k not in pkg]
        if unknown:
            raise ValueError(f"unknown kernel {', '.join(unknown)} (kernels: {', '.join(pkg)})")
        head_dims = [int(x) for x in a.head_dims.split(",")]
        given = parse_tiles(a.tiles) if a.tiles else None
        configs = {}
        for kind in kinds:
            _, _, table, make = pkg[kind][:4]
            tiles = given or table["hopper"]
            if a.package in ("triton_fa2", "fp8"):
                tiles = [t[:4] for t in tiles]
            configs[kind] = make(tiles)  # ValueError: a tile this kernel cannot run
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for kind in kinds:
        kernel, mod = pkg[kind][:2]
        launch = pkg[kind][4] if len(pkg[kind]) > 4 else None
        for d in head_dims:
            for cfg in configs[kind]:
                est = mod._smem_estimate(cfg, d, kind)
                try:
                    shared, regs, stack, ptx, notes, text = compile_config(
                        kernel, cfg, d, a.arch, wgmma=a.wgmma, launch=launch
                    )
                except Exception as e:  # one config failing to compile does not stop the list
                    print(f"{kind:4} d{d:<4}{describe(cfg):18} error: {type(e).__name__}: {e}")
                    continue
                fits = "fits" if shared <= SMEM_LIMIT else "OOR "
                print(
                    f"{kind:4} d{d:<4}{describe(cfg):18} shared {shared / 1024:5.0f} KiB "
                    f"(estimate {est / 1024:.0f}) {fits}  regs {regs}  stack {stack} B"
                    + (f"  ptx {ptx}" if a.ptx else "")
                    + (f"  wgmma {wgmma_state(notes)}" if a.wgmma else "")
                    + (f"  [{wgmma_shapes(text)}]" if a.package == "fp8" else ""),
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
