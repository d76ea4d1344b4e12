#!/usr/bin/env bash
# Issue 14 on the GPU: the timer/ceiling/tuning tests, then two back-to-back seqlen sweeps and
# `attnbench compare` of them (repeatability: pairs within 2% at S >= 1k, within 5% at S = 512).
# Device calls of one lease (carry [".whl"]), back to back:
#   1. bash tools/gpu/repeat_check.sh tests    (pytest -m gpu: timing, ceiling, kept tuning, core)
#   2. bash tools/gpu/repeat_check.sh run1     (sweep 1: tunes triton_fa2, keeps the choices)
#   3. bash tools/gpu/repeat_check.sh run2     (sweep 2: reuses them)
#   4. bash tools/gpu/repeat_check.sh compare  (text + JSON + plot; then --repeat 3 on S=512)
# ONLY= overrides the backends (default: every backend that runs here). Runs stay in
# /tmp/repeat between calls; each step copies what it has to $OUT/repeat/.
set -u
step=${1:-tests}
if [ -f /tmp/repeat/installed ]; then source tools/gpu/setup.sh env; else source tools/gpu/setup.sh; fi
mkdir -p /tmp/repeat && touch /tmp/repeat/installed
export ATTNBENCH_TUNING_CACHE=/tmp/repeat/tuning.json
R=/tmp/repeat/results O=${OUT:-/tmp/out}/repeat; mkdir -p "$O"
ONLY_ARG=(); [ -n "${ONLY:-}" ] && ONLY_ARG=(--only "$ONLY")
sweep() {
  timeout 570 attnbench perf --sweep seqlen --dtype bf16 "${ONLY_ARG[@]}" --out "$R" >"$O/$1.log" 2>&1
  echo "$1 rc=$?"; grep -E "^run |rows ->|not repeatable|repeatab" "$O/$1.log" | cut -c1-200
}
case "$step" in
  tests)
    el tests
    timeout 560 python3 -m pytest -m gpu -q --no-header -p no:cacheprovider \
      tests/test_gpu_timing.py tests/test_gpu_core.py >"$O/pytest.log" 2>&1
    echo "pytest rc=$?"; tail -30 "$O/pytest.log"
    ;;
  run1) el run1; rm -f "$ATTNBENCH_TUNING_CACHE"; sweep run1; tail -45 "$O/run1.log" | cut -c1-220 ;;
  run2) el run2; sweep run2 ;;
  compare)
    el compare
    runs=($(ls "$R"/*.parquet | xargs -n1 basename | sed 's/.parquet$//' | tail -2))
    attnbench compare "${runs[0]}" "${runs[1]}" --results "$R" --plot "$O/speedup.png" \
      >"$O/compare.txt" 2>&1; echo "compare rc=$?"
    attnbench compare "${runs[0]}" "${runs[1]}" --results "$R" --json >"$O/compare.json" 2>/dev/null
    grep -B2 -A12 "agreement" "$O/compare.txt" | cut -c1-200
    grep -E "another kernel config|accuracy|different" "$O/compare.txt" | cut -c1-300
    el "repeat 3 (one run, every case timed 3 times)"
    timeout 400 attnbench perf --sweep seqlen --dtype bf16 "${ONLY_ARG[@]}" --repeat 3 \
      --modes fwd --out "$R-repeat" >"$O/repeat3.log" 2>&1
    echo "repeat rc=$?"; grep -A20 "repeatability" "$O/repeat3.log" | cut -c1-200
    cp -r "$R" "$R-repeat" "$ATTNBENCH_TUNING_CACHE" "$O/" 2>/dev/null
    ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
el done
