#!/usr/bin/env bash
# One device call: set the machine up, run the commands given, keep every result and log under
# $OUT, print short tables last. Run from the repo root on the GPU machine:
#
#   bash tools/gpu/lease.sh [setup options] -- 'COMMAND' ['COMMAND' ...]
#
# Each COMMAND is one shell line, run in order with its own log ($L/NN.log) and exit code; every
# attnbench run in it writes to $R unless given --out (ATTNBENCH_OUT=$R is exported). $R
# (results) and $L (logs) live in /tmp/lease and are exported, as is $OUT, for lines that run
# several jobs. The device tool returns at most 8 files from
# $OUT, so $R and $L come back as one archive, $OUT/lease.tgz, repacked every 20 s and at the end
# (a call cut at its limit keeps what was written up to 20 s before); unpack it here with
# `tar xzf FILES_AT/lease.tgz -C DIR`. Example
# (the single-GPU checks of issue 11):
#
#   bash tools/gpu/lease.sh -- \
#     'python3 -m pytest -m gpu -q -p no:cacheprovider tests' \
#     'attnbench perf --sweep seqlen --only triton_fa2,sdpa_cudnn'
#
# Setup options (each needs a git-ignored folder made here once and named in the call's carry):
#   (always)         pydantic (the GPU image has none) and sageattention (the sage backend; a
#                    pure-Python wheel) from .whl/: every .whl/*.whl, then `pip install -e .`:
#                      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#                        --implementation cp --platform manylinux_2_17_x86_64 \
#                        --platform manylinux2014_x86_64 -d .whl pydantic==2.13.4 \
#                        pydantic_core==2.46.4 annotated-types typing-inspection sageattention==1.0.6
#   --again          a later call on the same warm machine: skip the installs (PYTHONPATH only)
#   --flash-attn S   upstream flash-attn from .gpu/ (bash ../shared/device/flash_attn.sh download
#                    .gpu): start its build (~7 min on x4, ~20 on x1) and wait up to S seconds
#                    before the commands; S=0 runs the commands during the build, and a later
#                    call on the warm machine waits for it (--again --flash-attn 540)
#   --fa4-park       FlashAttention-4, call 1 of 2: park the first half of its wheels
#                    (bash ../shared/device/fa4.sh download; carry .fa4a); call 2 must follow
#   --fa4            FlashAttention-4, call 2 (carry .fa4b) and later calls: install, PYTHONPATH
#   --tuning FILE    keep Triton tuning choices across device sessions: ATTNBENCH_TUNING_CACHE=FILE,
#                    copied back to $OUT/tuning.json with each pack (copy it over FILE here to keep
#                    it). The H200's choices (torch 2.11, triton 3.6) for triton_fa2 and the
#                    piecewise kernels ship in attnbench/kernels/_triton/tuning_data/h200.json and
#                    are used on a matching GPU with no flag; `attnbench perf --retune` re-tunes
#   --flag           FlagAttention from .flag/FlagAttention-ee91638.tar.gz (copy
#                    ../shared/device/flag_attn/ to .flag; carry .flag)
# Folders to carry: .whl always (unless --again), plus .gpu / .fa4a / .fa4b / .flag as above.
# Multi-GPU: `attnbench dist ... --nproc N` lines run torchrun themselves.
set -u
export OUT=${OUT:-/tmp/out}
W=/tmp/lease  # this call's results and logs (a warm machine's last call's are dropped)
rm -rf "$W"
export R=$W/results
export L=$W/logs
export ATTNBENCH_OUT=$R  # the default --out of every attnbench run
mkdir -p "$R" "$L" "$OUT"
pack() {
  tar czf "$OUT/lease.tgz.part" -C "$W" results logs 2>/dev/null && mv -f "$OUT/lease.tgz.part" "$OUT/lease.tgz"
  if [ -f "${ATTNBENCH_TUNING_CACHE:-}" ]; then cp "$ATTNBENCH_TUNING_CACHE" "$OUT/tuning.json"; fi
}
(while sleep 20; do pack; done) &
packer=$!
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
t0=$(date +%s)
el() { echo "[$(($(date +%s) - t0)) s] $*"; }

again=0 fa_wait="" fa4="" flag=0 tuning=
while [ $# -gt 0 ]; do
  case "$1" in
    --again) again=1 ;;
    --flash-attn) fa_wait=$2; shift ;;
    --fa4-park) fa4=park ;;
    --fa4) fa4=install ;;
    --flag) flag=1 ;;
    --tuning) tuning=$2; shift ;;
    --) shift; break ;;
    *) echo "lease.sh: unknown option $1 (see the header)"; exit 2 ;;
  esac
  shift
done

# ---- setup --------------------------------------------------------------------------------
if [ -n "$fa_wait" ]; then  # starts the background build once per machine (no-op after)
  MAX_JOBS=${MAX_JOBS:-$(($(nproc) > 8 ? $(nproc) - 8 : $(nproc)))} bash .gpu/flash_attn.sh build
fi
if [ "$again" = 0 ]; then
  el "install"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  python3 -m pip install -q --no-deps --no-build-isolation -e . >"$L/install.log" 2>&1 \
    || tail -5 "$L/install.log"
fi
if [ "$fa4" = park ]; then
  bash .fa4a/fa4.sh park
elif [ "$fa4" = install ]; then
  bash .fa4b/fa4.sh install
  export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH
fi
if [ "$flag" = 1 ]; then
  mkdir -p /tmp/flag && tar xzf .flag/FlagAttention-ee91638.tar.gz -C /tmp/flag
  export PYTHONPATH=/tmp/flag/FlagAttention/src:$PYTHONPATH
fi
if [ -n "$fa_wait" ] && [ "$fa_wait" != 0 ]; then
  el "waiting for flash-attn"
  bash .gpu/flash_attn.sh wait "$fa_wait" && export PYTHONPATH=/tmp/fa/src:$PYTHONPATH
fi
if [ -n "$tuning" ]; then
  export ATTNBENCH_TUNING_CACHE=$(realpath -m "$tuning")
fi
nvidia-smi -L
python3 -m attnbench env 2>&1 | tail -n 25

# ---- the commands -------------------------------------------------------------------------
n=0
for cmd in "$@"; do
  n=$((n + 1))
  log=$(printf '%s/%02d.log' "$L" "$n")
  el "$n: $cmd"
  echo "\$ $cmd" >"$log"
  bash -c "$cmd" >>"$log" 2>&1
  echo "rc=$?" | tee -a "$log"
done

# ---- short tables last --------------------------------------------------------------------
n=0
for cmd in "$@"; do
  n=$((n + 1))
  log=$(printf '%s/%02d.log' "$L" "$n")
  echo "=== $n: $cmd"
  tail -n "${TAIL:-30}" "$log" | cut -c1-200
done
if ls "$R"/*.parquet >/dev/null 2>&1; then
  echo "=== tables of $R"
  attnbench show "$R" 2>&1 | cut -c1-200 | head -n 120
fi
kill "$packer" 2>/dev/null
pack
el done
