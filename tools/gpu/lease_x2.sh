#!/usr/bin/env bash
# Device call on nvidia-h200-x2: where a zigzag rank's time goes (one GPU, no transfers), then
# the distributed accuracy suite and perf sweep at world size 2 (NCCL) with the local kernels
# that need no build (flash-attn takes ~9 min to build: it runs on the x4 lease). Carry .whl
# (see lease_a.sh's header).
set -u
source tools/gpu/setup.sh
R=$OUT/res_x2; L=$OUT/log_x2; mkdir -p $R $L
LB=${LB:-triton_fa2,sdpa_flash,sdpa_efficient}
el "profile (GPU 0, no communication)"
CUDA_VISIBLE_DEVICES=0 timeout 200 python3 tools/gpu/dist_profile.py --kernels $LB >$L/profile.log 2>&1; echo "rc=$?"; tail -22 $L/profile.log
el "dist accuracy w2"
timeout 150 torchrun --standalone --nproc_per_node=2 -m attnbench dist accuracy --suite dist \
  --local-backends $LB --out $R >$L/dist_acc.log 2>&1; echo "rc=$?"; grep -E "PASS|FAIL|error" $L/dist_acc.log | tail -4 | cut -c1-160
el "dist perf w2"
timeout 200 torchrun --standalone --nproc_per_node=2 -m attnbench dist perf --sweep dist \
  --local-backends $LB --out $R >$L/dist_perf.log 2>&1; echo "rc=$?"
el "dist gpu tests"
timeout 100 python3 -m pytest -m gpu -q --no-header -p no:cacheprovider tests/test_dist.py >$L/pytest_dist.log 2>&1; echo "rc=$?"; tail -3 $L/pytest_dist.log
python3 tools/gpu/dist_summary.py $R 2>&1 | tail -60
el done
