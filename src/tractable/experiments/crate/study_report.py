"""The report of the CRATE study (:mod:`tractable.experiments.crate.fashion`): tables, paired intervals, curves over
training, attention maps and the Jaccard segmentation check, from the finished runs under ``out``.

Writes ``out/report.md``, ``out/results.json``, ``out/over_training/`` (crate-measure --over-training of seed 0,
and the per-seed numbers) and ``out/attention/`` (crate-attention --pca of seed 0).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from tractable.stats import paired_t_interval

__all__ = ["report", "paired", "vit_cls_attention", "jaccard_scores"]



def paired(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Mean of a − b over pairs with its 95 % t-interval (n − 1 degrees of freedom)."""
    r = paired_t_interval(a, b, table=True)
    if r["n"] < 2:
        return {"n": r["n"], "mean": r["mean"], "lo": float("nan"), "hi": float("nan")}
    return {k: r[k] for k in ("n", "mean", "lo", "hi", "sd")}


def _ms(v: Sequence[float]):
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0)


def _fmt_ci(p: Dict[str, float], scale: float = 100.0, unit: str = " pp") -> str:
    if math.isnan(p["lo"]):
        return f"{scale * p['mean']:+.2f}{unit} (1 pair)"
    excl = "" if p["lo"] <= 0 <= p["hi"] else " *"
    return f"{scale * p['mean']:+.2f}{unit} [{scale * p['lo']:+.2f}, {scale * p['hi']:+.2f}]{excl}"


