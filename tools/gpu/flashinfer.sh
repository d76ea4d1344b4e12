#!/bin/bash
# FlashInfer (PyPI flashinfer-python) on the lent GPU machine, which has no registry access, for
# the `flashinfer` decode backend. Its wheel (0.7.4: 101 MB, pure Python plus the CUDA sources it
# JIT-compiles with the image's nvcc on first use) and the two packages it needs that the GPU image
# lacks (cuda-tile 0.4 MB, nvidia-cudnn-frontend 12 MB) are more than one device call carries
# (64 MiB with the working tree), so they travel in two folders over two back-to-back calls of the
# same lease: the wheel is split in parts of 56 MB, joined and checked (sha256) on the machine.
#
# It also needs FlashAttention-4's nvidia-cutlass-dsl (>= 4.8.0) and apache-tvm-ffi (< 0.2):
# install FA4 first on the same warm machine (../shared/device/fa4.sh park, then install: both
# put their wheels into /tmp/site). What else it imports is in the image (click, einops, ninja,
# numpy, nvidia-ml-py, requests, tabulate, tqdm, cuda-bindings: KINDS.md's package list).
#
# Here (once per machine), from the project root:
#   bash tools/gpu/flashinfer.sh download          # -> .fia/ (56 MB) and .fib/ (57 MB)
#   printf '/.fia/\n/.fib/\n' >> .git/info/exclude
# Device calls, after FA4's two, back to back on the same warm machine (carry one folder each,
# nothing else large: each is close to the limit with the working tree):
#   call 1 (carry [".fia"]):   bash tools/gpu/flashinfer.sh park .fia
#   call 2 (carry [".fib"]):   bash tools/gpu/flashinfer.sh install .fib
#   that call and every later one of the lease (no carry needed once installed):
#     bash tools/gpu/flashinfer.sh install && export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH
# The first plan() of each configuration JIT-compiles a kernel module (nvcc, about a minute or
# more; cached under ~/.cache/flashinfer for the rest of the lease): it lands in that case's
# first prepare, not in first_call_s.
#
# Written 2026-12 against flashinfer-python 0.7.4 as the registry serves it here (its METADATA,
# __init__ imports and decode/prefill wrappers read from the wheel); NOT yet run on a GPU machine.
# FLASHINFER_VERSION=... picks another version (check its wheel's size and Requires-Dist first).
set -uo pipefail
VERSION=${FLASHINFER_VERSION:-0.7.4}
WHEEL=flashinfer_python-$VERSION-py3-none-any.whl
DEPS="cuda-tile==1.7.0 nvidia-cudnn-frontend==1.32.0"
PART=56000000
STAGE=/tmp/fi
case "${1:-}" in
  download)
    tmp=$(mktemp -d)
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$tmp" "flashinfer-python==$VERSION" $DEPS || exit 1
    [ -f "$tmp/$WHEEL" ] || { echo "no $WHEEL in $(ls "$tmp")"; exit 1; }
    rm -rf .fia .fib && mkdir -p .fia .fib
    (cd "$tmp" && sha256sum "$WHEEL") > .fib/wheel.sha256
    split -b "$PART" -a 2 "$tmp/$WHEEL" "$tmp/big.part."
    mv "$tmp/big.part.aa" .fia/
    mv "$tmp"/big.part.* .fib/           # ab (and ac, ... if a later version is larger)
    rm "$tmp/$WHEEL" && mv "$tmp"/*.whl .fib/ && rmdir "$tmp"
    du -sh .fia .fib
    for d in .fia .fib; do
      [ "$(du -sb "$d" | cut -f1)" -le 60000000 ] || echo "warning: $d is over 60 MB: it may not travel with the working tree (64 MiB)"
    done
    ;;
  park)
    dir=${2:-.fia}
    mkdir -p "$STAGE" && cp "$dir"/* "$STAGE"/ && echo "parked $(ls "$STAGE" | wc -l) files in $STAGE"
    ;;
  install)
    if [ ! -f "$STAGE/installed" ]; then
      dir=${2:-.fib}
      mkdir -p "$STAGE"
      if [ -d "$dir" ]; then cp "$dir"/* "$STAGE"/ || exit 1; fi
      [ -f "$STAGE/big.part.aa" ] || { echo "part aa missing: the park call ran on another machine (keep the two calls back to back)"; exit 3; }
      [ -f "$STAGE/wheel.sha256" ] || { echo "wheel.sha256 missing: run install with the .fib folder carried"; exit 3; }
      cat "$STAGE"/big.part.* > "$STAGE/$WHEEL" || exit 1
      (cd "$STAGE" && sha256sum -c --quiet wheel.sha256) || { echo "$WHEEL corrupt: a part is missing or from another download"; exit 1; }
      rm -f "$STAGE"/big.part.*
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$STAGE"/*.whl || exit 1
      touch "$STAGE/installed"
    fi
    PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH} python3 -c \
      "import flashinfer; print('flashinfer', flashinfer.__version__)"
    ;;
  *) sed -n '2,29p' "$0"; exit 2 ;;
esac
