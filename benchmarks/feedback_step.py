#!/usr/bin/env python
"""Training-step time of feedback alignment vs backprop, and vs a per-block local-loss loop, on one CPU thread.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/feedback_step.py            # ~3-4 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/feedback_step.py --quick    # smoke run (< 1 min)

JSON: ``benchmarks/results/feedback_step.json`` (``--out`` to change); ``--markdown`` prints the table for
``docs/performance.md``.

What is measured
----------------
One training step = forward, cross-entropy, backward and ``AdamW.step()`` (+ ``zero_grad``), on the registry's
protocol models at their audit sizes: ``resmlp`` (d=256, L=4, 3×32×32 inputs flattened), ``vit_mini`` (patch
4, d=128, 4 heads, 4 blocks, 32×32) and ``small_resnet_credit`` (width 64, 4 blocks; 16×16 inputs on the CPU to
keep a step under a second). Batch 128 for the ResMLP, 32 for ViT-mini (65 tokens) and the ResNet. All variants
start from copies of the same weights and see the same batch:

* ``bp``        — the plain model, one optimizer;
* ``fa_layer``  — ``tractable.feedback.convert(model, "fa")``: every Linear/Conv with a fixed random B;
* ``fa_block``  — ``convert(model, "fa", granularity="block")``: block FA with the exact identity path;
* ``dfa``       — ``convert(model, "dfa")``: the output hub;
* ``seed_fa``, ``seed_dfa`` — the per-block local-loss loop of the FA evaluation protocol's reference code,
  written here from its description: a no-grad forward for the hiddens, then the head (BP on the detached
  top hidden), then one local loss ⟨f_l, a_l/RMS⟩, one backward and one optimizer step per block, then the
  embedding; one AdamW per block, embed and head.

Timing is interleaved in one process (each repetition runs every variant once, in a rotating order, after
warm-up rounds): the ratios are measured under the same machine load. We record wall-clock and process CPU
time per step and report medians, minima and the ratios of medians to ``bp``. With one thread the CPU time is
the step's own compute; on a shared machine (load average above the core count) the wall time mostly measures
how long the process waited for a core, so the tables lead with CPU time and give the wall ratio next to it.
Targets (issue 8): DFA ≤ 1.1× BP, layer FA ≤ 1.1× BP, both faster than the per-block loop.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _timing import interleaved, machine_info, summarize  # noqa: E402

MODELS = {
    "resmlp": (dict(dim=256, depth=4, image_size=32), (3, 32, 32), 128),
    "vit_mini": (dict(dim=128, heads=4, depth=4, patch_size=4, image_size=32), (3, 32, 32), 32),
    "small_resnet_credit": (dict(width=64, depth=4, image_size=16), (3, 16, 16), 32),
}
VARIANTS = ("bp", "fa_layer", "fa_block", "dfa", "seed_fa", "seed_dfa")


def _adamw(params):
    import torch

    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def _rms(a):
    return a / (a.pow(2).flatten(1).mean(1).sqrt().view((-1,) + (1,) * (a.dim() - 1)) + 1e-6)


def _feature(a, B, layout):
    import torch

    return torch.einsum("nc...,cd->nd...", a, B) if layout == "map" else a @ B


def _broadcast(v, like):
    """A (N, d) signal laid out like a point: tokens share it, maps share it over positions."""
    if like.dim() == 3:
        return v[:, None, :].expand_as(like)
    if like.dim() == 4:
        return v[:, :, None, None].expand_as(like)
    return v


def make_seed_loop(model, kind, seed=0):
    """The reference code's per-block local-loss step (FA: top-down, no identity; DFA: e Bᵀ per block)."""
    import torch
    import torch.nn.functional as F

    from tractable.feedback import draw

    pts = model.feedback_points()
    layout, d = pts[0].layout, pts[0].dim
    C = model.head.fc.out_features
    L = len(model.blocks)
    if kind == "fa":
        Bs = [draw((d, d), seed=seed, name=f"block.{l}", init="normal", fan=d) for l in range(L)]
    else:
        Bs = [draw((d, C), seed=seed, name=f"point.{l}", init="normal", fan=C) for l in range(L)]
    block_opts = [_adamw(b.parameters()) for b in model.blocks]
    embed_opt, head_opt = _adamw(model.embed.parameters()), _adamw(model.head.parameters())

    def step(x, y):
        with torch.no_grad():
            logits, hs = model.forward_plain(x, return_hidden=True)
        hL = hs[-1].detach().requires_grad_(kind == "fa")
        head_opt.zero_grad(set_to_none=True)
        F.cross_entropy(model.head(model.readout(hL)), y).backward()
        head_opt.step()
        if kind == "fa":
            a = hL.grad
            for l in reversed(range(L)):
                f = model.blocks[l](hs[l].detach())
                block_opts[l].zero_grad(set_to_none=True)
                (f * _rms(a)).flatten(1).sum(1).mean().backward()
                block_opts[l].step()
                a = _feature(a, Bs[l], layout)
        else:
            e = logits.softmax(-1)
            e[torch.arange(x.shape[0]), y] -= 1
            for l in range(L):
                f = model.blocks[l](hs[l].detach())
                block_opts[l].zero_grad(set_to_none=True)
                (f * _broadcast(_rms(e @ Bs[l].T), f)).flatten(1).sum(1).mean().backward()
                block_opts[l].step()
            a = _broadcast(e @ Bs[0].T, hs[0])
        h0 = model.embed(x)
        embed_opt.zero_grad(set_to_none=True)
        (h0 * _rms(a)).flatten(1).sum(1).mean().backward()
        embed_opt.step()

    return step


