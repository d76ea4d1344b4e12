"""What this GPU can do and how it was doing: the measured ceiling and NVML telemetry of a run.

- ``ceiling(device, dtype)``: dense matmul TFLOP/s in that dtype, the best of a few large GEMM
  shapes (:data:`MATMUL_SHAPES`) after the GPU has been kept busy for about a second (a cold GPU
  read 686-730 TFLOP/s on an H200 where a warm one reaches 770-800, below what FA4's forward
  reached in the same runs); and the memory bandwidth ``bw_gbps``, the faster of a device copy
  (``copy_gbps``, read + write bytes counted) and a read-only pass (``read_gbps``, a sum over
  the buffer), each over :data:`BW_BYTES`. All timed with :func:`attnbench.run.timing.bench`
  like every case (L2 flushed); measured once per process (a run) and dtype. ``ceiling_method``
  says how, on every row. Attention at S >= 1k is compute-bound, so ``pct_of_peak`` = TFLOP/s /
  ``matmul_tflops`` is its honest utilisation; decode is memory-bound, so its ``pct_of_bw`` =
  GB/s / ``bw_gbps`` is.
- ``telemetry(device)``: SM clock (MHz), temperature (C) and power (W) from NVML
  (``nvidia-ml-py``, optional), taken at the start and the end of a run so that a throttled run
  shows in its rows.

On the CPU, or without NVML, the columns are null and ``env_note`` says why.
"""

from __future__ import annotations

import functools

import torch

from ..problems.base import DTYPES
from .timing import bench, tflops

# (M, N, K) of the GEMMs whose best median is the matmul ceiling
MATMUL_SHAPES = ((8192, 8192, 8192), (16384, 8192, 8192), (8192, 8192, 16384), (4096, 16384, 8192))
WARMUP_MS = 1000  # the GPU kept busy before the first timing (clocks and power settle)
BW_BYTES = 4 << 30  # the buffer of each bandwidth pass
CEILING_COLUMNS = ("matmul_tflops", "copy_gbps", "read_gbps", "bw_gbps", "ceiling_method")
TELEMETRY = ("sm_clock_mhz", "gpu_temp_c", "gpu_power_w")


def method() -> str:
    shapes = ", ".join("x".join(map(str, s)) for s in MATMUL_SHAPES)
    return (
        f"matmul: best median of {shapes} after a {WARMUP_MS} ms warm-up; bandwidth: faster of "
        f"a copy (read + write) and a read-only sum over {BW_BYTES >> 30} GiB; L2 flushed"
    )


@functools.cache
def ceiling(device: str, dtype: str) -> dict:
    """The ceiling columns of ``device`` in ``dtype`` (None on the CPU)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dict.fromkeys(CEILING_COLUMNS)
    _warm_up(dev)
    best = max(
        tflops(2 * m * n * k, _time_matmul(dev, DTYPES[dtype], m, n, k))
        for m, n, k in MATMUL_SHAPES
    )
    copy, read = bandwidth(device)
    torch.cuda.empty_cache()
    return dict(
        matmul_tflops=best,
        copy_gbps=copy,
        read_gbps=read,
        bw_gbps=max(copy, read),
        ceiling_method=method(),
    )


@functools.cache
def _warm_up(dev) -> None:
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    bench(lambda: torch.matmul(a, a), (), dev, warmup_ms=WARMUP_MS, rep_ms=50)


def _time_matmul(dev, dtype, m, n, k) -> float:
    a = torch.randn(m, k, device=dev, dtype=dtype)
    b = torch.randn(k, n, device=dev, dtype=dtype)
    return bench(lambda: torch.matmul(a, b), (), dev, warmup_ms=100, rep_ms=300).median_ms


@functools.cache
def bandwidth(device: str) -> tuple[float, float]:
    """(copy GB/s counting read + write, read-only GB/s) over :data:`BW_BYTES` (less when the
    GPU has not that much free memory)."""
    dev = torch.device(device)
    free = torch.cuda.mem_get_info(dev)[0]
    nbytes = min(BW_BYTES, int(free * 0.4) // 4 * 4)
    copy_ms, read_ms = _time_copy(dev, nbytes), _time_read(dev, nbytes)
    return 2 * nbytes / (copy_ms * 1e-3) / 1e9, nbytes / (read_ms * 1e-3) / 1e9


def _time_copy(dev, nbytes: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src), (), dev, warmup_ms=50, rep_ms=200).median_ms


def _time_read(dev, nbytes: int) -> float:
    words = torch.zeros(nbytes // 4, dtype=torch.float32, device=dev)
    return bench(lambda: words.sum(), (), dev, warmup_ms=50, rep_ms=200).median_ms


def _nvml_handle(device: torch.device):
    import pynvml

    pynvml.nvmlInit()
    idx = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(idx), "uuid", None)
    if uuid is not None:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except pynvml.NVMLError:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(idx)


def telemetry(device: str) -> tuple[dict, str | None]:
    """({sm_clock_mhz, gpu_temp_c, gpu_power_w}, None) now, or (nulls, why not)."""
    empty = dict.fromkeys(TELEMETRY)
    dev = torch.device(device)
    if dev.type != "cuda":
        return empty, "cpu run: no GPU ceiling or telemetry"
    try:
        import pynvml

        h = _nvml_handle(dev)
        return (
            dict(
                sm_clock_mhz=float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
                gpu_temp_c=float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
                gpu_power_w=pynvml.nvmlDeviceGetPowerUsage(h) / 1e3,
            ),
            None,
        )
    except Exception as e:  # optional: no NVML is a note, never a failed run
        return (
            empty,
            f"no NVML telemetry ({type(e).__name__}: {str(e)[:80]}; pip install nvidia-ml-py)",
        )


def columns(snap: dict, when: str) -> dict:
    """Telemetry as row columns: ``sm_clock_mhz_start`` ..."""
    return {f"{k}_{when}": v for k, v in snap.items()}


def pct_of_peak(tflops: float | None, matmul_tflops: float | None) -> float | None:
    if tflops is None or not matmul_tflops:
        return None
    return 100.0 * tflops / matmul_tflops


def pct_of_bw(gbps: float | None, bw_gbps: float | None) -> float | None:
    if gbps is None or not bw_gbps:
        return None
    return 100.0 * gbps / bw_gbps
