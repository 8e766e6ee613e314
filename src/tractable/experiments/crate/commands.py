"""CRATE measurements and pictures as commands: ``tractable crate-measure`` and ``tractable crate-attention``.

``crate-measure RUN_OR_CKPT --data NAME`` loads a CRATE or CRATE-MAE encoder (a run directory of the runner —
subspace runs at ``--alpha`` —, or a checkpoint file with ``--model``: an official ``.pth`` — ``{'state_dict': …}``
with ``module.`` prefixes —, a released file recognised by name (:mod:`tractable.models.crate_pretrained`), or
our ``model.safetensors``), streams ``--num`` images of any registered dataset through it (ImageFolder/ImageNet
decoded one image at a time, spread evenly over the split) and writes, per layer, R^c (mean ± std over images),
R, ΔR = R − R^c (printed in the paper convention only) and the (non-)zero fraction of the ISTA output to
``measure.json``, ``measure.md`` and ``measure.png`` (the paper's Fig. 3/4). ``--over-training`` does that at
every checkpoint of a run, on training and test images. See :mod:`tractable.whitebox`.

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

import functools
import json
import math
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from tractable.models import create_model, model_defaults
from tractable.models.crate import load_crate_checkpoint, read_state_dict
from tractable.train.report import new_figure, save_figure

__all__ = ["load_crate_model", "open_dataset", "iter_dataset_images", "dataset_images", "run_measure", "run_measure_over_training",
           "run_attention", "plot_layer_curves", "plot_over_training", "attention_figure",
           "mae_reconstruction_figure"]

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


def _plain_key(key: str) -> str:
    """``a.parametrizations.weight.original`` (a subspace run's stored points) → ``a.weight``."""
    return re.sub(r"(^|\.)parametrizations\.([^.]+)\.original$", lambda m: m.group(1) + m.group(2), key)


def _shape_kwargs(sd: Dict[str, torch.Tensor], patch: int, subspace: bool) -> dict:
    """num_classes / in_channels / image_size read off the weights (CRATE or CRATE-MAE key layout)."""
    shapes = {_plain_key(k): tuple(v.shape[1:] if subspace else v.shape) for k, v in sd.items()}
    out: dict = {}
    if "to_patch_embedding.2.weight" in shapes:
        out["in_channels"] = shapes["to_patch_embedding.2.weight"][1] // (patch * patch)
        if "mlp_head.1.weight" in shapes:
            out["num_classes"] = shapes["mlp_head.1.weight"][0]
        n = shapes["pos_embedding"][1] - 1
    elif "patch_embed.proj.weight" in shapes:
        out["in_channels"] = shapes["patch_embed.proj.weight"][1]
        patch = shapes["patch_embed.proj.weight"][-1]
        n = shapes["pos_embed"][1] - 1
    else:
        raise ValueError(f"the checkpoint holds neither a CRATE (to_patch_embedding.2, mlp_head.1) nor a CRATE-MAE "
                         f"(patch_embed.proj) key layout; first keys: {', '.join(list(sd)[:5])}")
    side = math.isqrt(n)
    if side * side == n:
        out["image_size"] = side * patch
    return out


def _subspace_options(cfg: Optional[dict]) -> Optional[dict]:
    method = (cfg or {}).get("method") or {}
    names = str(method.get("name", "")).split("+")
    if "subspace" not in names:
        return None
    return method.get("subspace", method) if len(names) > 1 else method


def load_crate_model(source, model: Optional[str] = None, model_kwargs: Optional[dict] = None,
                     alpha: Optional[float] = None, checkpoint=None):
    """``(model in eval mode, meta)`` from a run directory or checkpoint file (see the module docstring).

    ``model`` is a registry name or a tag of :data:`tractable.models.crate_pretrained.PRETRAINED`; a released
    file is recognised by its name. ``alpha``: the point of a subspace run (line/curve) to export.
    ``checkpoint``: a specific checkpoint directory of the run instead of the latest.
    """
    from tractable.models.crate_pretrained import PRETRAINED, match_pretrained

    ckpt, cfg = _resolve_source(source)
    if checkpoint is not None:
        ckpt = Path(checkpoint) / "model.safetensors" if Path(checkpoint).is_dir() else Path(checkpoint)
    kwargs: dict = {}
    drop_keys: Sequence[str] = ()
    tag = model if model in PRETRAINED else None
    if tag is None and model is None and cfg is None:
        found = match_pretrained(ckpt)
        tag = found.tag if found is not None else None
    if tag is not None:
        entry = PRETRAINED[tag]
        name, drop_keys = entry.builder, entry.drop_keys
        kwargs.update(entry.kwargs)
    elif cfg is not None:
        name = model or cfg["model"]["name"]
        kwargs.update(cfg["model"].get("kwargs") or {})
    elif model is None:
        raise ValueError(f"{source} is a checkpoint file: say which model it holds with --model (a registry name "
                         f"such as crate_small, or a released layout: {', '.join(PRETRAINED)})")
    else:
        name = model
    kwargs.update(model_kwargs or {})
    for k in ("pretrained", "replace_head"):  # the run's initial weights: the checkpoint replaces them anyway
        kwargs.pop(k, None)
    defaults = model_defaults(name)
    sd = read_state_dict(ckpt)
    for prefix in drop_keys:
        for k in [k for k in sd if k.startswith(prefix)]:
            del sd[k]
    sub_opts = _subspace_options(cfg)
    P = int(kwargs.get("patch_size", defaults.get("patch_size") or 16))
    if sub_opts is None and "to_patch_embedding.2.weight" in sd:
        fan_in = int(sd["to_patch_embedding.2.weight"].shape[1])
        if fan_in % (P * P) or fan_in < P * P:
            raise ValueError(f"{ckpt}: its patch embedding takes {fan_in} values per patch, which no number of "
                             f"channels gives with model {name!r}'s patch size {P}; the checkpoint holds another "
                             "CRATE — give its --model (or --model-kwargs '{\"patch_size\": ...}')")
    for k, v in _shape_kwargs(sd, P, sub_opts is not None).items():
        if k in defaults:
            kwargs.setdefault(k, v)
    net = create_model(name, **kwargs)
    if not hasattr(net, "crate_layers"):
        raise ValueError(f"model {name!r} is a {type(net).__name__}, not a CRATE or CRATE-MAE")
    if sub_opts is not None:
        from tractable.subspace import convert

        kind = sub_opts.get("kind", "line")
        if kind == "simplex":
            raise ValueError(f"{source} is a simplex subspace run: the white-box commands take one point α of a "
                             f"line or curve run (--alpha)")
        if alpha is None:
            raise ValueError(f"{source} is a subspace run ({kind}): say which point to measure with --alpha A "
                             f"(A in [0, 1]; 0.5 is the midpoint)")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"--alpha must be in [0, 1], got {alpha}")
        sub = convert(net, lambda: create_model(name, **kwargs), kind=kind, k=sub_opts.get("k"),
                      layerwise=bool(sub_opts.get("layerwise", False)),
                      norm_endpoints=sub_opts.get("norm_endpoints", "shared"),
                      control_init=sub_opts.get("control_init", "independent"))
        net.load_state_dict(sd, strict=True)
        net = sub.export(float(alpha))
    else:
        if alpha is not None:
            raise ValueError(f"--alpha applies to subspace runs only; {source} is not one")
        own = net.state_dict()
        wrong = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in sd.items()
                 if k in own and tuple(v.shape) != tuple(own[k].shape) and "pos_embed" not in k]
        if wrong:
            raise ValueError(f"{ckpt} does not fit model {name!r} ({'; '.join(wrong[:2])}); the checkpoint holds "
                             "another CRATE — give its --model")
        load_crate_checkpoint(net, sd, interpolate_pos=tag is not None and hasattr(net, "pos_embedding"))
    data = (cfg or {}).get("data") or {}
    meta = {"source": str(source), "checkpoint": str(ckpt), "model": name, "model_kwargs": kwargs,
            "pretrained": tag, "alpha": alpha, "data": data.get("name"), "data_root": data.get("root"),
            "data_kwargs": data.get("kwargs") or {}, "mean": data.get("mean"), "std": data.get("std"),
            "subset": data.get("subset"), "test_subset": data.get("test_subset"),
            "kind": "mae" if not hasattr(net, "mlp_head") else "classifier"}
    return net.eval(), meta


