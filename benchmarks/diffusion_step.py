#!/usr/bin/env python
"""Diffusion training step with TrAct on the first layer vs the plain step, for every diffusion model kind.

Run from the repository root (one thread, as every CPU benchmark here)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion_step.py            # all models (~5-10 min)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion_step.py --quick    # tiny models only
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion_step.py --layer-only   # the first layer alone
    python benchmarks/diffusion_step.py --device cuda                          # on a GPU (B-scale at batch 32)

One step = ``GaussianDiffusion(1000, cosine, x0).loss`` (Min-SNR-5, fixed t and noise) → backward → AdamW step →
``zero_grad``, on the same model weights for both variants: ``plain`` (the registry model) and ``tract``
(a deep copy with ``tractable.TrAct(first_layer, l=0.1)``). The variants are timed interleaved in one process
(``_timing.interleaved``: each repetition runs both once, in rotating order, after warm-up), so machine load hits
both alike; we report the median seconds per step and the ratio tract/plain. The issue's target is ≤ 1.05× for
the B-scale models, whose first layer is a small part of the step.

CPU-feasible shapes (1 thread): the tiny models on 1×8×8 images at batch 64; the B-scale models at batch 2 on
4×16×16 latents (DiT-B/2: 64 tokens; UNet-B), and MDiT-B on 4×8×8 (64 tokens of 1×1 patches). Results:
``benchmarks/results/diffusion_step.json`` and a Markdown table on stdout (docs/performance.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved, machine_info  # noqa: E402

CASES = [
    # name, model, image (C, S), batch, reps
    ("dit_tiny_2", "dit_tiny_2", (1, 8), 64, 30),
    ("mdit_tiny", "mdit_tiny", (1, 8), 64, 30),
    ("unet_tiny", "unet_tiny", (1, 8), 64, 30),
    ("dit_b_2", "dit_b_2", (4, 16), 2, 6),
    ("mdit_b", "mdit_b", (4, 8), 2, 6),
    ("unet_b", "unet_b", (4, 16), 2, 6),
]


def main() -> int:
    p = argparse.ArgumentParser(description="TrAct vs plain diffusion training step")
    p.add_argument("--quick", action="store_true", help="tiny models only")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-scale", type=int, default=None, help="multiply every batch (default 1 on CPU, 16 on CUDA)")
    p.add_argument("--out", default=None)
    p.add_argument("--layer-only", action="store_true",
                   help="time only the first layer's forward + backward (plain vs TrAct) on each model's real input "
                        "shape: the overhead TrAct adds to a step, without the noise of the whole step")
    a = p.parse_args()
    import torch

    import tractable
    from tractable.diffusion import GaussianDiffusion
    from tractable.models import create_model, first_layer

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("diffusion_step: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    scale = a.batch_scale or (16 if device.type == "cuda" else 1)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    info = machine_info()
    isa = torch.backends.cpu.get_cpu_capability()
    print(f"# {info['cpu_model']} · ISA {isa} · torch {torch.__version__} · {torch.get_num_threads()} thread(s) · "
          f"device {device} · load {os.getloadavg()[0]:.1f}", flush=True)
    diffusion = GaussianDiffusion(1000, "cosine", "x0")
    rows = []
    for name, model_name, (c, s), batch, reps in CASES:
        if a.quick and "tiny" not in name:
            continue
        batch *= scale
        torch.manual_seed(0)
        plain = create_model(model_name, image_size=s, in_channels=c).to(device)
        tract = copy.deepcopy(plain)
        path, layer = first_layer(tract)
        tractable.TrAct(layer, l=0.1)
        g = torch.Generator().manual_seed(1)
        x0 = torch.randn(batch, c, s, s, generator=g).to(device)
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        noise = torch.randn(batch, c, s, s, generator=g).to(device)
        if a.layer_only:
            rows.append(_layer_only(name, plain, tract, path, x0, reps * 20, sync))
            continue
        opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in (("plain", plain), ("tract", tract))}
        models = {"plain": plain, "tract": tract}

        def step(k):
            def fn():
                diffusion.loss(models[k], x0, t, noise).backward()
                opts[k].step()
                opts[k].zero_grad(set_to_none=True)
            return fn

        times = interleaved({"plain": step("plain"), "tract": step("tract")}, reps=reps, warmup=2, sync=sync)
        med = {k: statistics.median(v) for k, v in times.items()}
        params = sum(q.numel() for q in plain.parameters() if q.requires_grad)
        w = layer.weight
        row = {"model": name, "params": params, "input": [batch, c, s, s], "first_layer": path,
               "first_layer_shape": list(w.shape), "plain_median_s": med["plain"], "tract_median_s": med["tract"],
               "ratio": med["tract"] / med["plain"], "reps": len(times["plain"]),
               "plain_min_s": min(times["plain"]), "tract_min_s": min(times["tract"])}
        rows.append(row)
        print(f"{name}: plain {1e3 * med['plain']:.1f} ms, TrAct {1e3 * med['tract']:.1f} ms, "
              f"ratio {row['ratio']:.3f}", flush=True)
        del plain, tract, opts, models
    if a.layer_only:
        lines = [f"CPU: {info['cpu_model']} ({isa}), torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
                 "first layer alone (forward + backward), median of interleaved steps.", "",
                 "| model | input | first layer | plain ms | TrAct ms | extra ms |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['model']} | {tuple(r['input'])} | `{r['first_layer']}` {tuple(r['first_layer_shape'])} "
                         f"| {1e3 * r['plain_median_s']:.3f} | {1e3 * r['tract_median_s']:.3f} | "
                         f"{1e3 * (r['tract_median_s'] - r['plain_median_s']):.3f} |")
        table = "\n".join(lines)
        print("\n" + table)
        out = Path(a.out) if a.out else Path(__file__).resolve().parent / "results" / "diffusion_step_layer.json"
        out.write_text(json.dumps({"machine": {**info, "isa": isa, "torch": torch.__version__},
                                   "rows": rows, "table": table}, indent=2) + "\n")
        print(f"written: {out}")
        return 0
    lines = [f"CPU: {info['cpu_model']} ({isa}), torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
             f"device {device}; median of interleaved steps (loss + backward + AdamW).", "",
             "| model | params | input (B, C, H, W) | first layer | plain ms/step | TrAct ms/step | TrAct / plain |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f} M | {tuple(r['input'])} | `{r['first_layer']}` "
                     f"{tuple(r['first_layer_shape'])} | {1e3 * r['plain_median_s']:.1f} | "
                     f"{1e3 * r['tract_median_s']:.1f} | {r['ratio']:.3f}× |")
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(a.out) if a.out else Path(__file__).resolve().parent / "results" / (
        "diffusion_step.json" if device.type == "cpu" else "diffusion_step_cuda.json")
    if not a.quick or a.out:
        out.write_text(json.dumps({"machine": {**info, "isa": isa, "torch": torch.__version__,
                                               "threads": torch.get_num_threads()},
                                   "loadavg_end": os.getloadavg(), "rows": rows, "table": table}, indent=2) + "\n")
        print(f"written: {out}")
    return 0


def _layer_only(name, plain, tract, path, x0, reps, sync):
    """Forward + backward of the first layer alone on the model's input (x does not require grad, as in the model)."""
    import torch

    layers = {"plain": plain.get_submodule(path), "tract": tract.get_submodule(path)}
    w = torch.randn_like(layers["plain"](x0))

    def step(k):
        def fn():
            (layers[k](x0) * w).sum().backward()
            layers[k].zero_grad(set_to_none=True)
        return fn

    times = interleaved({"plain": step("plain"), "tract": step("tract")}, reps=reps, warmup=5, sync=sync)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{name} first layer: plain {1e3 * med['plain']:.3f} ms, TrAct {1e3 * med['tract']:.3f} ms", flush=True)
    return {"model": name, "input": list(x0.shape), "first_layer": path,
            "first_layer_shape": list(layers["plain"].weight.shape), "plain_median_s": med["plain"],
            "tract_median_s": med["tract"], "reps": len(times["plain"])}


if __name__ == "__main__":
    raise SystemExit(main())
