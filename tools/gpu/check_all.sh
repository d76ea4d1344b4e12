#!/usr/bin/env bash
# One device call: install, then every GPU check that needs no flash-attn, logs under $OUT.
#   bash tools/gpu/check_all.sh [quick]
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || tail -5 "$OUT/install.log"
nvidia-smi -L
t0=$(date +%s)
step() { echo "=== $1 ($(( $(date +%s) - t0 )) s)"; }
step cuda
timeout 210 python3 tools/gpu/cuda_fa_check.py ${1:+--quick} >"$OUT/cuda.log" 2>&1; echo "rc=$?"; tail -45 "$OUT/cuda.log"
step triton
[ -f tools/gpu/triton_fa2_check.py ] && { timeout 190 python3 tools/gpu/triton_fa2_check.py >"$OUT/triton.log" 2>&1; echo "rc=$?"; tail -45 "$OUT/triton.log"; }
step pytest-gpu
timeout 150 python3 -m pytest -m gpu -q -x --no-header -p no:cacheprovider tests/test_gpu_core.py tests/test_triton_fa2.py tests/test_cuda_fa.py >"$OUT/pytest.log" 2>&1; echo "rc=$?"; tail -15 "$OUT/pytest.log"
step done