# ------------------------------------------------------------------------------------------------ images
def _spread(total: int, num: int) -> List[int]:
    """``num`` indices spread evenly over ``range(total)`` (the first ``num`` of a class-sorted ImageFolder split
    would be one or two classes)."""
    num = min(int(num), total)
    if num <= 0:
        return []
    if num == total:
        return list(range(total))
    return sorted({int(round(i * (total - 1) / max(num - 1, 1))) for i in range(num)})


def _fit(x: torch.Tensor, size: Tuple[int, int], stream: bool) -> torch.Tensor:
    """Float images (B, C, h, w) at ``size``: streamed (photographs) get the standard evaluation transform (resize
    the shorter side to size·256/224, centre crop); fixed-size arrays are resized bicubically if they differ."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    F = torch.nn.functional
    if not stream:
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    h, w = x.shape[-2:]
    short = max(size) * 256 / 224
    scale = short / min(h, w)
    nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]]


def open_dataset(name: str, split: str, root, kwargs: dict):
    """(dataset, streamed?) — image-folder datasets are opened without their torchvision transform (we decode
    and resize ourselves, one image at a time), array datasets as they are. The last few are cached: measuring
    every checkpoint of a run reads the same split again and again."""
    key = (name, split, None if root is None else str(root), json.dumps(kwargs, sort_keys=True, default=str))
    return _open_cached(*key)


@functools.lru_cache(maxsize=4)
def _open_cached(name: str, split: str, root, kwargs_json: str):
    from tractable.data import load_dataset

    kw = json.loads(kwargs_json)
    try:
        ds = load_dataset(name, split, root=root, **{**kw, "transform": None})
    except ValueError as e:
        if "unknown keyword" not in str(e):
            raise
        ds = load_dataset(name, split, root=root, **kw)
    return ds, not hasattr(ds, "x")


def iter_dataset_images(name: str, split: str = "test", *, num: int = 256, indices: Optional[Sequence[int]] = None,
                        batch_size: int = 64, size: Optional[Tuple[int, int]] = None, root=None, mean=None,
                        std=None, raw: bool = False, limit: Optional[int] = None,
                        **kwargs) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(images, labels)`` of a registered dataset, normalised with its (or the given) mean/std and
    brought to ``size``; ``raw=True`` yields the un-normalised [0, 1] images instead.

    Works on every dataset of :func:`tractable.data.load_dataset`: arrays are sliced, ImageFolder / ImageNet /
    TinyImageNet items are decoded one at a time (the split is never loaded whole). Without ``indices`` the
    ``num`` images are spread evenly over the split, or over its first ``limit`` images (a run's ``data.subset``:
    the images it was trained on).
    """
    from tractable.data.convert import to_float

    ds, stream = open_dataset(name, split, root, kwargs)
    total = len(ds.y) if not stream else len(ds)
    idx = list(indices) if indices is not None else _spread(min(total, limit or total), num)
    if not idx:
        raise ValueError(f"dataset {name} ({split}): no images selected")
    if max(idx) >= total or min(idx) < 0:
        raise ValueError(f"dataset {name} ({split}) has {total} images; index out of range: {idx}")
    m = torch.tensor(mean or ds.info.mean).view(1, -1, 1, 1)
    s = torch.tensor(std or ds.info.std).view(1, -1, 1, 1)
    for start in range(0, len(idx), batch_size):
        chunk = idx[start:start + batch_size]
        if stream:
            xs, ys = [], []
            for i in chunk:
                img, label = ds[i]
                img = to_float(img.unsqueeze(0))
                xs.append(_fit(img, size, True) if size is not None else img)
                ys.append(int(label))
            sizes = {tuple(t.shape[-2:]) for t in xs}
            if len(sizes) > 1:
                raise ValueError(f"dataset {name}: images of different sizes {sorted(sizes)}; give a size")
            x, y = torch.cat(xs), torch.tensor(ys)
        else:
            t = torch.as_tensor(chunk, dtype=torch.long)
            x, y = to_float(ds.x[t].cpu()), ds.y[t].cpu()
            if size is not None:
                x = _fit(x, size, False)
        yield (x if raw else (x - m) / s), y


