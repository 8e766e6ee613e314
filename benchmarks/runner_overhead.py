#!/usr/bin/env python
"""Runner overhead on the CPU: training throughput of ``tractable.train.train`` versus a bare PyTorch loop.

Run from the repository root::

    .venv/bin/python benchmarks/runner_overhead.py                 # 1 thread, all settings (~2-3 min)
    .venv/bin/python benchmarks/runner_overhead.py --quick         # smoke run (< 40 s)
    .venv/bin/python benchmarks/runner_overhead.py --threads 2     # 2 threads, OMP_WAIT_POLICY=PASSIVE

Settings (CPU-sized; no augmentation in either variant):

* ``small_cnn`` -- ``small_cnn`` on ``synthetic`` 3×32×32 uint8 images (1024), batch 128, 1 epoch (8 steps);
* ``mlp`` -- ``mlp`` (hidden [256, 256]) on ``digits`` 1×8×8 (1437), batch 32, 10 epochs (450 tiny steps: this
  exposes the per-step Python/launch overhead);
* ``mlp_b256`` -- the same at batch 256, 30 epochs (180 steps);
* ``resnet18`` -- ``resnet18_cifar`` on 128 synthetic images, batch 64 (2 steps; skipped by ``--quick``).

What is compared
----------------
Per setting, three variants train the same model for the same steps, interleaved in one process (each
repetition runs every variant once, in a rotating order, after one untimed warm-up round):

* ``bare`` -- a loop written here: ``torch.manual_seed(seed)``; ``create_model``; ``torch.optim.SGD`` (momentum
  0.9); per epoch the sample order ``randperm(N, generator=make_generator(seed, "perm", epoch))`` (the order the
  runner's ``DeviceLoader`` uses); per batch ``x, y = X[idx], Y[idx]``, ``zero_grad(set_to_none=True)``,
  ``F.cross_entropy(model(x), y).backward()``, ``step()``. ``X`` is the training set converted and normalised
  *once*, before timing, with the dataset's mean/std (the same element-wise formula as the loader's).
* ``runner`` -- ``tractable.train.train(cfg, train_data=..., test_data=...)`` on the *same* ``ArrayDataset``
  tensors (its own seeding, model construction, ``DeviceLoader``, optimizer and constant ``LambdaLR``), with
  ``train.progress=false``, ``train.eval_every=0`` and ``train.save_every=0`` (the runner then evaluates and
  checkpoints once, after the last epoch, outside the timed part), ``train.plots=false`` and the default
  ``train.log_every=50`` (a step record every 50 steps: metrics all-reduced, a JSONL line written and flushed).
* ``runner+bar`` -- the same with ``train.progress=true`` (tqdm bar and the epoch line, sent to ``os.devnull``).

Both start from the same weights and visit the same batches with the same optimizer, so they do the same
arithmetic: after every repetition the script compares the final weights (and BatchNorm buffers) of the runner
variants with the bare loop's and reports the largest absolute difference -- 0 when the runner computes exactly
what the bare loop does (it does, on CPU).

What is timed
-------------
Training steps only, in both. For the runner this is its own ``summary.json`` measure: ``images_per_s`` =
images seen / ``train_time_s``, where ``train_time_s`` sums, per epoch, the wall time of the loop over the
batches -- batch production by the ``DeviceLoader`` (gather, uint8/float conversion, normalisation), the
optimizer steps with the task's metric statistics and their accumulation, the LR scheduler, the progress bar and
the step logging -- and excludes set-up (data to device, model, optimizer, run directory), evaluation,
checkpoints and the epoch records (``images_per_s`` is rounded to 0.01 img/s: exact enough). For the bare loop
the script times the same span: from the first epoch's permutation to the end of the last step. The runner's
fixed cost per run (set-up + final evaluation + checkpoint + summary/CSV files) is reported separately: wall
time of the ``train()`` call minus its ``train_time_s``.

Secondary, contention-robust measure: process CPU time per epoch from the first step's start to the last step's
end (a ``Hook`` in the runner -- five near-empty hook calls per step, well under 1 µs -- and the same points in
the bare loop). On a shared VM the wall clock also counts time when other processes held the CPU; CPU time does
not (it still sees cache and memory-bandwidth contention).

Reported: median images/s over the repetitions per variant and the ratio of medians runner/bare (target
≥ 0.95); also the ratio of the best runs (max images/s), the CPU-time ratio and the per-step difference in ms.
The JSON keeps every repetition, the median of the per-repetition ratios, minor page faults per call and the
1-minute load average before and after each setting.

Allocator: by default (``--malloc pinned``) glibc's ``M_MMAP_THRESHOLD`` is fixed at 32 MiB and heap trimming is
off (``mallopt`` before torch is imported). With glibc's dynamic defaults, freed activation buffers are often
unmapped and page-faulted back in on the next step, which makes the per-run throughput of *both* variants vary by
±10-25 % with the allocator's history; pinning removes those faults. ``--malloc default`` measures the untouched
allocator.

Threads: ``--threads N`` sets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` before torch is imported and calls
``torch.set_num_threads(N)``; with N > 1 it also sets ``OMP_WAIT_POLICY=PASSIVE`` (busy-waiting OpenMP threads
stall some ops 100-1000x on small VMs).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (no torch import at module level)

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "runner_overhead.json"
VARIANTS = ("bare", "runner", "runner+bar")
SEED = 0
LR = 0.05
MOMENTUM = 0.9

# name -> settings; "quick" overrides some keys for --quick (None: skipped in --quick)
SETTINGS = {
    "small_cnn": {
        "label": "small_cnn, synthetic 3×32×32, b=128",
        "data": "synthetic", "train_kwargs": {"num_samples": 1024}, "test_kwargs": {"num_samples": 128},
        "model": "small_cnn", "model_kwargs": {"num_classes": 10, "in_channels": 3, "image_size": 32},
        "batch_size": 128, "epochs": 1, "reps": 9,
        "quick": {"reps": 3, "train_kwargs": {"num_samples": 512}},
    },
    "mlp": {
        "label": "mlp [256,256], digits 1×8×8, b=32",
        "data": "digits", "train_kwargs": {}, "test_kwargs": {},
        "model": "mlp", "model_kwargs": {"num_classes": 10, "in_channels": 1, "image_size": 8},
        "batch_size": 32, "epochs": 10, "reps": 11,
        "quick": {"epochs": 4, "reps": 4},
    },
    "mlp_b256": {
        "label": "mlp [256,256], digits 1×8×8, b=256",
        "data": "digits", "train_kwargs": {}, "test_kwargs": {},
        "model": "mlp", "model_kwargs": {"num_classes": 10, "in_channels": 1, "image_size": 8},
        "batch_size": 256, "epochs": 30, "reps": 9,
        "quick": {"epochs": 10, "reps": 3},
    },
    "resnet18": {
        "label": "resnet18_cifar, synthetic 3×32×32 (128), b=64",
        "data": "synthetic", "train_kwargs": {"num_samples": 128}, "test_kwargs": {"num_samples": 64},
        "model": "resnet18_cifar", "model_kwargs": {"num_classes": 10, "in_channels": 3, "image_size": 32},
        "batch_size": 64, "epochs": 1, "reps": 3,
        "quick": None,
    },
}


# ----------------------------------------------------------------------------------------------------------
# the two ways of training
# ----------------------------------------------------------------------------------------------------------
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed M_MMAP_THRESHOLD on 64-bit


def pin_malloc() -> bool:
    """glibc: serve allocations up to 32 MiB from the heap and never trim it (``mallopt``), so that freed
    activations are reused instead of being unmapped and page-faulted back in at every step. Returns success."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD)) == 1
        return bool(ok and libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1)) == 1)
    except (OSError, AttributeError):
        return False


def minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def normalised(ds):
    """The whole training set as the DeviceLoader serves it: ``to_float`` then ``(x - mean) / std``."""
    import torch
    from tractable.data import to_float

    view = (1, -1) + (1,) * (ds.x.dim() - 2)
    mean = torch.tensor(ds.info.mean, dtype=torch.float32).view(view)
    std = torch.tensor(ds.info.std, dtype=torch.float32).view(view)
    return (to_float(ds.x) - mean) / std, ds.y


def bare_run(s, X, Y):
    """The bare loop; returns (images/s over the training steps, CPU-time images/s, images, steps, model)."""
    import torch
    import torch.nn.functional as F
    from tractable.data.seeding import make_generator
    from tractable.models import create_model

    torch.manual_seed(SEED)
    model = create_model(s["model"], **s["model_kwargs"])
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    model.train()
    n, b = len(X), s["batch_size"]
    seen = steps = 0
    cpu = 0.0
    t0 = time.perf_counter()
    for epoch in range(s["epochs"]):
        perm = torch.randperm(n, generator=make_generator(SEED, "perm", epoch))
        for i in range(0, n, b):
            idx = perm[i:i + b]
            x, y = X[idx], Y[idx]
            if i == 0:
                c0 = time.process_time()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            seen += y.shape[0]
            steps += 1
        cpu += time.process_time() - c0
    dt = time.perf_counter() - t0
    return seen / dt, seen / cpu, seen, steps, model