def make_variant(model, variant):
    import torch.nn.functional as F

    import tractable.feedback as fb

    if variant.startswith("seed_"):
        return make_seed_loop(model, variant[5:])
    if variant == "fa_layer":
        fb.convert(model, "fa", seed=0)
    elif variant == "fa_block":
        fb.convert(model, "fa", seed=0, granularity="block")
    elif variant == "dfa":
        fb.convert(model, "dfa", seed=0)
    opt = _adamw(model.parameters())

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def run(quick: bool, threads: int):
    import torch

    from tractable.models import create_model

    torch.set_num_threads(threads)
    results = {}
    for name, (kw, shape, batch) in MODELS.items():
        if quick:
            batch = max(8, batch // 4)
        torch.manual_seed(0)
        base = create_model(name, num_classes=10, **kw)
        g = torch.Generator().manual_seed(1)
        x = torch.randn((batch,) + shape, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        fns = {}
        for v in VARIANTS:
            step = make_variant(copy.deepcopy(base).train(), v)
            fns[v] = (lambda step=step: step(x, y))
        t0 = time.time()
        cpu = {}
        times = interleaved(fns, reps=3 if quick else 10, warmup=1 if quick else 3,
                            budget_s=None if quick else 40.0, max_reps=60, cpu_times=cpu)
        stats = {v: {"wall": summarize(ts), "cpu": summarize(cpu[v])} for v, ts in times.items()}
        for kind in ("wall", "cpu"):
            ref = stats["bp"][kind]["median_s"]
            for v in VARIANTS:
                stats[v][kind]["ratio_to_bp"] = stats[v][kind]["median_s"] / ref
        results[name] = {"batch": batch, "input": list(shape), "kwargs": kw, "variants": stats,
                         "wall_s": time.time() - t0, "loadavg_after": os.getloadavg()[0]}
        print(f"{name} (CPU time): " + ", ".join(
            f"{v} {stats[v]['cpu']['median_s'] * 1e3:.1f} ms ({stats[v]['cpu']['ratio_to_bp']:.2f}×)"
            for v in VARIANTS), flush=True)
    return results


def markdown(data) -> str:
    loads = [data.get("loadavg_start")] + [r.get("loadavg_after") for r in data["results"].values()]
    load = ", ".join(f"{x:.1f}" for x in loads if x is not None)
    lines = [f"CPU: {data['machine']['cpu_model']} ({data['isa']}), {data['threads']} thread(s), "
             f"torch {data['torch']}; "
             f"load average during the run {load}. Median ms of process CPU time per training step (ratio of "
             "medians to BP; in brackets the ratio of wall-clock medians), interleaved in one run.", "",
             "| model | batch | BP | layer FA | block FA | DFA | per-block loop FA | per-block loop DFA |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in data["results"].items():
        s = r["variants"]
        cells = [f"{s['bp']['cpu']['median_s'] * 1e3:.1f}"] + [
            f"{s[v]['cpu']['median_s'] * 1e3:.1f} ({s[v]['cpu']['ratio_to_bp']:.2f}×) "
            f"[{s[v]['wall']['ratio_to_bp']:.2f}×]" for v in VARIANTS[1:]]
        lines.append(f"| {name} | {r['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller batches, few repetitions (smoke run)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results" / "feedback_step.json"))
    p.add_argument("--markdown", action="store_true", help="print the Markdown table at the end")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    info = machine_info()
    print(f"CPU {info['cpu_model']}, torch {torch.__version__}, {args.threads} thread(s), "
          f"ISA {torch.backends.cpu.get_cpu_capability()}", flush=True)
    load0 = os.getloadavg()[0]
    results = run(args.quick, args.threads)
    data = {"machine": info, "loadavg_start": load0, "isa": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "threads": args.threads, "quick": args.quick, "results": results,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not args.quick or args.out != str(HERE / "results" / "feedback_step.json"):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(data, indent=2))
        print(f"wrote {args.out}")
    if args.markdown:
        print(markdown(data))


if __name__ == "__main__":
    main()