def dataset_images(name: str, split: str = "test", indices: Optional[Sequence[int]] = None, num: int = 256,
                   root=None, mean=None, std=None, size=None, **kwargs):
    """``(images float32 normalised (B, C, H, W), labels, None)`` — :func:`iter_dataset_images` in one batch."""
    xs, ys = [], []
    for x, y in iter_dataset_images(name, split, num=num, indices=indices, batch_size=256, size=size, root=root,
                                    mean=mean, std=std, **kwargs):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys), None


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


def _images(specs: Sequence[str], net, meta: dict, image_size, mean, std, root) -> Tuple[torch.Tensor, List[str]]:
    size = tuple(image_size) if image_size else tuple(net.image_size)
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
                                     std=std or (meta.get("std") if same else None), size=size,
                                     **(meta.get("data_kwargs", {}) if same else {}))
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


def measure_table(stats: List[dict], mode: str = "official") -> str:
    """Markdown per layer; ΔR = R − R^c only in the paper convention (see :mod:`tractable.whitebox.measure`)."""
    paper = mode == "paper"
    head = "| layer | R^c (mean ± std) | " + ("R | ΔR = R − R^c | " if paper else "") + "non-zero fraction (± std) |"
    lines = [head, "|---|---|" + ("---|---|" if paper else "") + "---|"]
    for s in stats:
        mid = f"{s['r_mean']:.1f} | {s['delta_r_mean']:+.1f} | " if paper else ""
        lines.append(f"| {s['layer']} | {s['rc_mean']:.1f} ± {s['rc_std']:.1f} | {mid}"
                     f"{s['nonzero_mean']:.3f} ± {s['zero_std']:.3f} |")
    return "\n".join(lines)


