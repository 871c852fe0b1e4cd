"""Timing, FLOP counting, memory and machine facts for the benchmarks.

All device synchronisation lives here, in the benchmark's own clock: the engine's hot path is
timed from the outside and keeps its single host sync per prediction.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

# Dense (no sparsity) tensor-core peaks in TFLOP/s for fp16 and bf16 (equal on these parts), from
# the vendors' data sheets, matched against torch.cuda.get_device_name() in this order.
GPU_PEAKS: tuple[tuple[str, float, str], ...] = (
    (r'H100.*PCIe', 756.0, 'H100 PCIe'),
    (r'H100.*NVL', 835.0, 'H100 NVL'),
    (r'H100', 989.0, 'H100 SXM'),
    (r'H200.*NVL', 835.0, 'H200 NVL'),
    (r'H200', 989.0, 'H200 SXM'),
    (r'A100', 312.0, 'A100'),
    (r'\bL4\b', 121.0, 'L4'),
    # Jetson AGX Orin 64GB: 170 sparse INT8 TOPS on the GPU -> about 42.5 dense fp16 TFLOP/s.
    (r'Orin', 42.5, 'Jetson AGX Orin 64GB'),
)


def gpu_peak(device_name: str) -> tuple[float | None, str]:
    """-> (dense fp16/bf16 peak TFLOP/s or None, the part it was matched to or 'unknown')."""
    for pattern, peak, part in GPU_PEAKS:
        if re.search(pattern, device_name):
            return peak, part
    return None, 'unknown'


class Clock:
    """perf_counter that first waits for queued device work: for the benchmark's timing only."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'
        self.device = device

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def summary(seconds: list[float]) -> dict:
    """Seconds -> p50 / p99 / mean in milliseconds, with the sample count."""
    if not seconds:
        return dict(p50_ms=None, p99_ms=None, mean_ms=None, n=0)
    ms = np.asarray(seconds) * 1e3
    return dict(p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)),
                mean_ms=float(ms.mean()), n=int(ms.size))


def repeat(fn: Callable[[int], object], *, clock: Clock, warmup: int, min_iters: int,
           max_iters: int, budget_s: float) -> list[float]:
    """Time fn(i) after `warmup` untimed calls: at least min_iters, then until budget or max."""
    for i in range(warmup):
        fn(i)
    times: list[float] = []
    started = time.perf_counter()
    i = warmup
    while len(times) < max_iters and (
            len(times) < min_iters or time.perf_counter() - started < budget_s):
        t0 = clock.now()
        fn(i)
        times.append(clock.now() - t0)
        i += 1
    return times


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the fused CPU one; without this the
# attention matmuls (most of a STEP head's work) would count as zero on a CPU.
_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations (multiply-add = 2) of one call, counted by torch."""
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
        with torch.inference_mode():
            fn()
    return int(counter.get_total_flops())


def _status_kib(field: str) -> int | None:
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith(field + ':'):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def memory(device: torch.device) -> dict:
    """Process RSS now and at peak (MiB); on CUDA also the allocator peak since its reset."""
    rss, hwm = _status_kib('VmRSS'), _status_kib('VmHWM')
    out = dict(rss_mib=None if rss is None else rss / 1024,
               peak_rss_mib=None if hwm is None else hwm / 1024,
               ru_maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if device.type == 'cuda':
        out['cuda_max_allocated_mib'] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def machine(device: torch.device) -> dict:
    info = dict(cpu=cpu_model(), nproc=os.cpu_count(), torch=torch.__version__,
                torch_threads=torch.get_num_threads(), python=platform.python_version(),
                # Other work on the machine skews CPU timings: recorded beside them.
                loadavg_1m=os.getloadavg()[0],
                device=str(device), device_name='cpu', peak_tflops=None, peak_part='unknown')
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        peak, part = gpu_peak(name)
        info.update(device_name=name, peak_tflops=peak, peak_part=part,
                    cuda=torch.version.cuda)
    return info
