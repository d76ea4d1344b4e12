#!/usr/bin/env bash
# Distributed attention on the GPU machine (2-4 H200s, NCCL; NVLink multicast stays off).
#   tools/gpu/dist_check.sh [results_dir]
# 1. pytest -m gpu on tests/test_dist.py (NCCL, small shapes, world 2 and 4 when present)
# 2. the accuracy suite on every strategy at world 2 and 4 (configs/dist.yaml, GPU cases)
# 3. the perf sweep at the ring-flash-attention benchmark shape (8k tokens per GPU, 32/8 heads,
#    D=128, bf16, causal) at the largest world size
set -uo pipefail
OUT=${1:-results/dist}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
echo "GPUs: $NGPU"
if [ "$NGPU" -lt 2 ]; then echo "needs >= 2 GPUs"; exit 2; fi
WMAX=$(( NGPU >= 4 ? 4 : 2 ))
rc=0
python -m pytest -m gpu tests/test_dist.py -q 2>&1 | tee "$OUT/pytest_gpu.log" || rc=1
for W in 2 $WMAX; do
  [ "$W" = 2 ] && [ "$WMAX" = 2 ] && [ -n "${DONE2:-}" ] && continue
  DONE2=1
  timeout 900 torchrun --standalone --nproc_per_node="$W" -m attnbench dist accuracy \
    --suite dist --device cuda --out "$OUT" 2>&1 | tee "$OUT/accuracy_w$W.log" || rc=1
done
timeout 900 torchrun --standalone --nproc_per_node="$WMAX" -m attnbench dist perf \
  --sweep dist --device cuda --out "$OUT" 2>&1 | tee "$OUT/perf_w$WMAX.log" || rc=1
exit $rc