def _default_out(source, kind: str) -> Path:
    return Path(source) / kind if Path(source).is_dir() else Path(f"{kind}-{Path(source).stem}")


def _measure_images(net, meta, data, split, num, batch_size, root):
    same = data == meta.get("data")
    limit = (meta.get("subset") if split == "train" else meta.get("test_subset")) if same else None
    return iter_dataset_images(data, split, num=num, batch_size=batch_size, size=tuple(net.image_size), limit=limit,
                               root=root or meta.get("data_root"), mean=meta.get("mean") if same else None,
                               std=meta.get("std") if same else None, **(meta.get("data_kwargs", {}) if same else {}))


def _check_measure_args(num, batch_size, mode):
    if batch_size < 1 or num < 1:
        raise ValueError(f"crate-measure: --num and --batch-size must be >= 1, got {num}, {batch_size}")
    if mode not in ("official", "paper"):
        raise ValueError(f"crate-measure: --mode must be 'official' or 'paper', got {mode!r}")


def run_measure(source, data: Optional[str] = None, *, model: Optional[str] = None, model_kwargs=None,
                split: str = "test", num: int = 256, batch_size: int = 64, mode: str = "official",
                eps: Optional[float] = None, out: Optional[str] = None, root=None, plot: bool = True,
                alpha: Optional[float] = None, over_training: bool = False, echo=print) -> dict:
    """Layer-wise R^c and sparsity of a CRATE on ``num`` images of ``data``; writes JSON/Markdown/PNG to ``out``.

    Images are streamed in batches of ``batch_size`` (ImageFolder/ImageNet included). ``over_training=True``:
    every checkpoint of the run, on the training and the test split (:func:`run_measure_over_training`)."""
    from tractable.train.outputs import check_output_dir, claim_output_dir, option_slug
    from tractable.whitebox import measure_layers

    _check_measure_args(num, batch_size, mode)
    if eps is not None and not eps > 0:
        raise ValueError(f"crate-measure --eps: must be > 0, got {eps}")
    if over_training:
        return run_measure_over_training(source, data, model=model, model_kwargs=model_kwargs, num=num,
                                         batch_size=batch_size, mode=mode, eps=eps, out=out, root=root, plot=plot,
                                         alpha=alpha, echo=echo)
    base = Path(out) if out else _default_out(source, "crate-measure")
    check_output_dir(base, "crate-measure", own=("measure.json", "over_training.json"))
    net, meta = load_crate_model(source, model, model_kwargs, alpha=alpha)
    data = data or meta.get("data")
    if not data:
        raise ValueError("crate-measure: say which images to measure on with --data NAME (e.g. --data cifar10)")
    counted = []

    def batches():
        for x, _ in _measure_images(net, meta, data, split, num, batch_size, root):
            counted.append(int(x.shape[0]))
            yield x

    stats = [s.to_dict() for s in measure_layers(net, batches(), mode=mode, eps=eps)]
    n_img = sum(counted)
    eps_used = eps if eps is not None else (0.01 if mode == "official" else 0.1)
    # one sub-folder per set of options that change the numbers: a re-run with another option adds one
    slug = option_slug({"": data, "split": split, "n": n_img, "mode": mode, "eps": eps_used,
                        "model": meta["model"] if model else None, "alpha": alpha})
    out_dir = claim_output_dir(base, "crate-measure", own=("measure.json", "over_training.json")) / slug
    out_dir.mkdir(exist_ok=True)
    result = {**meta, "dataset": data, "split": split, "images": n_img, "mode": mode,
              "eps": eps_used,
              "delta_r": "R - R^c (printed in paper mode only; see tractable.whitebox.measure)", "layers": stats}
    (out_dir / "measure.json").write_text(json.dumps(result, indent=2, default=str))
    table = measure_table(stats, mode)
    (out_dir / "measure.md").write_text(f"{meta['model']} on {n_img} {data} {split} images, R^c mode "
                                        f"{mode!r}\n\n{table}\n")
    echo(table)
    if plot:
        try:
            p = plot_layer_curves({meta["model"]: stats}, out_dir / "measure.png",
                                  f"{meta['model']} · {data} {split} · {n_img} images · mode {mode}")
            echo(f"plot: {p}")
        except ImportError as e:
            echo(f"(no plot: {e}; pip install 'tractable[plot]')")
    echo(f"results: {out_dir / 'measure.json'}")
    return result


