#!/usr/bin/env bash
# FlashAttention-4 and FlexAttention on the GPU, one step per device call of the same lease.
# FA4 travels in two halves (../shared/device/fa4.sh; here, once: `bash ../shared/device/fa4.sh
# download` and the .whl folder of lease_a.sh). Device calls, back to back:
#   1. carry [".fa4a"]:          bash .fa4a/fa4.sh park
#   2. carry [".fa4b", ".whl"]:  bash tools/gpu/fa4_check.sh probe   (installs, then the probe table)
#   3. carry [".fa4b", ".whl"]:  bash tools/gpu/fa4_check.sh tests   (pytest -m gpu, fa4 and flex)
#   4. carry [".fa4b", ".whl"]:  bash tools/gpu/fa4_check.sh perf    (seqlen sweep, bf16)
# Each step writes its log and results under $OUT/fa4/.
set -u
step=${1:-probe}
if [ -f /tmp/fa4/installed ]; then source tools/gpu/setup.sh env; else source tools/gpu/setup.sh; fi
bash .fa4b/fa4.sh install || { echo "fa4 install failed"; exit 3; }
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH
O=${OUT:-/tmp/out}/fa4; mkdir -p "$O"
case "$step" in
  probe)
    el probe
    timeout 540 python3 tools/gpu/fa4_probe.py 2>&1 | tee "$O/probe.txt" | cut -c1-220
    ;;
  tests)
    el tests
    timeout 560 python3 -m pytest -m gpu -q --no-header -p no:cacheprovider -x \
      tests/test_fa4_flex_gpu.py >"$O/pytest.log" 2>&1; echo "pytest rc=$?"; tail -30 "$O/pytest.log"
    ;;
  perf)
    el perf
    timeout 560 attnbench perf --sweep seqlen --dtype bf16 \
      --only fa4,flex,flex_fa4,sdpa_cudnn,triton_fa2 --out "$O/results" >"$O/perf.log" 2>&1
    echo "perf rc=$?"; tail -60 "$O/perf.log" | cut -c1-200
    ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
el done
