#!/usr/bin/env python
"""TrAct overhead on the CPU or a CUDA GPU: one first-layer forward + backward step, plain layer vs TrAct.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tract_overhead.py            # 1 and 2 threads (~3-4 min)
    .venv/bin/python benchmarks/tract_overhead.py --threads 1                  # one thread setting
    .venv/bin/python benchmarks/tract_overhead.py --quick                      # smoke run (< 1 min)
    .venv/bin/python benchmarks/tract_overhead.py --amp bf16                   # CPU autocast bf16 around the forward

On a CUDA GPU (a CUDA build of torch, with ``tractable`` importable: ``pip install -e .`` or ``PYTHONPATH=src``)::

    python benchmarks/tract_overhead.py --device cuda --quick                  # smoke run (seconds)
    python benchmarks/tract_overhead.py --device cuda                          # float32
    python benchmarks/tract_overhead.py --device cuda --amp bf16               # torch.autocast("cuda", bfloat16)
    python benchmarks/tract_overhead.py --device cuda --amp fp16               # torch.autocast("cuda", float16)
    python benchmarks/tract_overhead.py --device cuda --amp bf16 --scale 8     # every batch ×8

Default JSON: ``results/tract_overhead.json`` (CPU), ``results/tract_overhead_cpu_bf16.json`` (CPU, --amp bf16),
``results/tract_overhead_cuda.json`` (CUDA, float32), ``results/tract_overhead_cuda_{bf16,fp16}.json`` (CUDA
with --amp). ``--device cuda`` without a usable GPU exits with status 2 and a one-line message.

What is measured
----------------
For each shape the step is ``out = layer(x); loss = (out * t).sum(); loss.backward()`` followed by
``zero_grad(set_to_none=True)``, with ``x`` not requiring grad and ``t`` a fixed random tensor, identical for
every variant:

* ``plain``    -- the layer itself;
* ``ours``     -- ``tractable.TrAct(copy.deepcopy(layer), l=0.1)``;
* ``official`` -- ``torch_tract.TrAct(copy.deepcopy(layer), l=0.1)`` (PyPI ``torch_tract`` 1.0.0), only if it
  is importable and only for ``nn.Linear``/``nn.Conv2d`` (all it supports); skipped otherwise.

Timing is interleaved in one process (each repetition runs every variant once, in a rotating order, after
warm-up rounds); we report the min and median seconds per step and the ratio of medians to ``plain``.
Each thread setting runs in its own re-executed worker process, so that ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``
are set before torch is imported; with more than one thread the worker also gets ``OMP_WAIT_POLICY=PASSIVE``
(busy-waiting OpenMP threads cause large stalls on small VMs). The workers also pin glibc's malloc thresholds
(``MALLOC_MMAP_THRESHOLD_=32 MiB``, no trimming; ``--system-malloc`` keeps the defaults): otherwise page faults
from glibc's dynamic mmap threshold and heap trimming hit a random ~40 % of the steps of small layers and double
their time. Blocks above 32 MiB are still mmap'ed, so their page faults are paid on every step, by every variant.
Process CPU time is recorded next to wall time: on shared VMs the second vCPU is at times unavailable, which shows
as cores-used ≈ 1 in a 2-thread run (reported in the header of each table).

With ``--amp bf16|fp16`` only ``out = layer(x)`` runs under ``torch.autocast(device, dtype)``; the loss, the
backward and the parameters stay float32 (TrAct's statistic and solve run in float32 whatever the autocast).
``torch_tract`` is dropped for a shape (reason in the JSON's ``official_error``) if its gradient check fails there,
as it does for Conv2d under CPU autocast.

CUDA (``--device cuda``): one process, no thread settings, no malloc pinning. Layers, inputs and loss weights are
built on the CPU exactly as there (same seeds, same values) and moved to the GPU. Every clock reading is preceded
by ``torch.cuda.synchronize()``, so a step's time is its host launch time plus its own GPU work; warm-up rounds and
interleaving as on the CPU. Memory is exact and measured in the same process after the timing:
``torch.cuda.reset_peak_memory_stats()``, one step, ``max_memory_allocated()`` minus ``memory_allocated()`` before
the step; "extra MB" = variant's rise − plain's. torch's TF32 defaults are left as they are and recorded (with
them float32 convolutions may use TF32 in cuDNN while float32 matmuls do not). The header gives a 4096³ float32
GEMM check at the start and end of the run.

Memory: the extra peak memory of one step is measured in a fresh subprocess per (shape, variant)
(``--memory-child``). The child builds everything, runs one warm-up step (library initialisation and caches
are not counted), resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), runs one step and reports the
rise of the peak RSS (VmHWM) above the RSS before the step. glibc's dynamic mmap threshold is pinned
(``MALLOC_MMAP_THRESHOLD_=131072``) so that freed large blocks go back to the kernel and RSS tracks the live
bytes. "extra MB" = variant's rise − plain's rise (MB = 10⁶ bytes). The first step's rise is kept in the JSON.

FLOP floor
----------
With b rows (samples, tokens or receptive fields), n = C·∏k inputs per row and m outputs, the plain step costs
``2·b·m·n`` flops for the forward GEMM and ``2·b·m·n`` for the weight gradient (the input needs no grad, so
there is no input-gradient GEMM): ``4·b·m·n``. TrAct's unavoidable extra work, in the cheaper of its two
algebraically equal forms with s = min(b, n), r = max(b, n):

* the Gram of the rows, s×s, symmetric: ``r·s²`` flops (a SYRK: half of a GEMM's ``2·r·s²``);
* its Cholesky factorisation: ``s³/3`` flops;
* two triangular solves with m right-hand sides: ``2·m·s²`` flops.

For b ≥ n (n×n form) the plain ``GᵀX`` is reused; for b < n (b×b push-through form,
``Gᵀ (XXᵀ/b + λI)⁻¹ X``) the solve acts on Gᵀ and the product with X *replaces* the plain ``GᵀX``, so no GEMM is
added either. Hence::

    floor = 1 + (r·s² + s³/3 + 2·m·s²) / (4·b·m·n)

= 1.11 (CIFAR stem), 1.54 (ViT-S/16), 1.07 (4×4 patch), 1.44 (Linear(784,256), b×b form) — the floors quoted
for these shapes. It ignores memory traffic (unfold copies, the plain conv's own inefficiency), so measured
ratios can undercut it when the plain kernel runs far below peak, and exceed it by up to ``r·s²/(4bmn)`` when
the Gram is an ordinary GEMM instead of a SYRK.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "tract_overhead.json"
VARIANTS = ("plain", "ours", "official")
AMP_DTYPES = {"none": None, "bf16": "bfloat16", "fp16": "float16"}  # --amp -> torch dtype name
# glibc malloc for the timing workers: a fixed 32 MiB mmap threshold (glibc's own ceiling for its dynamic one) and
# no heap trimming, so that blocks up to 32 MiB are reused without page faults. With glibc's defaults the dynamic
# threshold and trimming make ~40 % of the steps of a 4 ms layer pay thousands of page faults (4.8 ms vs 9.3 ms
# per step here), in no fixed pattern. Blocks above 32 MiB are still mmap'ed and faulted in on every step.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}

# name -> (description, layer constructor taking the torch.nn module, input shape); no torch import up here
SHAPES = {
    "stem": ("ResNet CIFAR stem: Conv2d(3,64,3,p=1,bias=False), B=128, 32×32",
             lambda nn: nn.Conv2d(3, 64, 3, padding=1, bias=False), (128, 3, 32, 32)),
    "vit_s16": ("ViT-S/16 patch embedding: Conv2d(3,384,16,s=16), B=64, 224×224",
                lambda nn: nn.Conv2d(3, 384, 16, stride=16), (64, 3, 224, 224)),
    "patch4": ("4×4 patch embedding: Conv2d(3,192,4,s=4), B=128, 32×32",
               lambda nn: nn.Conv2d(3, 192, 4, stride=4), (128, 3, 32, 32)),
    "linear": ("Linear(784,256), B=256", lambda nn: nn.Linear(784, 256), (256, 784)),
    "linear_b4096": ("Linear(784,256), B=4096 (n×n form)", lambda nn: nn.Linear(784, 256), (4096, 784)),
    "conv1d": ("Conv1d(3,64,7,p=3), B=64, L=1024", lambda nn: nn.Conv1d(3, 64, 7, padding=3), (64, 3, 1024)),
    "conv3d": ("Conv3d(3,32,3,p=1), B=8, 16×32×32", lambda nn: nn.Conv3d(3, 32, 3, padding=1), (8, 3, 16, 32, 32)),
}
SHORT = {"stem": "CIFAR stem 3→64 k3", "vit_s16": "ViT-S/16 embed", "patch4": "4×4 patch embed",
         "linear": "Linear(784,256)", "linear_b4096": "Linear(784,256) B=4096", "conv1d": "Conv1d(3,64,7) L=1024",
         "conv3d": "Conv3d(3,32,3) 16×32²"}


def floor_ratio(b: int, n: int, m: int) -> float:
    """FLOP floor of TrAct-step / plain-step (see the module docstring)."""
    s, r = min(b, n), max(b, n)
    return 1.0 + (r * s * s + s**3 / 3.0 + 2.0 * m * s * s) / (4.0 * b * m * n)


def input_shape(name: str, quick: bool, scale: int = 1):
    shape = SHAPES[name][2]
    if quick:  # a quarter of the batch: same per-row geometry, same n×n / b×b form
        shape = (max(1, shape[0] // 4),) + tuple(shape[1:])
    if scale != 1:  # --scale: every batch ×scale (b grows, so a b×b shape can switch to the n×n form)
        shape = (shape[0] * scale,) + tuple(shape[1:])
    return shape


def default_json(device: str, amp: str) -> Path:
    if device == "cpu":
        return DEFAULT_JSON if amp == "none" else HERE / "results" / f"tract_overhead_cpu_{amp}.json"
    return HERE / "results" / ("tract_overhead_cuda.json" if amp == "none" else f"tract_overhead_cuda_{amp}.json")


# ----------------------------------------------------------------------------------------------------------
# torch side (worker and memory child only)
# ----------------------------------------------------------------------------------------------------------
def _official():
    try:
        import torch_tract  # noqa: F401

        return torch_tract
    except Exception:
        return None


def build(name: str, quick: bool, variants=VARIANTS, seed: int = 0, scale: int = 1, device: str = "cpu"):
    """Modules for the requested variants (same initial weights), the input and the loss weights.

    Everything is built on the CPU (same values whatever the device) and then moved to ``device``.
    """
    import torch
    import torch.nn as nn

    import tractable

    torch.manual_seed(seed)
    base = SHAPES[name][1](nn)
    x = torch.randn(input_shape(name, quick, scale))
    with torch.no_grad():
        out = base(x)
    t = torch.randn_like(out)
    m = base.weight.shape[0]
    geo = {"b": out.numel() // m, "n": base.weight[0].numel(), "m": m}
    geo["floor"] = floor_ratio(geo["b"], geo["n"], geo["m"])
    geo["form"] = "bxb" if geo["b"] < geo["n"] else "nxn"
    mods = {}
    for v in variants:
        if v == "plain":
            mods[v] = copy.deepcopy(base)
        elif v == "ours":
            mods[v] = tractable.TrAct(copy.deepcopy(base), l=0.1)
        elif v == "official":
            tt = _official()
            if tt is not None and isinstance(base, (nn.Linear, nn.Conv2d)):
                mods[v] = tt.TrAct(copy.deepcopy(base), l=0.1)
    if device != "cpu":
        mods = {v: mod.to(device) for v, mod in mods.items()}
        x, t = x.to(device), t.to(device)
    return mods, x, t, geo


def autocast_factory(device: str, amp: str):
    """None for ``--amp none``, else a zero-argument callable returning ``torch.autocast(device, dtype)``."""
    if amp == "none":
        return None
    import torch

    dtype = getattr(torch, AMP_DTYPES[amp])
    return lambda: torch.autocast(device, dtype=dtype)


def make_step(mod, x, t, autocast=None):
    """One step; with ``autocast`` (see :func:`autocast_factory`) only the forward ``mod(x)`` runs under it."""
    if autocast is None:
        def step():
            out = mod(x)
            loss = (out * t).sum()
            loss.backward()
            mod.zero_grad(set_to_none=True)
    else:
        def step():
            with autocast():
                out = mod(x)
            loss = (out * t).sum()
            loss.backward()
            mod.zero_grad(set_to_none=True)

    return step


def weight_grad(mod, x, t, autocast=None):
    if autocast is None:
        out = mod(x)
    else:
        with autocast():
            out = mod(x)
    (out * t).sum().backward()
    g = mod.weight.grad.detach().clone()
    mod.zero_grad(set_to_none=True)
    return g


def memory_child(name: str, variant: str, quick: bool, amp: str = "none", scale: int = 1) -> None:
    """Fresh-process peak-RSS rise of one step (printed as one JSON line)."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    mods, x, t, _ = build(name, quick, variants=(variant,), scale=scale)
    if variant not in mods:
        print("MEMJSON " + json.dumps(None))
        return
    step = make_step(mods[variant], x, t, autocast_factory("cpu", amp))
    first = _timing.peak_delta_mb(step)
    second = _timing.peak_delta_mb(step)
    print("MEMJSON " + json.dumps({"first_step_mb": first["peak_delta_mb"], "step_mb": second["peak_delta_mb"],
                                   "peak_reset": second["peak_reset"]}))


