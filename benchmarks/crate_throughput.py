#!/usr/bin/env python
"""CRATE training-step throughput on the CPU: ``tractable.models.crate`` versus a straightforward implementation
of the same math written here (the official code's structure: three-matmul ISTA and explicit softmax attention).

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/crate_throughput.py            # CRATE-T and -S, ~3-6 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/crate_throughput.py --quick    # smoke run

Setting: CRATE-T/16 and CRATE-S/16 at their real 224² input (197 tokens), 1000 classes, batch 4, one thread, a
forward + backward + AdamW step on random images and labels (CPU-feasible: one step of CRATE-S is seconds).

Variants (same weights — the straightforward model is built from our model's ``state_dict`` — so the same
arithmetic up to rounding; the script checks the logits agree):

* ``ours`` — ``create_model("crate_tiny"|"crate_small")``: ISTA as x + η·Dᵀ(x − Dx) (2 matmuls, ``addmm``),
  attention through ``F.scaled_dot_product_attention(w, w, w)`` (fused kernel, A never materialised).
* ``straightforward`` — written below with ``torch.einsum``: patches by reshape/permute, LayerNorms, the
  three ISTA products Dx, DᵀDx, Dᵀx, and softmax(wwᵀ·d_h^−½) materialised then multiplied by w.

Timing: interleaved rounds (every round runs each variant once, in a rotating order) after a warm-up round, so
that a shared machine's load hits both alike; images/s from the median step time; the ratio ours/straightforward
(target ≥ 1.2). Memory: the activation memory of a training step — the distinct tensors autograd saves for the
backward, counted by storage through ``saved_tensors_hooks`` (parameters excluded), in MB; this is what sets
the peak of a step (the process's peak RSS cannot be reset reliably inside a container). Results: ``benchmarks/results/crate_throughput.json`` and a Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved, machine_info, summarize  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tractable.models import create_model  # noqa: E402


class Straightforward(nn.Module):
    """The same CRATE forward, written out with einsum: 3-matmul ISTA, explicit softmax attention."""

    def __init__(self, ref):
        super().__init__()
        self.P, self.heads, self.dh = ref.patch_size, ref.heads, ref.dim_head
        self.eta, self.lam = ref.eta, ref.lam
        sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
        self.params = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(v) for k, v in sd.items()})
        self.depth = ref.depth

    def p(self, key):
        return self.params[key.replace(".", "_")]

    def ln(self, x, prefix):
        return F.layer_norm(x, x.shape[-1:], self.p(prefix + ".weight"), self.p(prefix + ".bias"), 1e-5)

    def forward(self, img):
        B, C, H, W = img.shape
        P = self.P
        x = img.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 3, 5, 1).reshape(B, -1, P * P * C)
        x = self.ln(x, "to_patch_embedding.1")
        x = torch.einsum("bnp,dp->bnd", x, self.p("to_patch_embedding.2.weight")) + self.p("to_patch_embedding.2.bias")
        x = self.ln(x, "to_patch_embedding.3")
        x = torch.cat([self.p("cls_token").expand(B, -1, -1), x], 1) + self.p("pos_embedding")
        for i in range(self.depth):
            pre = f"transformer.layers.{i}"
            z = self.ln(x, pre + ".0.norm")
            w = torch.einsum("bnd,ed->bne", z, self.p(pre + ".0.fn.qkv.weight"))
            w = w.reshape(B, -1, self.heads, self.dh).transpose(1, 2)
            attn = torch.softmax(torch.einsum("bhid,bhjd->bhij", w, w) * self.dh ** -0.5, dim=-1)
            o = torch.einsum("bhij,bhjd->bhid", attn, w).transpose(1, 2).reshape(B, -1, self.heads * self.dh)
            x = torch.einsum("bne,de->bnd", o, self.p(pre + ".0.fn.to_out.0.weight")) \
                + self.p(pre + ".0.fn.to_out.0.bias") + x
            z = self.ln(x, pre + ".1.norm")
            D = self.p(pre + ".1.fn.weight")
            x1 = torch.einsum("bnd,ed->bne", z, D)          # D x
            g1 = torch.einsum("bne,ed->bnd", x1, D)         # Dᵀ D x
            g2 = torch.einsum("bne,ed->bnd", z, D)          # Dᵀ x
            x = F.relu(z + self.eta * (g2 - g1) - self.eta * self.lam)
        feat = F.layer_norm(x[:, 0], x.shape[-1:], self.p("mlp_head.0.weight"), self.p("mlp_head.0.bias"), 1e-5)
        return feat @ self.p("mlp_head.1.weight").T + self.p("mlp_head.1.bias")


def saved_activation_mb(model, x, y) -> float:
    """MB of distinct tensors autograd saves for the backward of one training forward (the activation memory
    that dominates a training step's peak), counted through ``saved_tensors_hooks`` by storage."""
    seen = {}

    def pack(t):
        if t.device.type == "cpu":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    del loss
    return sum(v for k, v in seen.items() if k not in params) / 1e6


def make_step(model, x, y):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 112² input, 2 timed rounds")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--models", nargs="+", default=["crate_tiny", "crate_small"])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "crate_throughput.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    size = 112 if args.quick else 224
    reps = 2 if args.quick else args.reps
    info = machine_info()
    info.update({"torch": torch.__version__, "threads": torch.get_num_threads(),
                 "isa": torch.backends.cpu.get_cpu_capability(), "load_before": os.getloadavg()})
    print(f"# {info['cpu_model']} · ISA {info['isa']} · torch {torch.__version__} · {info['threads']} thread(s)")
    results = {"machine": info, "image_size": size, "batch": args.batch, "rows": []}
    lines = ["| model | input | batch | ours img/s | straightforward img/s | ours / straightforward | "
             "activation memory ours (MB) | straightforward (MB) | max logit diff |", "|---|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        torch.manual_seed(0)
        ours = create_model(name, image_size=size)
        plain = Straightforward(ours)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(args.batch, 3, size, size, generator=g)
        y = torch.randint(0, 1000, (args.batch,), generator=g)
        with torch.no_grad():
            diff = (ours(x) - plain(x)).abs().max().item()
        steps = {"ours": make_step(ours, x, y), "straightforward": make_step(plain, x, y)}
        t0 = time.time()
        times = interleaved(steps, reps=reps, warmup=1)
        mem = {"ours": saved_activation_mb(ours, x, y), "straightforward": saved_activation_mb(plain, x, y)}
        s = {k: summarize(v) for k, v in times.items()}
        ips = {k: args.batch / s[k]["median_s"] for k in s}
        ratio = ips["ours"] / ips["straightforward"]
        per_rep = sorted(b / a for a, b in zip(times["ours"], times["straightforward"]))
        row = {"model": name, "images_per_s": ips, "ratio": ratio, "ratio_per_round_median": per_rep[len(per_rep) // 2],
               "times_s": times, "summary": s, "saved_activation_mb": mem, "max_logit_diff": diff,
               "wall_s": time.time() - t0}
        results["rows"].append(row)
        lines.append(f"| {name} | {size}² ({(size // 16) ** 2 + 1} tokens) | {args.batch} | {ips['ours']:.2f} | "
                     f"{ips['straightforward']:.2f} | **{ratio:.2f}×** | {mem['ours']:.0f} | "
                     f"{mem['straightforward']:.0f} | {diff:.1e} |")
        print(lines[-1], flush=True)
    results["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print()
    print("\n".join(lines))
    print(f"\nload average before {info['load_before'][0]:.1f}, after {results['load_after'][0]:.1f}; "
          f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
