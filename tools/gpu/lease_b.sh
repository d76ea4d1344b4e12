#!/usr/bin/env bash
# Device call B (same machine, flash-attn built): the seqlen sweep with flash-attn, SDPA and the
# in-repo kernels in one run per dtype, the basic accuracy suite, flash-attn's GPU tests; one GPU each.
set -u
source tools/gpu/setup.sh env
export PYTHONPATH=/tmp/fa/src:/tmp/site
R=/tmp/resB; L=/tmp/logB; mkdir -p $R $L
python3 -c "import flash_attn; print('flash_attn', flash_attn.__version__)"
B="flash_attn_func,sdpa_flash,sdpa_cudnn,sdpa_efficient,triton_fa2,cuda_fa2"
T=530
CUDA_VISIBLE_DEVICES=0 timeout $T attnbench perf --sweep seqlen --dtype bf16 --only $B --out $R >$L/perf_bf16.log 2>&1 &
CUDA_VISIBLE_DEVICES=1 timeout $T attnbench perf --sweep seqlen --dtype fp16 --only $B --out $R >$L/perf_fp16.log 2>&1 &
CUDA_VISIBLE_DEVICES=2 timeout $T attnbench accuracy --suite basic --out $R >$L/acc_basic.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=3
  timeout 150 python3 -m pytest -m gpu -q --no-header -p no:cacheprovider tests/test_flash_attn.py >$L/pytest_fa.log 2>&1
  timeout 330 attnbench perf --sweep seqlen --dtype bf16 --only cuda_fa1,cuda_fa2_simt --out $R >$L/perf_fa1.log 2>&1 ) &
wait
el "all done"
tail -3 $L/pytest_fa.log
for f in $L/*.log; do echo "== $f"; grep -E "rows ->|failed accuracy|interrupted|Error|error:" $f | tail -3 | cut -c1-200; done
python3 tools/gpu/summarize.py $R --dtype bf16 --hd 128 2>&1 | head -60
tar czf $OUT/B.tgz -C /tmp resB logB; el done