def cpu_clock():
    """A ``Hook`` summing process CPU time per epoch, from the first step's start to the last step's end.

    The secondary, contention-robust measure: on a shared VM the wall clock also counts time during which other
    processes held the CPU, the CPU clock does not. It adds five near-empty hook calls per step (well under 1 µs).
    """
    from tractable.train.hooks import Hook

    class CpuClock(Hook):
        def __init__(self):
            self.cpu, self.c0, self.images = 0.0, 0.0, 0

        def before_step(self, trainer):
            if trainer.batch_index == 0:
                self.c0 = time.process_time()

        def after_step(self, trainer):
            if trainer.batch_index == trainer.steps_per_epoch - 1:
                self.cpu += time.process_time() - self.c0
                self.images = trainer.images_seen

    return CpuClock()


def runner_cfg(s, out_dir: str, name: str, progress: bool):
    from tractable.train import config_from_dict

    return config_from_dict({
        "data": {"name": s["data"], "batch_size": s["batch_size"], "eval_batch_size": 512},
        "model": {"name": s["model"]},
        "optim": {"name": "sgd", "lr": LR, "momentum": MOMENTUM},
        "train": {"epochs": s["epochs"], "seed": SEED, "device": "cpu", "eval_every": 0, "save_every": 0,
                  "progress": progress, "plots": False},
        "out_dir": out_dir, "name": name,
    })


def runner_run(s, train_data, test_data, out_dir: str, name: str, progress: bool):
    """One ``tractable.train.train`` call; returns (summary images/s, CPU-time images/s, summary, wall s of the
    call, model)."""
    from tractable.train import train

    cfg = runner_cfg(s, out_dir, name, progress)
    clock = cpu_clock()
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        t0 = time.perf_counter()
        result = train(cfg, train_data=train_data, test_data=test_data, hooks=[clock])
        wall = time.perf_counter() - t0
    shutil.rmtree(result.run_dir, ignore_errors=True)
    return result.summary["images_per_s"], clock.images / clock.cpu, result.summary, wall, result.model


def max_weight_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return float("inf")
    return max(((x.double() - y.double()).abs().max().item() if x.numel() else 0.0) for x, y in
               zip(sa.values(), sb.values()))


