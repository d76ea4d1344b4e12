#!/usr/bin/env bash
# Device call B on nvidia-h200-x4, right after lease_x4a.sh (flash-attn built): the timings on
# an idle machine: dist perf at world 4 for every local kernel; flash_attn accuracy (world 2 and,
# if A had no time left, 4) with world-2 flash_attn perf on the other two GPUs; the one-GPU
# profile (no communication) of zigzag with flash_attn and triton_fa2. Tables last.
set -u
source tools/gpu/setup.sh env
bash .gpu/flash_attn.sh wait 120 | tail -1
export PYTHONPATH=/tmp/fa/src:/tmp/site
R=/tmp/res4; L=/tmp/log4; R2=/tmp/res2; mkdir -p $R $L $R2
el "dist perf w4 (all local kernels; machine idle)"
timeout 300 torchrun --standalone --nproc_per_node=4 -m attnbench dist perf --sweep dist \
  --local-backends flash_attn,triton_fa2,sdpa_flash,sdpa_efficient --out $R >$L/perf_w4.log 2>&1; echo "rc=$?"
if [ ! -f /tmp/acc_fa_done ]; then
  el "dist accuracy w4 flash_attn"
  timeout 120 torchrun --standalone --nproc_per_node=4 -m attnbench dist accuracy --suite dist \
    --local-backends flash_attn --out $R >$L/acc_w4_fa.log 2>&1; echo "rc=$?"
fi
el "w2 flash_attn: accuracy on GPUs 0,1 | perf on GPUs 2,3"
CUDA_VISIBLE_DEVICES=0,1 timeout 120 torchrun --standalone --nproc_per_node=2 -m attnbench dist accuracy \
  --suite dist --local-backends flash_attn --out $R2 >$L/acc_w2_fa.log 2>&1 &
CUDA_VISIBLE_DEVICES=2,3 timeout 150 torchrun --standalone --nproc_per_node=2 -m attnbench dist perf \
  --sweep dist --local-backends flash_attn --out $R2 >$L/perf_w2_fa.log 2>&1; echo "perf rc=$?"; wait; echo "acc rc=$?"
el "profile"
CUDA_VISIBLE_DEVICES=0 timeout 150 python3 tools/gpu/dist_profile.py --kernels flash_attn,triton_fa2 \
  >$L/profile_w4.log 2>&1; echo "rc=$?"
cp -r $R $R2 $L $OUT/
grep -E "zigzag|ulysses" $L/profile_w4.log
python3 tools/gpu/dist_summary.py $R --local flash_attn 2>&1 | tail -80
python3 tools/gpu/dist_summary.py $R2 --local flash_attn 2>&1 | head -12
el done
