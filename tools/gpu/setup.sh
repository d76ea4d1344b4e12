# Sourced first by the lease_*.sh device scripts: NVLink multicast off, an elapsed-time logger
# `el`, and (unless called as `source tools/gpu/setup.sh env`, for a later call on a machine
# that already has them) pydantic from the carried .whl/ folder (the GPU image has none; see
# lease_a.sh for how to make it) plus attnbench itself, editable.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
if [ "${1:-install}" != env ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
fi