def _checkpoint_step(ckpt: Path) -> Tuple[int, int]:
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        md = f.metadata() or {}
    return int(md.get("step", -1)), int(md.get("epoch", -1))


def run_measure_over_training(source, data: Optional[str] = None, *, model: Optional[str] = None, model_kwargs=None,
                              splits: Sequence[str] = ("train", "test"), num: int = 256, batch_size: int = 64,
                              mode: str = "official", eps: Optional[float] = None, out: Optional[str] = None,
                              root=None, plot: bool = True, alpha: Optional[float] = None, echo=print) -> dict:
    """R^c and the ISTA sparsity per layer at every checkpoint of a run, on ``num`` training images (from those
    the run trained on: its first ``data.subset``) and ``num`` test images, the same at every checkpoint. Writes ``over_training.json/.md/.png`` (curves per layer, one line per
    checkpoint, coloured by step). Keep checkpoints with ``train.save_every``/``save_every_steps`` and a large
    ``train.keep_checkpoints``."""
    from tractable.train import list_checkpoints
    from tractable.train.outputs import check_output_dir, claim_output_dir, option_slug
    from tractable.whitebox import measure_layers

    _check_measure_args(num, batch_size, mode)
    base = Path(out) if out else _default_out(source, "crate-measure")
    check_output_dir(base, "crate-measure", own=("measure.json", "over_training.json"))
    _, cfg = _resolve_source(source)
    if cfg is None:
        raise ValueError(f"crate-measure --over-training: {source} is not a run directory (config.yaml + "
                         f"checkpoints/)")
    ckpts = list_checkpoints(Path(source) / "checkpoints")
    if not ckpts:
        raise FileNotFoundError(f"{source}/checkpoints holds no checkpoint")
    rows = []
    for ckpt in ckpts:
        net, meta = load_crate_model(source, model, model_kwargs, alpha=alpha, checkpoint=ckpt)
        data = data or meta.get("data")
        if not data:
            raise ValueError("crate-measure: say which images to measure on with --data NAME")
        step, epoch = _checkpoint_step(ckpt)
        row = {"checkpoint": ckpt.name, "step": step, "epoch": epoch, "splits": {}}
        for split in splits:
            stats = measure_layers(net, (x for x, _ in _measure_images(net, meta, data, split, num, batch_size,
                                                                        root)), mode=mode, eps=eps)
            row["splits"][split] = [s.to_dict() for s in stats]
        rows.append(row)
        echo(f"{ckpt.name}: " + "; ".join(f"{sp} R^c last {row['splits'][sp][-1]['rc_mean']:.1f}, non-zero last "
                                          f"{row['splits'][sp][-1]['nonzero_mean']:.3f}" for sp in splits))
    slug = option_slug({"over-training": data, "n": num, "mode": mode, "eps": eps,
                        "model": meta["model"] if model else None, "alpha": alpha})
    out_dir = claim_output_dir(base, "crate-measure", own=("measure.json", "over_training.json")) / slug
    out_dir.mkdir(exist_ok=True)
    result = {"source": str(source), "dataset": data, "splits": list(splits), "images": num, "mode": mode,
              "checkpoints": rows}
    (out_dir / "over_training.json").write_text(json.dumps(result, indent=2, default=str))
    md = over_training_tables(rows, splits)
    (out_dir / "over_training.md").write_text(md + "\n")
    echo(md)
    if plot:
        try:
            echo(f"plot: {plot_over_training(rows, splits, out_dir / 'over_training.png', Path(source).name)}")
        except ImportError as e:
            echo(f"(no plot: {e}; pip install 'tractable[plot]')")
    return result


