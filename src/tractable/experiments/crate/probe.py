"""Linear probes: a multinomial logistic-regression head on frozen features (``tractable linear-probe``).

The protocol of CRATE-MAE's linear probing (ICLR 2024) and of any frozen-feature evaluation: extract features
of ``train_num`` training and ``test_num`` test images once, standardise them with the training mean and std, and
fit softmax regression with an L2 penalty by full-batch L-BFGS (float64). The penalty is chosen from ``l2_grid``
on a held-out tenth of the training features (fixed split from ``seed``), then the head is refitted on all of
them. The same :func:`fit_logistic` on raw pixels is the study's "logistic regression" floor.

Features (:func:`extract_features`): for a CRATE classifier the last layer's token output Z^{L+1} pooled as the
model pools (cls by default) — the input of its ``mlp_head``; for CRATE-MAE the encoder output after ``norm``
(unmasked images), cls token or mean of the patch tokens (``pool``); for the runner's ViTs (``vit_cifar``,
``vit_small_open``) the final-LayerNorm output that feeds the head (cls / mean as the model pools).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["fit_logistic", "extract_features", "load_probe_model", "run_linear_probe"]


def _fit(X: torch.Tensor, y: torch.Tensor, classes: int, l2: float, max_iter: int) -> torch.Tensor:
    W = torch.zeros(X.shape[1] + 1, classes, dtype=torch.float64, requires_grad=True)
    Xb = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1)
    opt = torch.optim.LBFGS([W], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(Xb @ W, y) + 0.5 * l2 * (W[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach()


def _acc(W: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> float:
    Xb = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1)
    return float(((Xb @ W).argmax(1) == y).double().mean())


def fit_logistic(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1), max_iter: int = 300, seed: int = 0) -> dict:
    """Softmax regression on standardised features; returns ``{"l2", "val_acc": {l2: acc}, "train_acc",
    "test_acc", "dim", "train_n", "test_n"}`` (accuracies in [0, 1])."""
    Xtr = train_x.reshape(train_x.shape[0], -1).to(torch.float64)
    Xte = test_x.reshape(test_x.shape[0], -1).to(torch.float64)
    mu, sd = Xtr.mean(0, keepdim=True), Xtr.std(0, keepdim=True).clamp_min(1e-6)
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    ytr, yte = train_y.long(), test_y.long()
    classes = int(max(ytr.max(), yte.max())) + 1
    if not l2_grid:
        raise ValueError("fit_logistic: l2_grid must not be empty")
    perm = torch.randperm(Xtr.shape[0], generator=torch.Generator().manual_seed(seed))
    n_val = max(1, Xtr.shape[0] // 10)
    val, fit = perm[:n_val], perm[n_val:]
    scores = {}
    for l2 in l2_grid:
        W = _fit(Xtr[fit], ytr[fit], classes, float(l2), max_iter)
        scores[float(l2)] = _acc(W, Xtr[val], ytr[val])
    best = max(scores, key=lambda k: (scores[k], k))  # ties: the stronger penalty
    W = _fit(Xtr, ytr, classes, best, max_iter)
    return {"l2": best, "val_acc": scores, "train_acc": _acc(W, Xtr, ytr), "test_acc": _acc(W, Xte, yte),
            "dim": int(Xtr.shape[1]), "train_n": int(Xtr.shape[0]), "test_n": int(Xte.shape[0])}


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, pool: Optional[str] = None) -> torch.Tensor:
    """(B, D) frozen features of ``model`` (see the module docstring); ``pool`` ∈ {None (the model's), 'cls',
    'mean'}."""
    from tractable.models.crate import CRATE
    from tractable.models.crate_mae import CRATEMAE
    from tractable.models.vit import CifarViT, OpenViT, patchify

    model.eval()
    if pool not in (None, "cls", "mean"):
        raise ValueError(f"extract_features: pool must be None, 'cls' or 'mean', got {pool!r}")
    if isinstance(model, CRATE):
        z = model.transformer(model.embed(images))
        how = pool or ("cls" if model.pool == "cls" else "mean")
        return z[:, 0] if how == "cls" else z[:, 1:].mean(1)
    if isinstance(model, CRATEMAE):
        z = model.forward_features(images, taps=())["encoded"]
        return z[:, 0] if (pool or "cls") == "cls" else z[:, 1:].mean(1)
    if isinstance(model, CifarViT):
        tokens = model.emb(patchify(images, model.patch_size))
        x = torch.cat([model.cls_token.expand(images.shape[0], -1, -1), tokens], dim=1) + model.pos_emb
        for block in model.blocks:
            x = block(x)
        x = model.norm(x)
        return x[:, 0] if (pool or "cls") == "cls" else x[:, 1:].mean(1)
    if isinstance(model, OpenViT):
        x = model.patch_embed(images) + model.pos_embed
        for block in model.blocks:
            x = block(x)
        return model.norm(x.mean(1))
    raise ValueError(f"extract_features: no feature definition for {type(model).__name__}; supported: CRATE, "
                     f"CRATE-MAE, vit_cifar, vit_small_open")


def load_probe_model(source) -> Tuple[nn.Module, dict]:
    """A run directory's model (CRATE, CRATE-MAE or a ViT) with its latest weights, and the run's data section."""
    import yaml

    from tractable.models import create_model, model_defaults
    from tractable.train import latest_checkpoint, load_weights
    from tractable.train.loaders import model_shape_kwargs

    path = Path(source)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"linear-probe: {path} is not a run directory (no config.yaml)")
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    name = cfg["model"]["name"]
    if name.startswith(("crate", "mae_crate")):
        from tractable.experiments.crate.commands import load_crate_model

        return load_crate_model(path)
    ckpt = latest_checkpoint(path / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"linear-probe: {path} has no checkpoint under checkpoints/")
    data = cfg.get("data") or {}
    from tractable.experiments.crate.commands import open_dataset

    info = open_dataset(data["name"], "test", data.get("root"), data.get("kwargs") or {})[0].info
    kw = model_shape_kwargs(info, model_defaults(name))
    kw.update(cfg["model"].get("kwargs") or {})
    model = create_model(name, **kw)
    load_weights(ckpt, model, strict=True, device="cpu")
    meta = {"source": str(source), "checkpoint": str(ckpt), "model": name, "model_kwargs": kw,
            "data": data.get("name"), "data_root": data.get("root"), "data_kwargs": data.get("kwargs") or {},
            "mean": data.get("mean"), "std": data.get("std")}
    return model.eval(), meta


def run_linear_probe(source, data: Optional[str] = None, *, train_num: int = 10000, test_num: int = 10000,
                     batch_size: int = 256, pool: Optional[str] = None, l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2,
                                                                                                     1e-1),
                     root=None, out: Optional[str] = None, seed: int = 0, echo=print) -> Dict[str, object]:
    """Frozen-feature logistic-regression accuracy of a run's model; writes ``probe.json`` and ``probe.md``."""
    from tractable.experiments.crate.commands import iter_dataset_images
    from tractable.train.outputs import check_output_dir, claim_output_dir, option_slug

    if train_num < 10 or test_num < 1 or batch_size < 1:
        raise ValueError(f"linear-probe: --train-num must be >= 10 and --test-num, --batch-size >= 1; got "
                         f"{train_num}, {test_num}, {batch_size}")
    if pool not in (None, "cls", "mean"):
        raise ValueError(f"linear-probe: --pool must be cls or mean, got {pool!r}")
    base = Path(out) if out else Path(source) / "linear-probe"
    check_output_dir(base, "linear-probe", own=("probe.json",))
    model, meta = load_probe_model(source)
    data = data or meta.get("data")
    if not data:
        raise ValueError("linear-probe: say which dataset to probe on with --data NAME")
    same = data == meta.get("data")
    size = getattr(model, "image_size", None)
    size = tuple(size) if isinstance(size, (tuple, list)) else ((size, size) if size else None)
    feats = {}
    for split, num in (("train", train_num), ("test", test_num)):
        xs, ys = [], []
        for x, y in iter_dataset_images(data, split, num=num, batch_size=batch_size, size=size,
                                        root=root or meta.get("data_root"), mean=meta.get("mean") if same else None,
                                        std=meta.get("std") if same else None,
                                        **(meta.get("data_kwargs", {}) if same else {})):
            xs.append(extract_features(model, x, pool).float())
            ys.append(y)
        feats[split] = (torch.cat(xs), torch.cat(ys))
    res = fit_logistic(*feats["train"], *feats["test"], l2_grid=l2_grid, seed=seed)
    result = {**meta, "dataset": data, "pool": pool or "model", **res}
    # one sub-folder per set of options that change the numbers: a re-run with another option adds one
    slug = option_slug({"": data, "pool": pool or "model", "train": train_num, "test": test_num, "seed": seed})
    out_dir = claim_output_dir(base, "linear-probe", own=("probe.json",)) / slug
    out_dir.mkdir(exist_ok=True)
    (out_dir / "probe.json").write_text(json.dumps(result, indent=2, default=str))
    table = ("| model | data | features | train / test images | L2 | train acc. | test acc. |\n"
             "|---|---|---|---|---|---|---|\n"
             f"| {meta['model']} | {data} | {res['dim']} | {res['train_n']} / {res['test_n']} | {res['l2']:g} | "
             f"{100 * res['train_acc']:.2f} % | {100 * res['test_acc']:.2f} % |")
    (out_dir / "probe.md").write_text(f"Linear probe of {source}\n\n{table}\n")
    echo(table)
    echo(f"results: {out_dir / 'probe.json'}")
    if not math.isfinite(res["test_acc"]):
        raise FloatingPointError("linear-probe: the fit diverged")
    return result
