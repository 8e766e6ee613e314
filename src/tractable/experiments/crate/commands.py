"""CRATE measurements and pictures as commands: ``tractable crate-measure`` and ``tractable crate-attention``.

``crate-measure RUN_OR_CKPT --data NAME`` loads a CRATE (a run directory of the runner, or a checkpoint file
with ``--model``: an official ``.pth`` — ``{'state_dict': …}`` with ``module.`` prefixes — or our
``model.safetensors``), runs ``--num`` images of a dataset through it and writes, per layer, R^c (mean ± std over
images), R, ΔR = R − R^c and the (non-)zero fraction of the ISTA output to ``measure.json``, ``measure.md`` and
``measure.png`` (the two layer-wise curves of the paper's Fig. 3/4). See :mod:`tractable.whitebox`.

``crate-attention RUN_OR_CKPT IMAGES…`` draws, for each image, the cls-token attention of every head at a
layer (default the last) on the patch grid, upsampled to the image, the head average, its 60 %-mass
threshold and (``--pca``) the PCA of the patch features with a foreground mask, into ``attention.png``
(+ ``attention.json``). IMAGES are files (PNG/JPEG; resized to the model's input with LANCZOS and normalised
with ``--mean/--std``, default ImageNet's) or dataset items ``NAME:SPLIT:I,J,…`` (``fashion_mnist:test:0,1,2``).

The model's shape (classes, channels, image size) is read off the checkpoint's tensors; its kind (preset,
heads, patch size) comes from the run's ``config.yaml`` or ``--model NAME`` plus ``--model-kwargs``.

Both write into a sub-folder of ``--out`` (default ``RUN/crate-measure`` / ``RUN/crate-attention``) named after
the options that change the result (:func:`tractable.train.outputs.option_slug`), so a re-run with another option
adds a folder; an ``--out`` holding another command's results is refused (:mod:`tractable.train.outputs`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from tractable.models import create_model, model_defaults
from tractable.models.crate import CRATE, load_crate_checkpoint, read_state_dict
from tractable.train.report import new_figure, save_figure

__all__ = ["load_crate_model", "dataset_images", "run_measure", "run_attention", "plot_layer_curves",
           "attention_figure", "mae_reconstruction_figure"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------ loading
def _resolve_source(source) -> Tuple[Path, Optional[dict]]:
    """(checkpoint file, run config dict or None) for a run directory, a checkpoint directory or a file."""
    path = Path(source)
    if path.is_dir():
        from tractable.train import latest_checkpoint

        cfg_file = path / "config.yaml"
        if cfg_file.is_file():
            import yaml

            try:
                cfg = yaml.safe_load(cfg_file.read_text())
            except yaml.YAMLError:
                raise ValueError(f"{cfg_file}: not a readable YAML file") from None
            if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
                raise ValueError(f"{cfg_file}: not the config.yaml of a training run (no model section)")
            ckpt = latest_checkpoint(path / "checkpoints")
            if ckpt is None:
                raise FileNotFoundError(f"{path} is a run directory without checkpoints (checkpoints/latest)")
            return ckpt / "model.safetensors", cfg
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors", None
        raise FileNotFoundError(f"{path}: neither a run directory (config.yaml) nor a checkpoint directory "
                                f"(model.safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"no run directory or checkpoint file at {path}")
    return path, None


def load_crate_model(source, model: Optional[str] = None, model_kwargs: Optional[dict] = None):
    """``(model in eval mode, meta)`` from a run directory or checkpoint file (see the module docstring)."""
    ckpt, cfg = _resolve_source(source)
    kwargs: dict = {}
    if cfg is not None:
        name = model or cfg["model"]["name"]
        kwargs.update(cfg["model"].get("kwargs") or {})
    elif model is None:
        raise ValueError(f"{source} is a checkpoint file: say which model it holds with --model (e.g. "
                         f"--model crate_small for the official CRATE-S/16 ImageNet-1K weights)")
    else:
        name = model
    kwargs.update(model_kwargs or {})
    for k in ("pretrained", "replace_head"):  # the run's initial weights: the checkpoint replaces them anyway
        kwargs.pop(k, None)
    defaults = model_defaults(name)
    sd = read_state_dict(ckpt)
    if "to_patch_embedding.2.weight" not in sd or "mlp_head.1.weight" not in sd:
        raise ValueError(f"{ckpt} does not hold a CRATE classifier (no to_patch_embedding.2 / mlp_head.1 keys; "
                         f"first keys: {', '.join(list(sd)[:5])})")
    P = int(kwargs.get("patch_size", defaults.get("patch_size") or 16))
    fan_in = int(sd["to_patch_embedding.2.weight"].shape[1])
    if fan_in % (P * P) or fan_in < P * P:
        raise ValueError(f"{ckpt}: its patch embedding takes {fan_in} values per patch, which no number of channels "
                         f"gives with model {name!r}'s patch size {P}; the checkpoint holds another CRATE — give "
                         "its --model (or --model-kwargs '{\"patch_size\": ...}')")
    shape = {"num_classes": int(sd["mlp_head.1.weight"].shape[0]), "in_channels": fan_in // (P * P)}
    n = int(sd["pos_embedding"].shape[1]) - 1
    side = math.isqrt(n)
    if "image_size" not in kwargs and side * side == n:
        shape["image_size"] = side * P
    for k, v in shape.items():
        kwargs.setdefault(k, v)
    net = create_model(name, **kwargs)
    if not isinstance(net, CRATE):
        raise ValueError(f"model {name!r} is a {type(net).__name__}, not a CRATE classifier")
    own = net.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in sd.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{ckpt} does not fit model {name!r} ({'; '.join(wrong[:2])}); the checkpoint holds another "
                         "CRATE — give its --model")
    load_crate_checkpoint(net, sd)
    data = (cfg or {}).get("data") or {}
    meta = {"source": str(source), "checkpoint": str(ckpt), "model": name, "model_kwargs": kwargs,
            "data": data.get("name"), "data_root": data.get("root"), "data_kwargs": data.get("kwargs") or {},
            "mean": data.get("mean"), "std": data.get("std")}
    return net.eval(), meta


def dataset_images(name: str, split: str = "test", indices: Optional[Sequence[int]] = None, num: int = 256,
                   root=None, mean=None, std=None, **kwargs):
    """``(images float32 normalised (B, C, H, W), labels, info)`` from the dataset registry (``kwargs`` go to
    :func:`tractable.data.load_dataset`)."""
    from tractable.data import load_dataset
    from tractable.data.convert import to_float

    ds = load_dataset(name, split, root=root, **kwargs)
    if indices is None:
        indices = range(min(int(num), len(ds.y)))
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    if len(idx) == 0:
        raise ValueError(f"dataset {name}: no images selected")
    if int(idx.max()) >= len(ds.y) or int(idx.min()) < 0:
        raise ValueError(f"dataset {name} ({split}) has {len(ds.y)} images; index out of range: {idx.tolist()}")
    x = to_float(ds.x[idx].cpu())
    m = torch.tensor(mean or ds.info.mean).view(1, -1, 1, 1)
    s = torch.tensor(std or ds.info.std).view(1, -1, 1, 1)
    return (x - m) / s, ds.y[idx].cpu(), ds.info


def _load_file_image(path: Path, size: Tuple[int, int], channels: int, mean, std) -> torch.Tensor:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow comes with matplotlib
        raise ImportError("reading image files needs Pillow: pip install pillow") from e
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    from PIL import UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not an image file Pillow can read (expected PNG, JPEG, …; {type(e).__name__})") \
            from None
    img = img.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.LANCZOS)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float().div(255)
    x = x.view(size[0], size[1], channels).permute(2, 0, 1)
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    if m.numel() != channels:
        raise ValueError(f"--mean/--std have {m.numel()} entries but the model takes {channels} channels")
    return (x - m) / s


def _images(specs: Sequence[str], net: CRATE, meta: dict, image_size, mean, std, root) -> Tuple[torch.Tensor, List[str]]:
    size = tuple(image_size) if image_size else net.image_size
    out, labels = [], []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) in (2, 3) and not Path(spec).exists():
            name = parts[0]
            split = parts[1] if len(parts) == 3 else "test"
            try:
                idx = [int(i) for i in parts[-1].split(",") if i]
            except ValueError:
                raise ValueError(f"image {spec!r}: dataset items are NAME:SPLIT:I,J,… with integer indices") from None
            same = name == meta.get("data")
            x, y, _ = dataset_images(name, split, idx, root=root or meta.get("data_root"),
                                     mean=mean or (meta.get("mean") if same else None),
                                     std=std or (meta.get("std") if same else None),
                                     **(meta.get("data_kwargs", {}) if same else {}))
            if tuple(x.shape[-2:]) != size:
                x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False)
            out.append(x)
            labels += [f"{name}[{i}] y={int(t)}" for i, t in zip(idx, y)]
        else:
            m = mean or (IMAGENET_MEAN if net.in_channels == 3 else (0.5,) * net.in_channels)
            s = std or (IMAGENET_STD if net.in_channels == 3 else (0.5,) * net.in_channels)
            out.append(_load_file_image(Path(spec), size, net.in_channels, m, s).unsqueeze(0))
            labels.append(Path(spec).name)
    return torch.cat(out), labels


# ------------------------------------------------------------------------------------------------ measure
def plot_layer_curves(series: Dict[str, List[dict]], path: Path, title: str = "") -> Path:
    """Two panels: R^c per layer (mean ± std) and the non-zero fraction of the ISTA output per layer."""
    fig, axes = new_figure((9, 3.4), 1, 2)
    for label, stats in series.items():
        layers = [s["layer"] for s in stats]
        axes[0].errorbar(layers, [s["rc_mean"] for s in stats], yerr=[s["rc_std"] for s in stats], marker="o",
                         ms=3, capsize=2, label=label)
        axes[1].errorbar(layers, [s["nonzero_mean"] for s in stats], yerr=[s["zero_std"] for s in stats],
                         marker="o", ms=3, capsize=2, label=label)
    axes[0].set(xlabel=r"layer $\ell$", ylabel=r"$R^c$ (compression term)", title=r"compression $R^c$ per layer")
    axes[1].set(xlabel=r"layer $\ell$", ylabel=r"$\|Z^{\ell+1}\|_0\,/\,(n d)$",
                title="non-zero fraction of the ISTA output")
    for ax in axes:
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=120)


def measure_table(stats: List[dict]) -> str:
    lines = ["| layer | R^c (mean ± std) | R | ΔR = R − R^c | non-zero fraction (± std) |", "|---|---|---|---|---|"]
    for s in stats:
        lines.append(f"| {s['layer']} | {s['rc_mean']:.1f} ± {s['rc_std']:.1f} | {s['r_mean']:.1f} | "
                     f"{s['delta_r_mean']:.1f} | {s['nonzero_mean']:.3f} ± {s['zero_std']:.3f} |")
    return "\n".join(lines)


def run_measure(source, data: Optional[str] = None, *, model: Optional[str] = None, model_kwargs=None,
                split: str = "test", num: int = 256, batch_size: int = 64, mode: str = "official",
                eps: Optional[float] = None, out: Optional[str] = None, root=None, plot: bool = True,
                echo=print) -> dict:
    """Layer-wise R^c and sparsity of a CRATE on ``num`` images of ``data``; writes JSON/Markdown/PNG to ``out``."""
    from tractable.train.outputs import check_output_dir, claim_output_dir, option_slug
    from tractable.whitebox import measure_layers

    if batch_size < 1 or num < 1:  # every check before any work
        raise ValueError(f"crate-measure: --num and --batch-size must be >= 1, got {num}, {batch_size}")
    if eps is not None and not eps > 0:
        raise ValueError(f"crate-measure --eps: must be > 0, got {eps}")
    base = Path(out) if out else (Path(source) / "crate-measure" if Path(source).is_dir()
                                  else Path(f"crate-measure-{Path(source).stem}"))
    check_output_dir(base, "crate-measure", own=("measure.json",))
    net, meta = load_crate_model(source, model, model_kwargs)
    data = data or meta.get("data")
    if not data:
        raise ValueError("crate-measure: say which images to measure on with --data NAME (e.g. --data cifar10)")
    same = data == meta.get("data")
    x, _, _ = dataset_images(data, split, num=num, root=root or meta.get("data_root"),
                             mean=meta.get("mean") if same else None, std=meta.get("std") if same else None,
                             **(meta.get("data_kwargs", {}) if same else {}))
    if tuple(x.shape[-2:]) != net.image_size:
        x = torch.nn.functional.interpolate(x, size=net.image_size, mode="bicubic", align_corners=False)
    stats = [s.to_dict() for s in measure_layers(net, x.split(batch_size), mode=mode, eps=eps)]
    eps = eps if eps is not None else (0.01 if mode == "official" else 0.1)
    # one sub-folder per set of options that change the numbers: a re-run with another option adds one
    slug = option_slug({"": data, "split": split, "n": int(x.shape[0]), "mode": mode, "eps": eps,
                        "model": meta["model"] if model else None})
    out_dir = claim_output_dir(base, "crate-measure", own=("measure.json",)) / slug
    out_dir.mkdir(exist_ok=True)
    result = {**meta, "dataset": data, "split": split, "images": int(x.shape[0]), "mode": mode,
              "eps": eps, "layers": stats}
    (out_dir / "measure.json").write_text(json.dumps(result, indent=2, default=str))
    table = measure_table(stats)
    (out_dir / "measure.md").write_text(f"{meta['model']} on {x.shape[0]} {data} {split} images, R^c mode "
                                        f"{mode!r}\n\n{table}\n")
    echo(table)
    if plot:
        try:
            p = plot_layer_curves({meta["model"]: stats}, out_dir / "measure.png",
                                  f"{meta['model']} · {data} {split} · {x.shape[0]} images · mode {mode}")
            echo(f"plot: {p}")
        except ImportError as e:
            echo(f"(no plot: {e}; pip install 'tractable[plot]')")
    echo(f"results: {out_dir / 'measure.json'}")
    return result


# ------------------------------------------------------------------------------------------------ attention
def _show(x: torch.Tensor):
    x = x.detach().float()
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    return x.permute(1, 2, 0).squeeze(-1).numpy()


def attention_figure(images: torch.Tensor, labels: List[str], maps: torch.Tensor, patch: int, path: Path,
                     threshold: Optional[float] = 0.6, pca: Optional[torch.Tensor] = None,
                     title: str = "") -> Path:
    """PNG grid: per image the input, every head's upsampled cls map, the head average and its mass threshold,
    and (if given) the PCA RGB image and foreground mask."""
    from tractable.whitebox import foreground_mask, mass_threshold, upsample_maps

    B, K = maps.shape[:2]
    mean_map = maps.mean(1)
    cols = 1 + K + 1 + (1 if threshold else 0) + (2 if pca is not None else 0)
    fig, axes = new_figure((1.35 * cols, 1.4 * B + 0.4), B, cols, squeeze=False)
    up = upsample_maps(maps, patch)
    up_mean = upsample_maps(mean_map, patch)
    for b in range(B):
        row = axes[b]
        row[0].imshow(_show(images[b]), cmap="gray")
        row[0].set_title(labels[b], fontsize=6)
        for k in range(K):
            row[1 + k].imshow(up[b, k].numpy(), cmap="inferno")
            if b == 0:
                row[1 + k].set_title(f"head {k + 1}", fontsize=7)
        c = 1 + K
        row[c].imshow(up_mean[b].numpy(), cmap="inferno")
        if b == 0:
            row[c].set_title("mean", fontsize=7)
        c += 1
        if threshold:
            keep = upsample_maps(mass_threshold(mean_map[b], threshold).float(), patch)
            shown = _show(images[b])
            dim = 0.2 + 0.8 * keep.numpy()
            row[c].imshow(shown * (dim if shown.ndim == 2 else dim[..., None]), cmap="gray", vmin=0, vmax=1)
            if b == 0:
                row[c].set_title(f"top {threshold:.0%} mass", fontsize=7)
            c += 1
        if pca is not None:
            rgb = upsample_maps(pca[b, -3:], patch).permute(1, 2, 0).numpy()
            row[c].imshow(rgb)
            fg = upsample_maps(foreground_mask(pca[b, 0]).float(), patch)
            row[c + 1].imshow(fg.numpy(), cmap="gray")
            if b == 0:
                row[c].set_title("PCA (2-4)", fontsize=7)
                row[c + 1].set_title("PC1 > 0.5", fontsize=7)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=8)
    return save_figure(fig, path, dpi=130)


def run_attention(source, images: Sequence[str], *, model: Optional[str] = None, model_kwargs=None,
                  layer: int = -1, threshold: Optional[float] = 0.6, pca: bool = False, image_size=None,
                  mean=None, std=None, out: Optional[str] = None, root=None, echo=print) -> dict:
    """Attention maps of ``images`` (files or ``NAME:SPLIT:I,J``) under a CRATE; writes ``attention.png/.json``."""
    from tractable.whitebox import cls_attention_maps, mass_threshold, pca_maps

    from tractable.train.outputs import check_output_dir, claim_output_dir, option_slug

    if not images:
        raise ValueError("crate-attention: give at least one image (a file or NAME:SPLIT:I,J,…)")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"crate-attention --threshold: the fraction of attention mass to keep must be in (0, 1] "
                         f"(0 on the command line: off), got {threshold}")
    base = Path(out) if out else (Path(source) / "crate-attention" if Path(source).is_dir()
                                  else Path(f"crate-attention-{Path(source).stem}"))
    check_output_dir(base, "crate-attention", own=("attention.json",))
    net, meta = load_crate_model(source, model, model_kwargs)
    if image_size is not None:
        image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if image_size[0] % net.patch_size or image_size[1] % net.patch_size:
            raise ValueError(f"crate-attention: --image-size {image_size} must be a multiple of the patch size "
                             f"{net.patch_size}")
    x, labels = _images(images, net, meta, image_size, mean, std, root)
    maps = cls_attention_maps(net, x, layer)
    pcs = None
    if pca:
        with torch.no_grad():
            f = net.forward_features(x, taps=("qkv",))
        grid = (x.shape[-2] // net.patch_size, x.shape[-1] // net.patch_size)
        idx = layer + net.depth if layer < 0 else layer
        pcs = pca_maps(f["qkv"][idx][:, 1:], grid, n_components=min(4, x.shape[0] * grid[0] * grid[1], net.dim))
    # one sub-folder per set of options that change the picture (the image list as a short hash)
    slug = option_slug({"layer": layer, "thr": threshold if threshold else "off", "pca": pca,
                        "size": image_size[0] if image_size else None, "model": meta["model"] if model else None,
                        "images": list(images), "norm": [mean, std] if (mean or std) else None},
                       hashed=("images", "norm"))
    out_dir = claim_output_dir(base, "crate-attention", own=("attention.json",)) / slug
    out_dir.mkdir(exist_ok=True)
    summary = {**meta, "layer": layer, "images": labels, "grid": list(maps.shape[-2:]), "heads": int(maps.shape[1]),
               "threshold": threshold}
    if threshold:
        keep = mass_threshold(maps, threshold)
        summary["kept_patch_fraction_per_head"] = keep.float().mean((-1, -2)).tolist()
    (out_dir / "attention.json").write_text(json.dumps(summary, indent=2, default=str))
    try:
        p = attention_figure(x, labels, maps, net.patch_size, out_dir / "attention.png", threshold, pcs,
                             f"{meta['model']} · cls attention at layer {(layer % net.depth) + 1} of {net.depth}")
        echo(f"attention maps: {p}")
    except ImportError as e:
        echo(f"(no picture: {e}; pip install 'tractable[plot]')")
    summary["out_dir"] = str(out_dir)
    return summary


# ------------------------------------------------------------------------------------------------ CRATE-MAE
def mae_reconstruction_figure(model, images: torch.Tensor, path, mask_ratio: Optional[float] = None,
                              seed: int = 0) -> Path:
    """PNG rows per image: the input, the masked input, the reconstruction, and the reconstruction pasted into
    the visible patches (:meth:`tractable.models.crate_mae.CRATEMAE.reconstruct`; masks from ``seed``)."""
    model.eval()
    masked, rec, pasted = model.reconstruct(images, mask_ratio, torch.Generator().manual_seed(seed))
    B = images.shape[0]
    fig, axes = new_figure((6, 1.5 * B + 0.3), B, 4, squeeze=False)
    for b in range(B):
        for j, (img, title) in enumerate(((images[b], "input"), (masked[b], "masked"), (rec[b], "reconstruction"),
                                          (pasted[b], "rec. + visible"))):
            axes[b, j].imshow(_show(img), cmap="gray")
            axes[b, j].set_xticks([])
            axes[b, j].set_yticks([])
            if b == 0:
                axes[b, j].set_title(title, fontsize=7)
    return save_figure(fig, path, dpi=120)