def over_training_tables(rows: List[dict], splits: Sequence[str]) -> str:
    """Markdown: per split, R^c and the non-zero fraction per layer (columns) at each checkpoint (rows)."""
    L = len(rows[0]["splits"][splits[0]])
    out = []
    for split in splits:
        for key, label, fmt in (("rc_mean", "R^c", "{:.1f}"), ("nonzero_mean", "non-zero fraction", "{:.3f}")):
            out.append(f"{label} per layer, {split} images:\n")
            out.append("| step | epoch | " + " | ".join(f"ℓ={i + 1}" for i in range(L)) + " |")
            out.append("|---|---|" + "---|" * L)
            for r in rows:
                out.append(f"| {r['step']} | {r['epoch']} | " +
                           " | ".join(fmt.format(s[key]) for s in r["splits"][split]) + " |")
            out.append("")
    return "\n".join(out)


def plot_over_training(rows: List[dict], splits: Sequence[str], path: Path, title: str = "") -> Path:
    """The paper-style figure: per split, R^c and the non-zero fraction against the layer, one line per checkpoint
    (light = early, dark = late)."""
    import matplotlib.cm as cm

    fig, axes = new_figure((4.2 * len(splits), 6.4), 2, len(splits), squeeze=False)
    for j, split in enumerate(splits):
        for i, r in enumerate(rows):
            colour = cm.viridis(0.9 - 0.8 * i / max(len(rows) - 1, 1))
            stats = r["splits"][split]
            layers = [s["layer"] for s in stats]
            axes[0, j].plot(layers, [s["rc_mean"] for s in stats], marker="o", ms=3, color=colour,
                            label=f"step {r['step']}")
            axes[1, j].plot(layers, [s["nonzero_mean"] for s in stats], marker="o", ms=3, color=colour)
        axes[0, j].set(title=f"R^c, {split} images", xlabel=r"layer $\ell$", ylabel=r"$R^c$")
        axes[1, j].set(title=f"non-zero fraction, {split}", xlabel=r"layer $\ell$",
                       ylabel=r"$\|Z^{\ell+1}\|_0/(nd)$")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    return save_figure(fig, path, dpi=120)


