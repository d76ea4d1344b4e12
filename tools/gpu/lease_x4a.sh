#!/usr/bin/env bash
# Device call A on nvidia-h200-x4: start the flash-attn build; while it builds (timing would be
# disturbed, so correctness only): the distributed accuracy suite at world 4 for the local
# kernels that need no build, and the NCCL tests; then wait for the build and run the
# flash_attn accuracy suite. Carry .gpu and .whl (see lease_a.sh's header); call B
# (lease_x4b.sh, the timings) must follow within 30 s on the same machine.
set -u
source tools/gpu/setup.sh
MAX_JOBS=50 bash .gpu/flash_attn.sh build
R=/tmp/res4; L=/tmp/log4; mkdir -p $R $L
el "dist accuracy w4 (triton_fa2, sdpa_flash, sdpa_efficient)"
timeout 200 torchrun --standalone --nproc_per_node=4 -m attnbench dist accuracy --suite dist \
  --local-backends triton_fa2,sdpa_flash,sdpa_efficient --out $R >$L/acc_w4.log 2>&1; echo "rc=$?"
grep -cE " PASS" $L/acc_w4.log; grep -E "FAIL|rror" $L/acc_w4.log | head -5 | cut -c1-200
el "NCCL tests + GPU core tests"
timeout 150 python3 -m pytest -m gpu -q --no-header -p no:cacheprovider tests/test_dist.py \
  tests/test_gpu_core.py >$L/pytest.log 2>&1; echo "rc=$?"; tail -3 $L/pytest.log
el "wait flash-attn"
left=$(( 545 - ($(date +%s) - t0) )); bash .gpu/flash_attn.sh wait $(( left > 10 ? left : 10 )); echo "fa rc=$?"
if [ -f /tmp/fa/rc ] && [ "$(cat /tmp/fa/rc)" = 0 ] && [ $(( $(date +%s) - t0 )) -lt 500 ]; then
  export PYTHONPATH=/tmp/fa/src:/tmp/site
  el "dist accuracy w4 flash_attn"
  timeout $(( 580 - ($(date +%s) - t0) )) torchrun --standalone --nproc_per_node=4 -m attnbench \
    dist accuracy --suite dist --local-backends flash_attn --out $R >$L/acc_w4_fa.log 2>&1
  echo "rc=$?"; touch /tmp/acc_fa_done
fi
cp -r $R $L $OUT/; el done
