#!/usr/bin/env python
"""Peak memory of ``tractable.whitebox.cls_attention_maps`` for CRATE-S/8 at 480² (the segmentation paper's
setting: 60×60 patches + cls = 3,601 tokens), one image, CPU, random weights.

The maps at the last of 12 layers need one layer's cls row; the previous implementation kept the full
(K, n, n) attention matrix of every layer up to the requested one: 12 × 12 × 3601² × 4 B ≈ 7.5 GB per image.
Each case runs in a fresh process and reports its peak resident set size (``ru_maxrss``) above the process
after building the model (so the model's 50 MB of weights and the interpreter are not counted).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/crate_attention_memory.py           # ~1-3 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/crate_attention_memory.py --size 224
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _child(size: int, layer: int) -> None:
    import torch

    from tractable.models import create_model
    from tractable.whitebox import cls_attention_maps

    torch.manual_seed(0)
    model = create_model("crate_small_8").eval()
    x = torch.randn(1, 3, size, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    maps = cls_attention_maps(model, x, layer)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = (size // 8) ** 2 + 1
    print(json.dumps({"size": size, "tokens": n, "layer": layer, "maps": list(maps.shape),
                      "peak_above_model_MB": round((peak - base) / 1024, 1), "seconds": round(dt, 1),
                      "one_full_layer_matrix_MB": round(12 * n * n * 4 / 2 ** 20, 1),
                      "all_layers_up_to_it_MB": round((layer % 12 + 1) * 12 * n * n * 4 / 2 ** 20, 1)}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _child(a.size, a.layer)
        return 0
    out = subprocess.run([sys.executable, __file__, "--child", "--size", str(a.size), "--layer", str(a.layer)],
                         capture_output=True, text=True, check=True)
    print(out.stdout.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
