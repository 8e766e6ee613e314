#!/usr/bin/env python
"""Cost of a subspace training step against a standard step of the same model, side by side in one run (CPU).

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/subspace_step.py            # ~2 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/subspace_step.py --quick    # smoke run

Per setting, five variants train the same architecture on the same fixed batch, interleaved round-robin in one
process (``_timing.interleaved``: each repetition runs every variant once, in a rotating order):

* ``standard`` -- ``zero_grad``; ``F.cross_entropy(model(x), y).backward()``; ``SGD.step()`` (momentum 0.9);
* ``line`` / ``curve`` / ``simplex3`` -- the model converted with ``tractable.subspace.convert`` (K = 2, 3, 3);
  per step ``sub.sample(generator)``, the forward at the sampled point, ``+ sub.regularizer(1.0, generator=g)``,
  backward into all K stored points and ``SGD.step()`` over all of them (the optimizer state grows K-fold);
* ``line_nobeta`` -- the line without the regulariser (what the interpolation alone costs).

Target (issue 10): a subspace step costs <= 1.15x a standard step. Memory: the stored points are the only
extra *persistent* tensors (parameters and optimizer state K-fold); per step the interpolated weights (one
model's worth) live until the backward has used them. Measured with ``torch.autograd.graph.saved_tensors_hooks``:
the bytes autograd keeps for the backward (unique storages, parameters excluded) for each variant.

Writes ``benchmarks/results/subspace_step.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

SETTINGS = {
    # name: (model kwargs, input shape, batch)
    "small_cnn_b64": ("small_cnn", {"num_classes": 10, "in_channels": 3, "image_size": 32}, (3, 32, 32), 64),
    "mlp_b128": ("mlp", {"num_classes": 10, "in_channels": 1, "image_size": 28}, (1, 28, 28), 128),
    "mlp_b1024": ("mlp", {"num_classes": 10, "in_channels": 1, "image_size": 28}, (1, 28, 28), 1024),
}
VARIANTS = {"standard": None, "line": ("line", None, 1.0), "line_nobeta": ("line", None, 0.0),
            "curve": ("curve", None, 1.0), "simplex3": ("simplex", 3, 1.0)}


def build(name, kwargs, shape, batch, variant):
    import torch
    import torch.nn.functional as F

    import tractable.subspace as ts
    from tractable.models import create_model

    def fn():
        return create_model(name, **kwargs)

    torch.manual_seed(0)
    model = fn()
    sub = None
    spec = VARIANTS[variant]
    if spec is not None:
        kind, k, beta = spec
        sub = ts.convert(model, fn, kind=kind, k=k)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    state = {"step": 0}

    def step():
        opt.zero_grad(set_to_none=True)
        if sub is not None:
            gen = torch.Generator().manual_seed(state["step"])
            sub.sample(gen)
            loss = F.cross_entropy(model(x), y)
            if spec[2] > 0:
                loss = loss + sub.regularizer(spec[2], generator=gen)
        else:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        state["step"] += 1

    def saved_bytes():
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                seen[ptr] = t.untyped_storage().nbytes()
            return t

        opt.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if sub is not None:
                sub.sample(torch.Generator().manual_seed(0))
                loss = F.cross_entropy(model(x), y) + (sub.regularizer(spec[2], generator=torch.Generator()
                                                                       .manual_seed(0)) if spec[2] else 0)
            else:
                loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return sum(seen.values())

    n_params = sum(p.numel() for p in model.parameters())
    return step, saved_bytes, n_params


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="subspace step vs standard step (CPU, interleaved)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS))
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed rounds per setting")
    p.add_argument("--block", type=int, default=10,
                   help="consecutive steps per timed sample (steady state, as in training); 1 = single cold steps")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "subspace_step.json"))
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    info = _timing.machine_info()
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # pragma: no cover
        isa = "unknown"
    print(f"CPU: {info['cpu_model']} ({isa}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    results = {"machine": {**info, "isa": isa, "torch": torch.__version__, "threads": torch.get_num_threads()},
               "settings": {}}
    rows = []
    for s in a.settings:
        name, kw, shape, batch = SETTINGS[s]
        built = {v: build(name, kw, shape, batch, v) for v in VARIANTS}
        fns = {v: b[0] for v, b in built.items()}
        cpu: dict = {}
        times = _timing.interleaved(fns, reps=3 if a.quick else 10, warmup=1 if a.quick else 3,
                                    budget_s=None if a.quick else a.budget, max_reps=200, cpu_times=cpu,
                                    block=a.block)
        base = statistics.median(times["standard"])
        base_cpu = statistics.median(cpu["standard"])
        entry = {}
        for v in VARIANTS:
            med = statistics.median(times[v])
            ratios = [t / b for t, b in zip(times[v], times["standard"])]
            entry[v] = {**_timing.summarize(times[v]), "ratio_of_medians": med / base,
                        "median_of_ratios": statistics.median(ratios),
                        "cpu_ratio": statistics.median(cpu[v]) / base_cpu,
                        "params": built[v][2], "saved_bytes": built[v][1]()}
            rows.append(f"| {s} | {v} | {1e3 * med:.2f} | {med / base:.3f} | {statistics.median(ratios):.3f} | "
                        f"{statistics.median(cpu[v]) / base_cpu:.3f} | {built[v][2] / built['standard'][2]:.0f}× | "
                        f"{entry[v]['saved_bytes'] / 1e6:.2f} |")
        results["settings"][s] = {"model": name, "batch": batch, "shape": list(shape), "variants": entry}
        print(f"{s}: " + ", ".join(f"{v} {entry[v]['ratio_of_medians']:.3f}×" for v in VARIANTS), flush=True)
    table = "\n".join(["| setting | variant | median step (ms) | ratio of medians | median of ratios | CPU-time ratio "
                       "| parameters | saved for backward (MB) |", "|---|---|---|---|---|---|---|---|", *rows])
    print()
    print(table)
    results["table"] = table
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