def run_memory(name: str, quick: bool, variants, parallel: int = 2, amp: str = "none", scale: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    res = {}
    # fresh processes, run `parallel` at a time (peak RSS is per process, so they do not disturb each other)
    pending = list(variants)
    while pending:
        batch, pending = pending[:parallel], pending[parallel:]
        procs = {}
        for v in batch:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, v]
            cmd += (["--amp", amp] if amp != "none" else []) + (["--scale", str(scale)] if scale != 1 else [])
            procs[v] = subprocess.Popen(cmd + (["--quick"] if quick else []), env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        for v, p in procs.items():
            stdout, stderr = p.communicate()
            line = [ln for ln in stdout.splitlines() if ln.startswith("MEMJSON ")]
            if p.returncode != 0 or not line:
                res[v] = {"error": (stderr or stdout)[-2000:]}
            else:
                res[v] = json.loads(line[-1][len("MEMJSON "):])
    base = res.get("plain") or {}
    for v in variants:
        r = res.get(v)
        if v != "plain" and isinstance(r, dict) and "step_mb" in r and "step_mb" in base:
            r["extra_mb"] = r["step_mb"] - base["step_mb"]
            r["extra_first_step_mb"] = r["first_step_mb"] - base["first_step_mb"]
    return res


def reps_warmup_budget(args):
    reps = args.reps or (5 if args.quick else 21)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    return reps, warmup, (None if args.quick else args.budget)


def time_shape(args, name: str, device: str = "cpu", autocast=None, sync=None):
    """Build one shape, check ours against the official gradient, time all variants interleaved.

    Returns ``(entry, mods, x, t)``; the caller measures memory and frees the modules.
    """
    reps, warmup, budget = reps_warmup_budget(args)
    mods, x, t, geo = build(name, args.quick, scale=args.scale, device=device)
    if args.no_official:
        mods.pop("official", None)
    entry = {"description": SHAPES[name][0], "input_shape": list(x.shape), **geo}
    # the two TrAct implementations should agree (same Eq. 12 gradient)
    if "official" in mods:
        try:
            g_o = weight_grad(mods["official"], x, t, autocast)
        except Exception as e:  # e.g. torch_tract's conv under CPU autocast: drop it for this shape
            entry["official_error"] = f"{type(e).__name__}: {e}"[:1000]
            del mods["official"]
            print(f"  {name}: torch_tract failed, skipped for this shape: {entry['official_error'][:200]}", flush=True)
        else:
            g_u = weight_grad(mods["ours"], x, t, autocast)
            entry["ours_vs_official_rel_diff"] = float((g_o - g_u).norm() / g_o.norm())
    fns = {v: make_step(mod, x, t, autocast) for v, mod in mods.items()}
    cpu = {}
    times = _timing.interleaved(fns, reps=reps, warmup=warmup, budget_s=budget, max_reps=args.max_reps,
                                cpu_times=cpu, sync=sync)
    entry["timing"] = {v: _timing.summarize(ts) for v, ts in times.items()}
    for v in times:  # cores actually used: process CPU time / wall time, median over steps
        entry["timing"][v]["cpu_per_wall_median"] = statistics.median(c / w for c, w in zip(cpu[v], times[v]))
    entry["times_s"] = times
    med0 = entry["timing"]["plain"]["median_s"]
    entry["ratio_median"] = {v: s["median_s"] / med0 for v, s in entry["timing"].items()}
    entry["ratio_min"] = {v: s["min_s"] / entry["timing"]["plain"]["min_s"] for v, s in entry["timing"].items()}
    # robust to slow drifts of the machine's speed: the median over rounds of (variant / plain, same round)
    entry["ratio_paired_median"] = {
        v: statistics.median(a / p for a, p in zip(ts, times["plain"])) for v, ts in times.items()
    }
    return entry, mods, x, t


def _timing_msg(entry) -> str:
    return "  ".join(f"{v} {1e3 * s['median_s']:.2f} ms" + ("" if v == "plain" else
                                                           f" (paired {entry['ratio_paired_median'][v]:.2f}×)")
                     for v, s in entry["timing"].items())


def worker(args) -> dict:
    import torch

    threads = args.threads_one
    torch.set_num_threads(threads)
    tt = _official()
    info = {
        "threads": threads,
        "torch_num_threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                                               "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")},
        "torch": torch.__version__,
        "torch_parallel": torch.__config__.parallel_info().splitlines()[-1].strip(),
        "official": getattr(tt, "__version__", None) or (_dist_version("torch_tract") if tt else None),
        "machine": _timing.machine_info(),
        "quick": args.quick,
        "shapes": {},
    }
    if args.amp != "none":  # only when asked for, so that the default JSON keeps its keys
        info["amp"] = args.amp
    if args.scale != 1:
        info["scale"] = args.scale
    info["parallel_check_start"] = _timing.parallel_check(threads)
    autocast = autocast_factory("cpu", args.amp)
    for name in args.shape_list:
        t0 = time.perf_counter()
        entry, mods, x, t = time_shape(args, name, "cpu", autocast)
        del mods
        if not args.no_memory:
            entry["memory"] = run_memory(name, args.quick, [v for v in VARIANTS if v in entry["timing"]],
                                         parallel=3 if args.quick else 2, amp=args.amp, scale=args.scale)
        info["shapes"][name] = entry
        util = entry["timing"]["plain"]["cpu_per_wall_median"]
        print(f"[{threads} thr] {name:8s} reps={len(entry['times_s']['plain'])}  {_timing_msg(entry)}  "
              f"(plain cpu/wall {util:.2f}; {time.perf_counter() - t0:.1f} s)", flush=True)
    info["parallel_check_end"] = _timing.parallel_check(threads)
    return info


def cuda_memory(mods, x, t, autocast) -> dict:
    """Exact extra device memory of one step, same process (the caller has warmed every variant up)."""
    res = {v: _timing.cuda_peak_delta_mb(make_step(mod, x, t, autocast)) for v, mod in mods.items()}
    base = res["plain"]
    for v, r in res.items():
        if v != "plain":
            r["extra_mb"] = r["step_mb"] - base["step_mb"]
            r["extra_peak_mb"] = r["peak_mb"] - base["peak_mb"]
    return res



def _payload_common() -> dict:
    """Keys every JSON result of this benchmark starts with."""
    return {
        "benchmark": "tract_overhead",
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "floor_formula": "1 + (r*s^2 + s^3/3 + 2*m*s^2) / (4*b*m*n), s=min(b,n), r=max(b,n)",
    }

def cuda_worker(args) -> dict:
    """All shapes on the current CUDA device, in this process (no thread settings: one worker)."""
    import torch

    tt = _official()
    info = {
        "device": "cuda",
        "amp": args.amp,
        "scale": args.scale,
        "cuda": _timing.cuda_info(),
        "torch": torch.__version__,
        "official": getattr(tt, "__version__", None) or (_dist_version("torch_tract") if tt else None),
        "machine": _timing.machine_info(),
        "quick": args.quick,
        "shapes": {},
    }
    info["gemm_check_start"] = _timing.cuda_gemm_check()
    autocast = autocast_factory("cuda", args.amp)
    for name in args.shape_list:
        t0 = time.perf_counter()
        entry, mods, x, t = time_shape(args, name, "cuda", autocast, sync=torch.cuda.synchronize)
        if not args.no_memory:
            entry["memory"] = cuda_memory(mods, x, t, autocast)
        del mods, x, t
        torch.cuda.empty_cache()
        info["shapes"][name] = entry
        print(f"[cuda] {name:8s} reps={len(entry['times_s']['plain'])}  {_timing_msg(entry)}  "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    info["gemm_check_end"] = _timing.cuda_gemm_check()
    return info


def _dist_version(dist: str):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------------------
# parent: no torch import here, so that every worker chooses its thread environment before importing torch
# ----------------------------------------------------------------------------------------------------------
def _fmt_ms(s):
    return f"{1e3 * s['median_s']:.2f} ({1e3 * s['min_s']:.2f})" if s else "–"


def _fmt(x, spec):
    return format(x, spec) if isinstance(x, (int, float)) else "–"


def _ratio(rt, rmin, v):
    return f"{rt[v]:.2f}× ({rmin[v]:.2f}×)" if v in rt else "–"


def table(res: dict) -> str:
    lines = [
        "| shape | b | n | m | floor | plain ms | ours ms | ours/plain | official ms | official/plain "
        "| plain step MB | ours extra MB | official extra MB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, e in res["shapes"].items():
        tm, rt, rmin, mem = e["timing"], e["ratio_median"], e["ratio_min"], e.get("memory", {})
        mem_plain = (mem.get("plain") or {}).get("step_mb")
        lines.append(
            f"| {SHORT[name]} | {e['b']} | {e['n']} | {e['m']} | {e['floor']:.2f}× | {_fmt_ms(tm['plain'])} "
            f"| {_fmt_ms(tm.get('ours'))} | {_ratio(rt, rmin, 'ours')} | {_fmt_ms(tm.get('official'))} "
            f"| {_ratio(rt, rmin, 'official')} | {_fmt(mem_plain, '.1f')} "
            f"| {_fmt((mem.get('ours') or {}).get('extra_mb'), '+.1f')} "
            f"| {_fmt((mem.get('official') or {}).get('extra_mb'), '+.1f')} |"
        )
    return "\n".join(lines)


def header(res: dict) -> str:
    m = res["machine"]
    env = ", ".join(f"{k}={v}" for k, v in res["env"].items() if v is not None)
    return (
        f"### {res['threads']} thread(s)\n\n"
        f"{m['cpu_model']}, {m['logical_cpus']} logical CPUs; torch {res['torch']} "
        f"(torch.get_num_threads()={res['torch_num_threads']}); torch_tract {res['official'] or 'not installed'}; "
        f"env: {env}"
        + ("; OMP_WAIT_POLICY=PASSIVE was set before importing torch" if res["threads"] > 1 else "")
        + (" [--quick: batch/4, few reps; memory measured for the first thread setting only]" if res["quick"] else "")
        + _options_note(res)
        + "\n\nGEMM check (1536³ matmul loop, start → end of this worker): "
        + " → ".join(f"{c['gflops']:.0f} GFLOPS at {c['cpu_per_wall']:.2f} cores"
                     for c in (res.get("parallel_check_start"), res.get("parallel_check_end")) if c)
        + "; median cores used by a plain step: "
        + ", ".join(f"{SHORT[k]} {e['timing']['plain'].get('cpu_per_wall_median', float('nan')):.2f}"
                    for k, e in res["shapes"].items())
        + "\n\nms = median (min) of the per-step wall time, in ms; ratio = median / plain's median (min / plain's min); "
        "extra MB = peak-RSS rise of one step minus plain's, fresh process.\n"
    )


def _options_note(res: dict) -> str:
    """Header text for non-default options (empty for a default run, so its header is unchanged)."""
    parts = []
    if res.get("amp", "none") != "none":
        parts.append(f"; amp: torch.autocast({res.get('device', 'cpu')!r}, dtype=torch.{AMP_DTYPES[res['amp']]}) "
                     "around the forward")
    if res.get("scale", 1) != 1:
        parts.append(f"; batch ×{res['scale']} (--scale)")
    failed = [SHORT[k] for k, e in res["shapes"].items() if "official_error" in e]
    if failed:
        parts.append(f"; torch_tract failed and was skipped on: {', '.join(failed)} (JSON: official_error)")
    return "".join(parts)


def cuda_header(res: dict) -> str:
    c, m = res["cuda"], res["machine"]
    checks = [ck for ck in (res.get("gemm_check_start"), res.get("gemm_check_end")) if ck]
    return (
        f"### CUDA: {c['device_name']}, amp {res['amp']}\n\n"
        f"{c['device_name']} (compute capability {c['capability']}, {c['total_mem_gib']} GiB, "
        f"{c['multi_processors']} SMs); CUDA {c['cuda_version']}, cuDNN {c['cudnn_version']}; torch {res['torch']}; "
        f"torch_tract {res['official'] or 'not installed'}; TF32: matmul {c['tf32_matmul']} "
        f"(float32_matmul_precision={c['float32_matmul_precision']}), cuDNN {c['tf32_cudnn']}; "
        f"cudnn.benchmark={c['cudnn_benchmark']}; host {m['cpu_model']}"
        + ("; amp: none (float32)" if res["amp"] == "none" else "")
        + _options_note(res)
        + (" [--quick: batch/4, few reps]" if res["quick"] else "")
        + "\n\nGEMM check (4096³ float32 matmul loop, start → end of the run): "
        + " → ".join(f"{ck['tflops']:.1f} TFLOPS" for ck in checks)
        + "\n\nms = median (min) of the per-step wall time (torch.cuda.synchronize() before every clock reading), in ms; "
        "ratio = median / plain's median (min / plain's min); plain step MB = rise of torch.cuda.max_memory_allocated() "
        "during one step above memory_allocated() before it; extra MB = variant's rise minus plain's, same process.\n"
    )


def run_cuda(args) -> int:
    """``--device cuda``: one in-process run; exit status 2 with a one-line message if CUDA is unusable."""
    try:
        import torch
    except Exception as e:  # pragma: no cover - torch is a dependency
        print(f"tract_overhead.py: --device cuda: cannot import torch ({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(f"tract_overhead.py: --device cuda requested, but CUDA is not available "
              f"(torch {torch.__version__}, built with CUDA {torch.version.cuda or 'none'}, "
              f"{torch.cuda.device_count()} device(s) visible). Run on a machine with an NVIDIA GPU and a CUDA build "
              f"of torch, or drop --device cuda for the CPU benchmark.", file=sys.stderr)
        return 2
    if args.threads is not None or args.system_malloc:
        print("note: --threads/--system-malloc only apply to the CPU benchmark; ignored with --device cuda",
              file=sys.stderr)
    t_start = time.perf_counter()
    print(f"== CUDA: {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, amp {args.amp}"
          + (f", batch ×{args.scale}" if args.scale != 1 else ""), flush=True)
    res = cuda_worker(args)
    total = time.perf_counter() - t_start
    print()
    print(cuda_header(res))
    print(table(res))
    print()
    print(f"total wall time {total:.0f} s")
    payload = {
        **_payload_common(),
        "device": "cuda",
        "amp": args.amp,
        "scale": args.scale,
        "cuda": res["cuda"],
        "machine": res["machine"],
        "wall_s": total,
        "runs": [res],
    }
    path = Path(args.json or default_json("cuda", args.amp))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="one thread count (default: run 1 and 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: batch/4, 5 reps, 1 warm-up round")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu (default: thread-setting workers) or cuda (one in-process run on the current GPU)")
    ap.add_argument("--amp", choices=tuple(AMP_DTYPES), default="none",
                    help="autocast dtype around the forward (default none); on the CPU only bf16")
    ap.add_argument("--scale", type=int, default=1, help="multiply every batch size by this (default 1)")
    ap.add_argument("--json", default=None,
                    help=f"write all numbers here (default {DEFAULT_JSON}; *_cpu_bf16.json with --amp bf16 on the CPU; "
                         "tract_overhead_cuda.json / _cuda_bf16.json / _cuda_fp16.json with --device cuda)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--reps", type=int, default=None, help="minimum timed rounds (default 21; quick 5)")
    ap.add_argument("--max-reps", type=int, default=101, help="cap when --budget raises the rounds")
    ap.add_argument("--budget", type=float, default=6.0, help="seconds of timed rounds per shape (default 6)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 5; quick 1)")
    ap.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurement")
    ap.add_argument("--no-official", action="store_true", help="skip torch_tract even if installed")
    ap.add_argument("--system-malloc", action="store_true",
                    help="keep glibc's default malloc thresholds in the timing workers (noisier)")
    ap.add_argument("--memory-child", nargs=2, metavar=("SHAPE", "VARIANT"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.shape_list = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in args.shape_list if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shapes {unknown}; choose from {list(SHAPES)}")
    if args.device == "cpu" and args.amp not in ("none", "bf16"):
        ap.error(f"--amp {args.amp} needs --device cuda; on the CPU only --amp bf16 is valid")
    if args.scale < 1:
        ap.error("--scale must be a positive integer")

    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1], args.quick, args.amp, args.scale)
        return 0
    if args.worker_out:
        args.threads_one = args.threads
        res = worker(args)
        Path(args.worker_out).write_text(json.dumps(res))
        return 0
    if args.device == "cuda":
        return run_cuda(args)

    thread_list = [args.threads] if args.threads else [1, 2]
    t_start = time.perf_counter()
    results = []
    for i, n in enumerate(thread_list):
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(n)
        if n > 1:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        if not args.system_malloc:
            env.update(MALLOC_ENV)
        print(f"== worker: {n} thread(s), OMP_NUM_THREADS={n}, MKL_NUM_THREADS={n}"
              + (", OMP_WAIT_POLICY=PASSIVE (set before torch is imported)" if n > 1 else ""), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "res.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-out", str(out), "--threads", str(n)]
            cmd += sys.argv[1:] if argv is None else list(argv)
            if args.quick and i > 0:  # quick: fresh-process memory only for the first thread setting
                cmd.append("--no-memory")
            # the user's own arguments follow ours, so a --threads given there wins (it is the same value)
            p = subprocess.run(cmd, env=env)
            if p.returncode != 0 or not out.exists():
                print(f"worker with {n} thread(s) failed (rc={p.returncode})", file=sys.stderr)
                return 1
            results.append(json.loads(out.read_text()))
    total = time.perf_counter() - t_start
    print()
    for res in results:
        print(header(res))
        print(table(res))
        print()
    print(f"total wall time {total:.0f} s")
    payload = {
        **_payload_common(),
        "machine": results[0]["machine"] if results else _timing.machine_info(),
        "wall_s": total,
        "runs": results,
    }
    if args.amp != "none":  # only when asked for, so that the default JSON keeps its keys
        payload["amp"] = args.amp
    if args.scale != 1:
        payload["scale"] = args.scale
    path = Path(args.json or default_json("cpu", args.amp))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
