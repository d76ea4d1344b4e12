#!/usr/bin/env bash
# Device call on nvidia-h200-x4 (no flash-attn build): the dist_bench sweep at world 4 for the
# local kernels that need no build, with NCCL on a high-priority stream (the default) and, for
# comparison, on a default-priority stream. Tables last. Carry .whl (see lease_a.sh).
set -u
source tools/gpu/setup.sh
R=$OUT/hi; R0=$OUT/lo; L=$OUT/log; mkdir -p $R $R0 $L
LB=triton_fa2,sdpa_flash,sdpa_efficient
el "dist_bench w4, NCCL high-priority stream"
timeout 240 torchrun --standalone --nproc_per_node=4 -m attnbench dist perf --sweep dist_bench \
  --local-backends $LB --out $R >$L/hi.log 2>&1; echo "rc=$?"
sed -e 's/^name: dist_bench/name: dist_bench_lo/' -e 's/^nccl_high_priority: true/nccl_high_priority: false/' \
  configs/dist_bench.yaml > /tmp/dist_bench_lo.yaml
el "dist_bench w4, NCCL default-priority stream (ring, zigzag)"
timeout 150 torchrun --standalone --nproc_per_node=4 -m attnbench dist perf --sweep /tmp/dist_bench_lo.yaml \
  --local-backends triton_fa2,sdpa_flash --strategies ring,zigzag --out $R0 >$L/lo.log 2>&1; echo "rc=$?"
el "tables"
python3 tools/gpu/dist_summary.py $R 2>&1 | head -75
echo "--- default-priority NCCL stream:"
python3 tools/gpu/dist_summary.py $R0 2>&1 | head -20
el done