# ------------------------------------------------------------------------------------------------ attention
def _show(x: torch.Tensor):
    x = x.detach().float()
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    return x.permute(1, 2, 0).squeeze(-1).numpy()


def _to_image(maps: torch.Tensor, size) -> torch.Tensor:
    """(…, h, w) maps → (…, H, W) by nearest upsampling to the image ``size`` (a ``resize_to`` model's grid is not
    the displayed image's size divided by the patch size)."""
    lead = maps.shape[:-2]
    x = torch.nn.functional.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]).float(), size=tuple(size),
                                        mode="nearest")
    return x.reshape(*lead, *x.shape[-2:])


def attention_figure(images: torch.Tensor, labels: List[str], maps: torch.Tensor, path: Path,
                     threshold: Optional[float] = 0.6, pca: Optional[dict] = None, title: str = "") -> Path:
    """PNG grid: per image the input, every head's upsampled cls map, the head average and its mass threshold,
    and (if given, from :func:`tractable.whitebox.pca_segmentation`) the foreground mask and the second PCA's
    RGB image of the foreground patches."""
    from tractable.whitebox import mass_threshold

    B, K = maps.shape[:2]
    size = images.shape[-2:]
    mean_map = maps.mean(1)
    cols = 1 + K + 1 + (1 if threshold else 0) + (2 if pca is not None else 0)
    fig, axes = new_figure((1.35 * cols, 1.4 * B + 0.4), B, cols, squeeze=False)
    up = _to_image(maps, size)
    up_mean = _to_image(mean_map, size)
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
            keep = _to_image(mass_threshold(mean_map[b], threshold).float(), size)
            shown = _show(images[b])
            dim = 0.2 + 0.8 * keep.numpy()
            row[c].imshow(shown * (dim if shown.ndim == 2 else dim[..., None]), cmap="gray", vmin=0, vmax=1)
            if b == 0:
                row[c].set_title(f"top {threshold:.0%} mass", fontsize=7)
            c += 1
        if pca is not None:
            row[c].imshow(_to_image(pca["mask"][b].float(), size).numpy(), cmap="gray")
            row[c + 1].imshow(_to_image(pca["rgb"][b], size).permute(1, 2, 0).numpy())
            if b == 0:
                row[c].set_title("PCA foreground", fontsize=7)
                row[c + 1].set_title("2nd PCA (fg)", fontsize=7)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=8)
    return save_figure(fig, path, dpi=130)


