"""Small shared helpers for the benchmarks: machine facts, interleaved timing, peak-RSS measurement.

Nothing here imports torch at module level, so a parent process can use it to orchestrate workers whose
thread environment (``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``) must be set before torch is imported. The CUDA
helpers (``cuda_info``, ``cuda_gemm_check``, ``cuda_peak_delta_mb``) import torch when called.
"""
from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence


# -- machine -----------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> Dict[str, object]:
    mem_gb: Optional[float] = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gb = round(int(line.split()[1]) / 2**20, 1)
                    break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gib": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


# -- timing ------------------------------------------------------------------------------------------------
def interleaved(
    fns: Dict[str, Callable[[], None]],
    reps: int,
    warmup: int,
    budget_s: Optional[float] = None,
    max_reps: Optional[int] = None,
    cpu_times: Optional[Dict[str, List[float]]] = None,
    sync: Optional[Callable[[], None]] = None,
    block: int = 1,
) -> Dict[str, List[float]]:
    """Time every callable round-robin: each repetition runs every variant once, in a rotating order.

    ``warmup`` untimed rounds come first. With ``budget_s`` the number of timed rounds is raised from ``reps``
    towards ``max_reps`` so that the timed rounds take about ``budget_s`` seconds (estimated from the last
    warm-up round). Returns the per-step wall times in seconds for each variant; if ``cpu_times`` is a dict it
    receives the per-step process CPU times (all threads), whose ratio to wall time shows how many cores a step
    really got.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before every clock reading, so that a step's time
    covers exactly its own queued device work; ``None`` (the CPU) calls nothing.

    ``block`` > 1: each timed sample is one untimed call followed by ``block`` consecutive timed calls of the
    same variant (the sample is their mean), i.e. steady-state steps as in a training loop, whose working set
    is warm in the caches. With ``block`` = 1 every sample is a single call right after the other variants ran
    (cold caches: a variant with a larger working set also pays for fetching it).
    """
    names = list(fns)
    last_round = 0.0
    for _ in range(warmup):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        for name in names:
            for _ in range(block if block == 1 else block + 1):
                fns[name]()
        if sync is not None:
            sync()
        last_round = time.perf_counter() - t0
    if budget_s is not None and last_round > 0:
        reps = max(reps, min(max_reps or reps, int(budget_s / last_round)))
    times: Dict[str, List[float]] = {name: [] for name in names}
    cpu: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if block > 1:
                fns[name]()
            if sync is not None:
                sync()
            c0 = time.process_time()
            t0 = time.perf_counter()
            for _ in range(block):
                fns[name]()
            if sync is not None:
                sync()
            t1 = time.perf_counter()
            times[name].append((t1 - t0) / block)
            cpu[name].append((time.process_time() - c0) / block)
    if cpu_times is not None:
        cpu_times.update(cpu)
    return times


def summarize(ts: Sequence[float]) -> Dict[str, float]:
    return {"min_s": min(ts), "median_s": statistics.median(ts), "mean_s": statistics.fmean(ts), "n": len(ts)}


def parallel_check(threads: int, size: int = 1536, reps: int = 6) -> Dict[str, float]:
    """GEMM throughput and CPU-time/wall-time of a ``size``³ matmul loop: how many cores the process really gets.

    On shared VMs a second vCPU can be intermittently unavailable (no steal time reported); then a
    ``threads``-thread run behaves like a 1-thread run and its timings should be read with care.
    """
    import torch

    a = torch.randn(size, size)
    a @ a
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(reps):
        a @ a
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"threads": threads, "gflops": 2 * size**3 * reps / wall / 1e9, "cpu_per_wall": cpu / wall}


# -- memory ------------------------------------------------------------------------------------------------
def _status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM and ru_maxrss) to the current RSS (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_kb() -> int:
    kb = _status_kb("VmRSS")
    if kb is None:  # pragma: no cover - non-Linux: best effort
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb


def peak_rss_kb() -> int:
    kb = _status_kb("VmHWM")
    return kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_delta_mb(fn: Callable[[], None]) -> Dict[str, float]:
    """Run ``fn`` once; return the rise of peak RSS above the RSS just before it, in MB (10⁶ bytes).

    The peak mark is reset first where the kernel allows it; otherwise the delta is taken against the
    earlier peak (``ru_maxrss``), which can only under-estimate.
    """
    reset_ok = reset_peak_rss()
    base = current_rss_kb() if reset_ok else peak_rss_kb()
    fn()
    peak = peak_rss_kb()
    return {"peak_delta_mb": (peak - base) * 1024 / 1e6, "peak_reset": reset_ok}


# -- CUDA (torch imported on call) ---------------------------------------------------------------------------
def cuda_info() -> Dict[str, object]:
    """The current CUDA device, the CUDA/cuDNN versions torch was built with, and the TF32 settings."""
    import torch

    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    major, minor = torch.cuda.get_device_capability(dev)
    return {
        "device_name": torch.cuda.get_device_name(dev),
        "device_index": dev,
        "device_count": torch.cuda.device_count(),
        "capability": f"{major}.{minor}",
        "total_mem_gib": round(props.total_memory / 2**30, 1),
        "multi_processors": props.multi_processor_count,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def cuda_gemm_check(size: int = 4096, reps: int = 10, dtype: str = "float32") -> Dict[str, object]:
    """Throughput of a ``size``³ matmul loop on the current CUDA device, synchronised before each clock reading."""
    import torch

    a = torch.randn(size, size, device="cuda", dtype=getattr(torch, dtype))
    a @ a
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    del a
    return {"size": size, "dtype": dtype, "tflops": 2 * size**3 * reps / wall / 1e12}


def cuda_peak_delta_mb(fn: Callable[[], None]) -> Dict[str, float]:
    """Run ``fn`` once; the rise of ``torch.cuda.max_memory_allocated()`` above ``memory_allocated()`` before it.

    Exact (the caching allocator's own count of live tensor bytes), in MB (10⁶ bytes); ``peak_mb`` and
    ``base_mb`` are the absolute figures.
    """
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"step_mb": (peak - base) / 1e6, "peak_mb": peak / 1e6, "base_mb": base / 1e6}