# ----------------------------------------------------------------------------------------------------------
# one setting
# ----------------------------------------------------------------------------------------------------------
def run_setting(key: str, s: dict, out_dir: str) -> dict:
    from tractable.data import load_dataset

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    train_data = load_dataset(s["data"], split="train", **s["train_kwargs"])
    test_data = load_dataset(s["data"], split="test", **s["test_kwargs"])
    X, Y = normalised(train_data)
    img_s = {v: [] for v in VARIANTS}
    cpu_img_s = {v: [] for v in VARIANTS}
    wall = {v: [] for v in VARIANTS}
    fixed = {v: [] for v in VARIANTS if v != "bare"}
    faults = {v: [] for v in VARIANTS}
    diffs = []
    meta = {}
    counter = [0]

    def one(variant: str, record: bool):
        counter[0] += 1
        f0 = minor_faults()
        if variant == "bare":
            t0 = time.perf_counter()
            ips, cpu_ips, seen, steps, model = bare_run(s, X, Y)
            w = time.perf_counter() - t0
            meta["bare"] = {"images": seen, "steps": steps}
            extra = None
        else:
            ips, cpu_ips, summary, w, model = runner_run(s, train_data, test_data, out_dir, f"{key}-{counter[0]}",
                                                         progress=variant == "runner+bar")
            meta["runner"] = {"steps": summary["steps"], "images": round(summary["train_time_s"]
                                                                          * summary["images_per_s"])}
            extra = w - summary["train_time_s"]
        if record:
            faults[variant].append(minor_faults() - f0)
            img_s[variant].append(ips)
            cpu_img_s[variant].append(cpu_ips)
            wall[variant].append(w)
            if extra is not None:
                fixed[variant].append(extra)
        return model

    # warm-up round (untimed), then interleaved repetitions in a rotating order
    for v in VARIANTS:
        one(v, record=False)
    for r in range(s["reps"]):
        k = r % len(VARIANTS)
        models = {}
        for v in VARIANTS[k:] + VARIANTS[:k]:
            models[v] = one(v, record=True)
        diffs.append(max(max_weight_diff(models["bare"], models[v]) for v in VARIANTS if v != "bare"))
        del models

    if meta["runner"]["steps"] != meta["bare"]["steps"]:
        raise RuntimeError(f"{key}: the runner took {meta['runner']['steps']} steps, the bare loop "
                           f"{meta['bare']['steps']}")
    others = [v for v in VARIANTS if v != "bare"]
    med = {v: statistics.median(x) for v, x in img_s.items()}
    cpu_med = {v: statistics.median(x) for v, x in cpu_img_s.items()}
    per_step = meta["bare"]["images"] / meta["bare"]["steps"]
    return {
        "label": s["label"],
        "data": s["data"], "model": s["model"], "batch_size": s["batch_size"], "epochs": s["epochs"],
        "train_samples": len(train_data), "test_samples": len(test_data),
        "steps_per_run": meta["bare"]["steps"], "images_per_run": meta["bare"]["images"],
        "runner_steps_per_run": meta["runner"]["steps"],
        "reps": s["reps"],
        "images_per_s": img_s,
        "median_images_per_s": med,
        "ratio_of_medians": {v: med[v] / med["bare"] for v in others},
        "ratio_of_best": {v: max(img_s[v]) / max(img_s["bare"]) for v in others},
        "median_paired_ratio": {v: statistics.median(a / b for a, b in zip(img_s[v], img_s["bare"])) for v in others},
        "cpu_images_per_s": cpu_img_s,
        "median_cpu_images_per_s": cpu_med,
        "cpu_ratio_of_medians": {v: cpu_med[v] / cpu_med["bare"] for v in others},
        "median_step_ms": {v: 1e3 * per_step / med[v] for v in VARIANTS},
        "median_cpu_step_ms": {v: 1e3 * per_step / cpu_med[v] for v in VARIANTS},
        "runner_fixed_cost_s": {v: statistics.median(x) for v, x in fixed.items()},
        "wall_per_call_s": {v: statistics.median(x) for v, x in wall.items()},
        "minor_page_faults_per_call": {v: statistics.median(x) for v, x in faults.items()},
        "max_abs_weight_diff": max(diffs),
        "loadavg_1min": [load_start, os.getloadavg()[0]],
        "setting_wall_s": time.perf_counter() - t_start,
    }