@torch.no_grad()
def vit_cls_attention(model, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """(B, K, h, w) cls-row attention softmax(q_cls kᵀ·scale) of a ``vit_cifar`` at ``layer`` (only that row)."""
    from tractable.models.vit import patchify

    x = model.emb(patchify(images, model.patch_size))
    x = torch.cat([model.cls_token.expand(images.shape[0], -1, -1), x], dim=1) + model.pos_emb
    idx = layer % len(model.blocks)
    for block in model.blocks[:idx]:
        x = block(x)
    blk = model.blocks[idx]
    att = blk.attn
    h = blk.norm1(x)
    B, n, D = h.shape
    q = att.q(h[:, :1]).reshape(B, 1, att.heads, att.head_dim).transpose(1, 2)
    k = att.k(h).reshape(B, n, att.heads, att.head_dim).transpose(1, 2)
    row = torch.softmax(q @ k.transpose(-1, -2) * att.scale, dim=-1)[:, :, 0, 1:]
    g = images.shape[-1] // model.patch_size
    return row.reshape(B, att.heads, g, g)


def jaccard_scores(maps: torch.Tensor, fg: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """(B, K + 1) Jaccard of each head's (and, last, the head mean's) ``mass`` threshold, upsampled to the image,
    against the boolean foreground ``fg`` (B, H, W)."""
    from tractable.whitebox import jaccard, mass_threshold

    allmaps = torch.cat([maps, maps.mean(1, keepdim=True)], 1)
    keep = mass_threshold(allmaps, mass).float()
    up = torch.nn.functional.interpolate(keep, size=tuple(fg.shape[-2:]), mode="nearest").bool()
    return jaccard(up, fg.unsqueeze(1).expand_as(up))


def _load_any(run: Path):
    from tractable.experiments.crate.probe import load_probe_model

    return load_probe_model(run)[0]


def _images(split: str, num: int):
    """(normalised images, raw [0, 1] images, labels) of the first ``num`` images of Fashion-MNIST's split."""
    from tractable.experiments.crate.commands import iter_dataset_images

    idx = list(range(num))
    (x, y), = list(iter_dataset_images("fashion_mnist", split, indices=idx, batch_size=num))
    (raw, _), = list(iter_dataset_images("fashion_mnist", split, indices=idx, batch_size=num, raw=True))
    return x, raw, y


def report(out, echo=print) -> str:
    from tractable.experiments.crate.commands import run_attention, run_measure_over_training
    from tractable.experiments.crate.probe import fit_logistic
    from tractable.whitebox import cls_attention_maps, jaccard, mass_threshold, measure_layers

    t0 = time.time()
    out = Path(out)
    meta = json.loads((out / "models.json").read_text())
    s, models = meta["setting"], meta["models"]
    res: Dict[str, object] = {"setting": s, "models": models}
    runs: Dict[str, Dict[int, dict]] = {}
    for run in sorted(out.glob("*-s*")):
        f = run / "summary.json"
        if f.is_file():
            kind, seed = run.name.rsplit("-s", 1)
            runs.setdefault(kind, {})[int(seed)] = json.loads(f.read_text())
    acc = {k: {sd: v["final_test_acc"] for sd, v in r.items()} for k, r in runs.items()}
    seeds = sorted(acc.get("crate", {}))
    lines: List[str] = []

    # ---- floor: logistic regression on the same pixels
    from tractable.data.convert import to_float
    from tractable.experiments.crate.commands import open_dataset

    tr, te = open_dataset("fashion_mnist", "train", None, {})[0], open_dataset("fashion_mnist", "test", None, {})[0]
    ntr, nte = s["subset"] or len(tr.y), s["test_subset"] or len(te.y)
    floor = fit_logistic(to_float(tr.x[:ntr]), tr.y[:ntr], to_float(te.x[:nte]), te.y[:nte])
    res["logistic_floor"] = floor

    # ---- accuracy and paired differences
    lines += ["| model | parameters | forward MMACs / image | seeds | test accuracy per seed (%) | mean ± sd (%) | "
              "train time / run (s) |", "|---|---|---|---|---|---|---|"]
    labels = {"crate": "CRATE", "vit_params": "ViT, matched parameters", "vit_flops": "ViT, matched FLOPs"}
    for kind in ("crate", "vit_params", "vit_flops"):
        if kind not in acc:
            continue
        v = [acc[kind][sd] for sd in sorted(acc[kind])]
        m, sd_ = _ms(v)
        mdl = models[kind]
        width = mdl["kwargs"].get("hidden", mdl["kwargs"].get("dim"))
        tt = _ms([runs[kind][x]["train_time_s"] for x in runs[kind]])[0]
        lines.append(f"| {labels[kind]} (d {width}) | {mdl['parameters']:,} | {mdl['flops'] / 2e6:.1f} | {len(v)} | "
                     f"{' · '.join(f'{100 * a:.2f}' for a in v)} | {100 * m:.2f} ± {100 * sd_:.2f} | {tt:.0f} |")
    lines.append(f"| logistic regression on pixels (floor) | {floor['dim'] * 10 + 10:,} | – | – | "
                 f"{100 * floor['test_acc']:.2f} | – | – |")
    diffs = {}
    lines += ["", "| paired difference (same seed) | mean [95 % t-interval] |", "|---|---|"]
    for kind in ("vit_params", "vit_flops"):
        common = [x for x in seeds if x in acc.get(kind, {})]
        if common:
            p = paired([acc["crate"][x] for x in common], [acc[kind][x] for x in common])
            diffs[f"crate - {kind}"] = p
            lines.append(f"| CRATE − {labels[kind]} | {_fmt_ci(p)} ({p['n']} seeds) |")
    if seeds:
        p = paired([acc["crate"][x] for x in seeds], [floor["test_acc"]] * len(seeds))
        diffs["crate - logistic"] = p
        lines.append(f"| CRATE − logistic regression | {_fmt_ci(p)} ({p['n']} seeds; the floor has no seed) |")
    res["accuracy"] = acc
    res["paired"] = diffs
    table_acc = "\n".join(lines)
    echo(table_acc)

    # ---- λ sweep (with the final layer's sparsity on test images)
    x_te, raw_te, _ = _images("test", s["jaccard_images"])
    x_tr, raw_tr, _ = _images("train", s["jaccard_images"])
    lam_lines = ["| ISTA λ | seeds | test accuracy (%) | difference to λ = 0.1 [95 % t] | non-zero fraction, last layer |"
                 " R^c, last layer |", "|---|---|---|---|---|---|"]
    lam_res = {}
    lam_runs = {0.1: ("crate", acc.get("crate", {}))}
    for kind in acc:
        if kind.startswith("crate-lam"):
            lam_runs[float(kind[len("crate-lam"):])] = (kind, acc[kind])
    for lam in sorted(lam_runs):
        kind, a = lam_runs[lam]
        if not a:
            continue
        nz, rc = [], []
        for sd in sorted(a):
            net = _load_any(out / f"{kind}-s{sd}")
            st = measure_layers(net, x_te[:s["measure_images"]].split(128))
            nz.append(st[-1].nonzero_mean)
            rc.append(st[-1].rc_mean)
        common = [x for x in sorted(a) if x in acc.get("crate", {})]
        p = paired([a[x] for x in common], [acc["crate"][x] for x in common]) if lam != 0.1 else None
        m, sd_ = _ms([a[x] for x in sorted(a)])
        lam_res[lam] = {"acc": a, "paired_vs_0.1": p, "nonzero_last": nz, "rc_last": rc}
        lam_lines.append(f"| {lam:g} | {len(a)} | {100 * m:.2f} ± {100 * sd_:.2f} | "
                         f"{_fmt_ci(p) if p else '–'} | {_ms(nz)[0]:.3f} ± {_ms(nz)[1]:.3f} | "
                         f"{_ms(rc)[0]:.1f} ± {_ms(rc)[1]:.1f} |")
    res["lambda"] = {str(k): v for k, v in lam_res.items()}
    table_lam = "\n".join(lam_lines)
    echo(table_lam)

    # ---- over training (CRATE, λ = 0.1): every checkpoint, train and test images
    ot = {}
    for sd in seeds:
        r = run_measure_over_training(out / f"crate-s{sd}", "fashion_mnist", num=s["measure_images"],
                                      out=str(out / "over_training" / f"s{sd}"), plot=sd == seeds[0],
                                      echo=lambda *a: None)
        ot[sd] = r["checkpoints"]
    res["over_training"] = {str(k): v for k, v in ot.items()}
    ot_lines = []
    if ot:
        L = len(ot[seeds[0]][0]["splits"]["test"])
        ot_lines = ["| checkpoint (step) | " + " | ".join(f"R^c ℓ={i + 1}" for i in range(L)) + " | " +
                    " | ".join(f"non-zero ℓ={i + 1}" for i in range(L)) + " |", "|---|" + "---|" * (2 * L)]
        for j, row in enumerate(ot[seeds[0]]):
            cells = []
            for key, fmt in (("rc_mean", "{:.1f}"), ("nonzero_mean", "{:.3f}")):
                for i in range(L):
                    v = [ot[sd][j]["splits"]["test"][i][key] for sd in seeds if j < len(ot[sd])]
                    cells.append(fmt.format(sum(v) / len(v)))
            ot_lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
        # change from the first to the last checkpoint, per layer, paired over seeds
        ot_lines += ["", "| layer | Δ R^c first → last checkpoint [95 % t] | Δ non-zero fraction [95 % t] |",
                     "|---|---|---|"]
        for i in range(L):
            first = [ot[sd][0]["splits"]["test"][i] for sd in seeds]
            last = [ot[sd][-1]["splits"]["test"][i] for sd in seeds]
            prc = paired([b["rc_mean"] for b in last], [a["rc_mean"] for a in first])
            pnz = paired([b["nonzero_mean"] for b in last], [a["nonzero_mean"] for a in first])
            ot_lines.append(f"| {i + 1} | {_fmt_ci(prc, 1.0, '')} | {_fmt_ci(pnz, 1.0, '')} |")
    table_ot = "\n".join(ot_lines)
    echo(table_ot)

    # ---- segmentation: Jaccard of thresholded cls attention vs the non-zero pixels
    fg_te, fg_tr = raw_te[:, 0] > 0, raw_tr[:, 0] > 0
    prior = fg_tr.float().mean(0)  # how often each pixel is foreground in the training images
    prior_patch = torch.nn.functional.avg_pool2d(prior[None, None], s["patch"])[0, 0]
    prior_mask = torch.nn.functional.interpolate(mass_threshold(prior_patch[None], 0.6).float()[None], size=(28, 28),
                                                 mode="nearest")[0].bool().expand_as(fg_te)
    j_floor = float(jaccard(prior_mask, fg_te).mean())
    jac: Dict[str, List[Dict[str, float]]] = {}
    shown: Dict[str, torch.Tensor] = {}
    for kind in ("crate", "vit_params", "vit_flops"):
        for sd in sorted(acc.get(kind, {})):
            net = _load_any(out / f"{kind}-s{sd}")
            if kind == "crate":
                m_te, m_tr = cls_attention_maps(net, x_te), cls_attention_maps(net, x_tr)
            else:
                m_te, m_tr = vit_cls_attention(net, x_te), vit_cls_attention(net, x_tr)
            j_te, j_tr = jaccard_scores(m_te, fg_te), jaccard_scores(m_tr, fg_tr)
            if sd == min(acc[kind]):
                shown[kind] = m_te[:6].mean(1)
            K = m_te.shape[1]
            best = int(j_tr[:, :K].mean(0).argmax())
            jac.setdefault(kind, []).append({"mean_map": float(j_te[:, K].mean()), "heads_mean": float(j_te[:, :K].mean()),
                                             "best_head": float(j_te[:, best].mean()), "best_head_index": best})
    res["jaccard"] = {"floor_prior_mask": j_floor, **jac}
    jl = ["| model | head-mean map | mean over heads | best head (chosen on train images) |", "|---|---|---|---|"]
    for kind in jac:
        cells = []
        for key in ("mean_map", "heads_mean", "best_head"):
            m, sd_ = _ms([r[key] for r in jac[kind]])
            cells.append(f"{m:.3f} ± {sd_:.3f}")
        jl.append(f"| {labels[kind]} ({len(jac[kind])} seeds) | " + " | ".join(cells) + " |")
    jl.append(f"| fixed prior mask (training foreground frequency, same 60 % rule) | {j_floor:.3f} | – | – |")
    jl += ["", "| paired difference (same seed) | head-mean map [95 % t] | best head [95 % t] |", "|---|---|---|"]
    for kind in ("vit_params", "vit_flops"):
        if kind in jac and "crate" in jac:
            n = min(len(jac["crate"]), len(jac[kind]))
            a, b = jac["crate"][:n], jac[kind][:n]
            p1 = paired([r["mean_map"] for r in a], [r["mean_map"] for r in b])
            p2 = paired([r["best_head"] for r in a], [r["best_head"] for r in b])
            jl.append(f"| CRATE − {labels[kind]} | {_fmt_ci(p1, 1.0, '')} | {_fmt_ci(p2, 1.0, '')} |")
    table_jac = "\n".join(jl)
    echo(table_jac)
    try:
        segmentation_figure(raw_te[:6], fg_te[:6], shown, prior_mask[:6], out / "segmentation.png")
    except ImportError as e:
        echo(f"(no figure: {e})")

    # ---- attention picture of seed 0
    if seeds:
        run_attention(out / f"crate-s{seeds[0]}", ["fashion_mnist:test:0,1,2,3,4,5"], pca=True,
                      out=str(out / "attention"), echo=lambda *a: None)

    md = (f"## Accuracy (Fashion-MNIST, {ntr} training / {nte} test images, {s['epochs']} epochs)\n\n{table_acc}\n\n"
          f"## λ sweep\n\n{table_lam}\n\n## Over training (CRATE λ = 0.1, test images, mean over seeds)\n\n"
          f"{table_ot}\n\n## Segmentation (Jaccard with the non-zero pixels, {s['jaccard_images']} test images)\n\n"
          f"{table_jac}\n\n(* = the 95 % interval excludes 0.) Report written in {time.time() - t0:.0f} s.\n")
    (out / "report.md").write_text(md)
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    return md


def segmentation_figure(raw: torch.Tensor, fg: torch.Tensor, maps: Dict[str, torch.Tensor], prior: torch.Tensor,
                        path: Path) -> Path:
    """Rows = images; columns = the image, its foreground, the prior mask, then per model the head-mean cls map
    and its 60 %-mass mask (Jaccard in the title)."""
    from tractable.train.report import new_figure, save_figure
    from tractable.whitebox import jaccard, mass_threshold

    B = raw.shape[0]
    cols = 3 + 2 * len(maps)
    fig, axes = new_figure((1.3 * cols, 1.35 * B + 0.4), B, cols, squeeze=False)
    names = {"crate": "CRATE", "vit_params": "ViT (params)", "vit_flops": "ViT (FLOPs)"}
    for b in range(B):
        row = axes[b]
        row[0].imshow(raw[b, 0].numpy(), cmap="gray")
        row[1].imshow(fg[b].float().numpy(), cmap="gray")
        row[2].imshow(prior[b].float().numpy(), cmap="gray")
        row[2].set_title(f"J={float(jaccard(prior[b], fg[b])):.2f}", fontsize=6)
        for j, (kind, m) in enumerate(maps.items()):
            up = torch.nn.functional.interpolate(m[b][None, None], size=fg.shape[-2:], mode="nearest")[0, 0]
            keep = torch.nn.functional.interpolate(mass_threshold(m[b][None], 0.6).float()[None], size=fg.shape[-2:],
                                                   mode="nearest")[0, 0].bool()
            row[3 + 2 * j].imshow(up.numpy(), cmap="inferno")
            row[4 + 2 * j].imshow(keep.float().numpy(), cmap="gray")
            row[4 + 2 * j].set_title(f"J={float(jaccard(keep, fg[b])):.2f}", fontsize=6)
            if b == 0:
                row[3 + 2 * j].set_title(names.get(kind, kind), fontsize=7)
        if b == 0:
            row[0].set_title("image", fontsize=7)
            row[1].set_title("pixels > 0", fontsize=7)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("head-mean cls attention (last layer) and its 60 %-mass mask vs the object's pixels; "
                 "3rd column: fixed prior mask", fontsize=7)
    return save_figure(fig, path, dpi=130)