def run_attention(source, images: Sequence[str], *, model: Optional[str] = None, model_kwargs=None,
                  layer: int = -1, threshold: Optional[float] = 0.6, pca: bool = False, image_size=None,
                  mean=None, std=None, out: Optional[str] = None, root=None, alpha: Optional[float] = None,
                  echo=print) -> dict:
    """Attention maps of ``images`` (files or ``NAME:SPLIT:I,J``) under a CRATE; writes ``attention.png/.json``.

    Only the requested layer's cls row is formed (:func:`tractable.whitebox.cls_attention_maps`). ``--pca``
    runs the emergence notebooks' pipeline (:func:`tractable.whitebox.pca_segmentation`) on that layer's ``qkv``
    patch features, with the mask polarity fixed by the head-mean attention."""
    from tractable.whitebox import cls_attention_maps, mass_threshold, pca_segmentation

    from tractable.train.outputs import check_output_dir, claim_output_dir, option_slug

    if not images:
        raise ValueError("crate-attention: give at least one image (a file or NAME:SPLIT:I,J,…)")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"crate-attention --threshold: the fraction of attention mass to keep must be in (0, 1] "
                         f"(0 on the command line: off), got {threshold}")
    base = Path(out) if out else _default_out(source, "crate-attention")
    check_output_dir(base, "crate-attention", own=("attention.json",))
    net, meta = load_crate_model(source, model, model_kwargs, alpha=alpha)
    if image_size is not None:
        image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if image_size[0] % net.patch_size or image_size[1] % net.patch_size:
            raise ValueError(f"crate-attention: --image-size {image_size} must be a multiple of the patch size "
                             f"{net.patch_size}")
    if not -net.depth <= layer < net.depth:
        raise ValueError(f"crate-attention: --layer must be in [-{net.depth}, {net.depth - 1}], got {layer}")
    x, labels = _images(images, net, meta, image_size, mean, std, root)
    maps = cls_attention_maps(net, x, layer)
    idx = layer + net.depth if layer < 0 else layer
    seg = None
    if pca:
        with torch.no_grad():
            f = net.forward_features(x, taps=("qkv",), layers=idx + 1)
        seg = pca_segmentation(f["qkv"][idx][:, 1:], tuple(maps.shape[-2:]), attention=maps.mean(1))
    # one sub-folder per set of options that change the picture (the image list as a short hash)
    slug = option_slug({"layer": layer, "thr": threshold if threshold else "off", "pca": pca,
                        "size": image_size[0] if image_size else None, "model": meta["model"] if model else None,
                        "alpha": alpha, "images": list(images), "norm": [mean, std] if (mean or std) else None},
                       hashed=("images", "norm"))
    out_dir = claim_output_dir(base, "crate-attention", own=("attention.json",)) / slug
    out_dir.mkdir(exist_ok=True)
    summary = {**meta, "layer": layer, "images": labels, "grid": list(maps.shape[-2:]), "heads": int(maps.shape[1]),
               "threshold": threshold}
    if threshold:
        keep = mass_threshold(maps, threshold)
        summary["kept_patch_fraction_per_head"] = keep.float().mean((-1, -2)).tolist()
    if seg is not None:
        summary["pca_foreground_fraction"] = seg["mask"].float().mean((-1, -2)).tolist()
        summary["pca_polarity_inverted"] = seg["inverted"].tolist()
    (out_dir / "attention.json").write_text(json.dumps(summary, indent=2, default=str))
    try:
        p = attention_figure(x, labels, maps, out_dir / "attention.png", threshold, seg,
                             f"{meta['model']} · cls attention at layer {idx + 1} of {net.depth}")
        echo(f"attention maps: {p}")
    except ImportError as e:
        echo(f"(no picture: {e}; pip install 'tractable[plot]')")
    summary["out_dir"] = str(out_dir)
    return summary


# ------------------------------------------------------------------------------------------------ CRATE-MAE
def mae_reconstruction_figure(model, images: torch.Tensor, path, mask_ratio: Optional[float] = None,
                              seed: int = 0) -> Path:
    """:func:`tractable.train.mae_task.reconstruction_figure` (the runner task draws the same PNG)."""
    from tractable.train.mae_task import reconstruction_figure

    return reconstruction_figure(model, images, path, mask_ratio, seed)
