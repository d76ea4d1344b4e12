#!/usr/bin/env bash
# Device call on nvidia-h200-x2: the NCCL tests, then the dist_bench sweep at world 2 (both
# efficiencies) for the local kernels that need no build. Carry .whl (see lease_a.sh).
set -u
source tools/gpu/setup.sh
R=$OUT/w2; L=$OUT/log; mkdir -p $R $L
el "NCCL tests"
timeout 150 python3 -m pytest -m gpu -q --no-header -p no:cacheprovider tests/test_dist.py >$L/pytest.log 2>&1; echo "rc=$?"; tail -3 $L/pytest.log
el "dist_bench w2"
timeout 150 torchrun --standalone --nproc_per_node=2 -m attnbench dist perf --sweep dist_bench \
  --local-backends triton_fa2,sdpa_flash,sdpa_efficient --out $R >$L/w2.log 2>&1; echo "rc=$?"
python3 tools/gpu/dist_summary.py $R 2>&1 | head -40
el done