# ----------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------
def table(res: dict) -> str:
    lines = [
        "| setting | steps/run | reps | bare img/s | runner img/s | ratio | runner+bar img/s | ratio "
        "| ratio of best runs (runner / runner+bar) | max abs Δw |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for e in res["settings"].values():
        m, r, b = e["median_images_per_s"], e["ratio_of_medians"], e["ratio_of_best"]
        lines.append(
            f"| {e['label']} | {e['steps_per_run']} | {e['reps']} | {m['bare']:.0f} | {m['runner']:.0f} "
            f"| **{r['runner']:.3f}×** | {m['runner+bar']:.0f} | {r['runner+bar']:.3f}× "
            f"| {b['runner']:.3f}× / {b['runner+bar']:.3f}× | {e['max_abs_weight_diff']:.1e} |")
    return "\n".join(lines)


def step_table(res: dict) -> str:
    lines = [
        "| setting | bare ms/step | runner − bare ms/step | runner+bar − bare ms/step "
        "| CPU-time ratio runner / runner+bar | runner − bare ms/step (CPU time) | runner fixed cost s/run |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for e in res["settings"].values():
        ms, cms, c = e["median_step_ms"], e["median_cpu_step_ms"], e["cpu_ratio_of_medians"]
        lines.append(f"| {e['label']} | {ms['bare']:.3f} | {ms['runner'] - ms['bare']:+.3f} "
                     f"| {ms['runner+bar'] - ms['bare']:+.3f} | {c['runner']:.3f}× / {c['runner+bar']:.3f}× "
                     f"| {cms['runner'] - cms['bare']:+.3f} | {e['runner_fixed_cost_s']['runner']:.2f} |")
    return "\n".join(lines)


def header(res: dict) -> str:
    m = res["machine"]
    env = ", ".join(f"{k}={v}" for k, v in res["env"].items() if v is not None)
    return (f"{m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['mem_total_gib']} GiB; Python {m['python']}; "
            f"torch {res['torch']}; threads {res['threads']} (torch.get_num_threads()={res['torch_num_threads']}; "
            f"{env}); malloc {res['malloc']}" + (" [--quick]" if res["quick"] else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1; >1 adds "
                    "OMP_WAIT_POLICY=PASSIVE)")
    ap.add_argument("--quick", action="store_true", help="smoke run (< 40 s): fewer epochs and repetitions, "
                    "no resnet18")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help=f"write all numbers here (default {DEFAULT_JSON})")
    ap.add_argument("--settings", default=None, help=f"comma list of {', '.join(SETTINGS)} (default: all)")
    ap.add_argument("--reps", type=int, default=None, help="override the repetitions of every setting")
    ap.add_argument("--malloc", choices=("pinned", "default"), default="pinned",
                    help="pinned (default): glibc mallopt M_MMAP_THRESHOLD=32 MiB, no heap trimming -- removes\n"
                         "the per-step page-fault noise; default: leave glibc's dynamic thresholds alone")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be >= 1")

    # thread environment before torch is imported
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    if args.threads > 1:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    malloc_pinned = pin_malloc() if args.malloc == "pinned" else False
    if args.malloc == "pinned" and not malloc_pinned:
        print("warning: could not pin glibc malloc thresholds (not glibc?); running with the defaults",
              file=sys.stderr)
    if "torch" in sys.modules:  # pragma: no cover - only when main() is called from a process that has torch
        print("warning: torch was imported before the thread environment was set", file=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)

    names = list(SETTINGS) if args.settings is None else [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        ap.error(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")

    res = {
        "benchmark": "runner_overhead",
        "command": " ".join(["python", "benchmarks/runner_overhead.py"] + list(sys.argv[1:] if argv is None else argv)),
        "machine": _timing.machine_info(),
        "torch": torch.__version__,
        "threads": args.threads,
        "torch_num_threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")},
        "quick": args.quick,
        "malloc": "pinned (M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=2^31-1)" if malloc_pinned else "glibc default",
        "seed": SEED, "lr": LR, "momentum": MOMENTUM,
        "settings": {},
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="runner_overhead-") as out_dir:
        for name in names:
            s = dict(SETTINGS[name])
            if args.quick:
                if s["quick"] is None:
                    continue
                s.update(s["quick"])
            if args.reps is not None:
                s["reps"] = args.reps
            e = run_setting(name, s, out_dir)
            res["settings"][name] = e
            m, r = e["median_images_per_s"], e["ratio_of_medians"]
            c = e["cpu_ratio_of_medians"]
            print(f"[{args.threads} thr] {name:9s} reps={e['reps']}  bare {m['bare']:.0f}  runner {m['runner']:.0f} "
                  f"({r['runner']:.3f}×, CPU {c['runner']:.3f}×)  runner+bar {m['runner+bar']:.0f} "
                  f"({r['runner+bar']:.3f}×, CPU {c['runner+bar']:.3f}×) img/s  max|Δw|={e['max_abs_weight_diff']:.1e}"
                  f"  load {e['loadavg_1min'][0]:.1f}→{e['loadavg_1min'][1]:.1f}  ({e['setting_wall_s']:.1f} s)",
                  flush=True)
    res["wall_s"] = time.perf_counter() - t0

    print()
    print(header(res))
    print()
    print(table(res))
    print()
    print(step_table(res))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {path} (total {res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
