"""CUDA FlashAttention kernels without a GPU: every .cu compiles for sm_80 and sm_90 (nvcc only,
the kernels include no torch headers), and the backends register, explain why they cannot run
here, and report head dims that were not compiled.

pytest tests/test_cuda_compile.py        # ~1 minute on 2 cores (the nvcc runs go in parallel)
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from attnbench.backends import REGISTRY
from attnbench.kernels import cuda as fa_cuda
from attnbench.kernels.cuda.hbm import fwd_hbm_bytes
from attnbench.problems.attention import AttentionCase as Case

NVCC = shutil.which("nvcc")
ARCHS = ("80", "90")
UNITS = [(src, arch) for src in fa_cuda.CU_SOURCES for arch in ARCHS]
BACKENDS = ("cuda_fa2", "cuda_fa2_simt", "cuda_fa1")


def _compile(src: str, arch: str, out_dir: Path) -> subprocess.CompletedProcess:
    cmd = [
        NVCC,
        "-cubin",
        "-std=c++17",
        "-O3",
        "--use_fast_math",
        "-Xptxas=-v",
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "-I",
        str(fa_cuda.SRC_DIR),
        str(fa_cuda.SRC_DIR / src),
        "-o",
        str(out_dir / f"{src}.sm{arch}.cubin"),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc not on PATH: the CUDA compile test needs a CUDA toolkit")
    out = tmp_path_factory.mktemp("cubin")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futs = {u: pool.submit(_compile, *u, out) for u in UNITS}
        return {u: f.result() for u, f in futs.items()}


@pytest.mark.parametrize("src,arch", UNITS, ids=[f"{s}-sm{a}" for s, a in UNITS])
def test_cu_compiles(compiled, src, arch):
    res = compiled[(src, arch)]
    assert res.returncode == 0, f"nvcc failed for {src} sm_{arch}:\n{res.stderr[-4000:]}"
    assert "ptxas info" in res.stderr  # ptxas really assembled kernels for this arch
    assert " error" not in res.stderr.lower()


def test_all_cu_sources_are_listed():
    on_disk = sorted(p.name for p in fa_cuda.SRC_DIR.glob("*.cu"))
    assert on_disk == sorted(fa_cuda.CU_SOURCES)
    assert all((fa_cuda.SRC_DIR / s).exists() for s in fa_cuda.SOURCES)


@pytest.mark.parametrize("name", BACKENDS)
def test_registered_and_unavailable_on_cpu(name):
    be = REGISTRY[name]
    case = Case(2, 8, 2, 128, 128, 64, "bf16", causal=True)
    why = be.why_unsupported(case, "cpu")
    assert why and "does not run on cpu" in why
    if not torch.cuda.is_available():
        assert be.availability("cuda") == "no CUDA device (torch.cuda.is_available() is False)"
        assert be.why_unsupported(case, "cuda") == be.availability("cuda")
    assert be.caps.lse and be.caps.gqa and be.caps.seqlen_q_ne_k
    assert be.caps.backward == (name != "cuda_fa2_simt")
    assert "-gencode=arch=compute_" in be.build_flags() and "--use_fast_math" in be.build_flags()


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("head_dim", [32, 96, 256])
def test_unsupported_head_dims(name, head_dim, monkeypatch):
    be = REGISTRY[name]
    monkeypatch.setattr(type(be), "availability", lambda self, device: None)
    case = Case(1, 2, 2, 64, 64, head_dim, "fp16")
    assert be.why_unsupported(case, "cuda") == (
        f"unsupported: head dim {head_dim} not compiled (has 64, 128)"
    )
    assert be.why_unsupported(Case(1, 2, 2, 64, 64, 64, "fp32"), "cuda").startswith(
        "unsupported: dtype fp32"
    )
    assert be.why_unsupported(Case(1, 2, 2, 64, 64, 128, "bf16", causal=True), "cuda") is None


def test_first_error_line():
    log = (
        "[1/5] nvcc ... fa2_fwd.cu\nptxas info : Used 200 registers\n"
        'fa1.cu(42): error: identifier "foo" is undefined\nfa1.cu(50): error: bar\n'
    )
    assert fa_cuda.first_error(log) == 'fa1.cu(42): error: identifier "foo" is undefined'
    assert fa_cuda.first_error("") == "unknown error"


def test_fa1_moves_more_hbm_bytes_than_fa2():
    for causal in (False, True):
        case = Case(2, 16, 16, 8192, 8192, 128, "bf16", causal=causal)
        fa2, fa1 = fwd_hbm_bytes(case, "fa2"), fwd_hbm_bytes(case, "fa1")
        assert 4 < fa1 / fa2 < 6
    with pytest.raises(ValueError):
        fwd_hbm_bytes(case, "fa3")


def test_autograd_interface_lives_beside_the_kernels():
    """The backend module holds only the Backend classes; the autograd Function over the
    extension is ``attnbench.kernels.cuda.interface`` (as triton_fa2 has its interface.py)."""
    import inspect

    from attnbench.backends import cuda_fa
    from attnbench.kernels.cuda import interface

    assert issubclass(interface.FlashAttnCudaFunc, torch.autograd.Function)
    assert cuda_fa.flash_attn_cuda is interface.flash_attn_cuda
    functions = [
        c
        for _, c in inspect.getmembers(cuda_fa, inspect.isclass)
        if issubclass(c, torch.autograd.Function)
    ]
    assert not functions
    if not torch.cuda.is_available():  # the build is asked for, and says why it cannot run
        q = torch.zeros(1, 4, 2, 64, dtype=torch.float16)
        with pytest.raises(RuntimeError, match="no CUDA device"):
            interface.flash_attn_cuda(q, q, q, causal=True)
