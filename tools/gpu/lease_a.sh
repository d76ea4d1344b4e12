#!/usr/bin/env bash
# Device call A (nvidia-h200-x4): start the flash-attn build, run the GPU tests and the
# distributed suite (local kernels triton_fa2, sdpa_flash) while it builds, then wait for it.
# Needs two git-ignored folders, made here once and named in the device call's carry list:
#   bash ../shared/device/flash_attn.sh download .gpu
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic==2.13.4 pydantic_core==2.46.4 annotated-types typing-inspection
# (the GPU image has no pydantic). Call B (lease_b.sh) must follow within 30 s on the same machine.
set -u
source tools/gpu/setup.sh
MAX_JOBS=48 bash .gpu/flash_attn.sh build
R=/tmp/resA; L=/tmp/logA; mkdir -p $R $L
el "gpu tests"
timeout 150 python3 -m pytest -m gpu -q --no-header -p no:cacheprovider tests/test_gpu_core.py \
  tests/test_cuda_fa.py tests/test_triton_fa2.py >$L/pytest.log 2>&1; echo "pytest rc=$?"; tail -6 $L/pytest.log
el "dist tests"
timeout 100 python3 -m pytest -m gpu -q --no-header -p no:cacheprovider tests/test_dist.py >$L/pytest_dist.log 2>&1; echo "rc=$?"; tail -4 $L/pytest_dist.log
el "dist accuracy w4"
timeout 150 torchrun --standalone --nproc_per_node=4 -m attnbench dist accuracy --suite dist \
  --local-backends triton_fa2,sdpa_flash --out $R >$L/dist_acc.log 2>&1; echo "rc=$?"; tail -30 $L/dist_acc.log | cut -c1-180
el "dist perf w4"
timeout 120 torchrun --standalone --nproc_per_node=4 -m attnbench dist perf --sweep dist \
  --local-backends triton_fa2,sdpa_flash --out $R >$L/dist_perf.log 2>&1; echo "rc=$?"; tail -25 $L/dist_perf.log | cut -c1-180
el "wait flash-attn"
left=$(( 560 - ($(date +%s) - t0) )); bash .gpu/flash_attn.sh wait $(( left > 10 ? left : 10 )); echo "fa rc=$?"
tar czf $OUT/A.tgz -C /tmp resA logA; el done
