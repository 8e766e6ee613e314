"""Streaming image-folder datasets (ImageNet, TinyImageNet, any ``class/image`` tree), read lazily from disk.

Index building is pure Python (no torchvision): :func:`scan_class_folders` lists ``<folder>/<class>/**/<image>``
with classes sorted by name; :func:`scan_tinyimagenet` also understands the official TinyImageNet validation
layout (``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``). Images are decoded with PIL when an
item is read, and PIL and torchvision are imported only then (``pip install 'tractable[vision]'``).

Items are ``(image, label)`` where ``image`` is a **uint8** ``(C, H, W)`` tensor, like :class:`ArrayDataset`
samples, so the same on-device ``to_float`` + ``normalize(info.mean, info.std)`` applies to both. ``transform``:

* ``"default"``: ``"train"`` for the train split, ``"eval"`` otherwise;
* ``"train"``: torchvision augmentation (ImageNet: ``RandomResizedCrop(224)`` + flip; TinyImageNet:
  ``RandomCrop(64, padding=4)`` + flip). These draw from torch's random state, which a ``DataLoader`` seeds
  per worker from its ``generator=`` argument; pass one for reproducible runs;
* ``"eval"``: deterministic resizing (ImageNet: ``Resize(256)`` + ``CenterCrop(224)``; TinyImageNet: none);
* ``"diffusion"``: for generative models: the whole image resized and centre-cropped to ``image_size``
  (:mod:`tractable.data.diffusion_transforms`), with a random horizontal flip on the train split only;
  ``"diffusion_noflip"``: the same without the flip (e.g. for FID reference images). Pillow only;
* ``None``: the decoded image as is (no torchvision needed; sizes may differ between images);
* a callable: applied to the PIL image; it should return a ``(C, H, W)`` tensor.

Split ``"test"`` is an alias of ``"val"``: the labelled held-out set of ImageNet and TinyImageNet is ``val``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from tractable.data.info import DatasetInfo
from tractable.data.paths import PathLike, missing_data_error, resolve_root

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINYIMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINYIMAGENET_STD = (0.2302, 0.2265, 0.2262)

_HINT = "pip install 'tractable[vision]'"
_TRANSFORMS = ("default", "train", "eval", "diffusion", "diffusion_noflip", None)

Samples = List[Tuple[str, int]]


def _import_pil_image():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"Reading image files needs Pillow: {_HINT}") from e
    return Image


def _import_torchvision_transforms():
    try:
        from torchvision import transforms
    except ImportError as e:
        raise ImportError(
            f"The standard image transforms need torchvision: {_HINT} "
            f"(or pass transform=None for raw uint8 images, or your own callable)"
        ) from e
    return transforms


def _subdirs(folder: Path) -> List[str]:
    """Names of the sub-folders of ``folder``, sorted."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir())


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _files_under(folder: Path) -> List[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return out


def scan_class_folders(
    folder: PathLike, classes: Optional[Sequence[str]] = None, *, missing_ok: bool = False
) -> Tuple[List[str], Samples]:
    """``(classes, samples)`` for ``<folder>/<class>/**/<image>``; classes sorted, label = position in ``classes``.

    Args:
        folder: the split folder (e.g. ``imagenet/train``).
        classes: use these class folders in this order instead of all sub-folders sorted by name.
        missing_ok: with ``classes``, a class without a folder just has no samples (e.g. a partial val set).

    Raises:
        FileNotFoundError: ``folder`` or (unless ``missing_ok``) one of ``classes`` does not exist.
        ValueError: no class folders, or no images at all.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    if classes is None:
        classes = _subdirs(folder)
    classes = list(classes)
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders; expected <folder>/<class_name>/<image files>")
    samples: Samples = []
    for label, c in enumerate(classes):
        if not (folder / c).is_dir():
            if missing_ok:
                continue
            raise FileNotFoundError(f"class folder {folder / c} does not exist")
        samples.extend((p, label) for p in _files_under(folder / c))
    if not samples:
        raise ValueError(f"no image files ({', '.join(IMG_EXTENSIONS)}) under {folder}")
    return classes, samples


def _split(split: str) -> str:
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train' or 'val' ('test' is an alias of 'val'), got {split!r}")
    return "val" if split == "test" else split


def scan_tinyimagenet(folder: PathLike, split: str = "train") -> Tuple[List[str], Samples]:
    """Index the official ``tiny-imagenet-200`` folder.

    Classes are the 200 WordNet ids of ``wnids.txt`` (or of the ``train`` sub-folders when that file is
    absent), sorted. ``train``: ``train/<wnid>/images/*.JPEG``; ``val``: ``val/images/<file>`` labelled by the
    first two tab-separated columns of ``val/val_annotations.txt`` (an already re-sorted ``val/<wnid>/`` layout
    also works).
    """
    folder = Path(folder)
    split = _split(split)
    wnids_file = folder / "wnids.txt"
    if wnids_file.is_file():
        classes = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
    elif (folder / "train").is_dir():
        classes = _subdirs(folder / "train")
    else:
        raise FileNotFoundError(f"{folder} has neither wnids.txt nor train/; not a tiny-imagenet-200 folder")
    if split == "train":
        return scan_class_folders(folder / "train", classes)
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        if (folder / "val").is_dir() and not (folder / "val" / "images").is_dir():
            return scan_class_folders(folder / "val", classes)
        raise FileNotFoundError(f"TinyImageNet val labels {annotations} not found")
    index = {c: i for i, c in enumerate(classes)}
    samples: Samples = []
    missing = []
    for lineno, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2:
            raise ValueError(f"{annotations}:{lineno}: expected '<file>\\t<wnid>\\t...', got {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise ValueError(f"{annotations}:{lineno}: class {wnid!r} is not in wnids.txt")
        path = folder / "val" / "images" / name
        if not path.is_file():
            missing.append(str(path))
        samples.append((str(path), index[wnid]))
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {annotations} are missing, e.g. {missing[:3]}")
    if not samples:
        raise ValueError(f"{annotations} lists no images")
    samples.sort()
    return classes, samples


class ImageFolderDataset(torch.utils.data.Dataset):
    """``(path, label)`` pairs decoded lazily with PIL; see the module docstring for ``transform``.

    Attributes:
        samples: list of ``(path, label)``.
        classes: class names, index = label.
        targets: labels, in sample order.
        info: :class:`DatasetInfo` (``shape`` is the shape the standard transforms produce).
    """

    def __init__(self, samples: Samples, classes: Sequence[str], info: DatasetInfo,
                 transform: Optional[Callable] = None):
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {transform!r}")
        self.samples = list(samples)
        self.classes = list(classes)
        self.targets = [label for _, label in self.samples]
        self.info = info
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        Image = _import_pil_image()
        with Image.open(path) as img:
            img = img.convert("RGB" if self.info.shape[0] == 3 else "L")
            if self.transform is not None:
                out = self.transform(img)
            else:
                out = _pil_to_uint8(img)
        return out, label


def _pil_to_uint8(img) -> torch.Tensor:
    import numpy as np

    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _standard_transform(kind: str, dataset: str, size: int) -> Callable:
    T = _import_torchvision_transforms()
    if dataset == "tinyimagenet":
        steps = [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()] if kind == "train" else []
    elif kind == "train":
        steps = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size)]
    return T.Compose(steps + [T.PILToTensor()])


def _resolve_transform(transform, split: str, dataset: str, size: int) -> Optional[Callable]:
    if callable(transform):
        return transform
    if transform not in _TRANSFORMS:
        raise ValueError(f"transform must be one of {_TRANSFORMS} or a callable, got {transform!r}")
    if transform is None:
        return None
    if transform in ("diffusion", "diffusion_noflip"):
        from tractable.data.diffusion_transforms import CenterCropResize

        return CenterCropResize(size, flip=transform == "diffusion" and split == "train")
    kind = ("train" if split == "train" else "eval") if transform == "default" else transform
    return _standard_transform(kind, dataset, size)


def load_imagefolder(
    path: PathLike,
    *,
    split: str = "train",
    transform: Union[str, Callable, None] = "default",
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    name: str = "imagefolder",
) -> ImageFolderDataset:
    """Any ``<path>/<class>/<image>`` tree; ``split`` only picks the standard transform (train or eval)."""
    split = _split(split)
    classes, samples = scan_class_folders(path)
    info = DatasetInfo(name=name, num_classes=len(classes), shape=(len(mean), image_size, image_size),
                       mean=tuple(mean), std=tuple(std))
    return ImageFolderDataset(samples, classes, info, _resolve_transform(transform, split, "imagenet", image_size))


def _locate(root: Optional[PathLike], candidates: Sequence[str], title: str, expected: Sequence[str]) -> Path:
    base = resolve_root(root)
    dirs = [base / c for c in candidates]
    for d in dirs:
        if d.is_dir():
            return d
    raise missing_data_error(title, dirs, expected, can_download=False)


def load_tinyimagenet(
    split: str = "train",
    root: Optional[PathLike] = None,
    *,
    path: Optional[PathLike] = None,
    transform: Union[str, Callable, None] = "default",
) -> ImageFolderDataset:
    """TinyImageNet-200 (100 000 train / 10 000 val, 64×64, 200 classes) from ``tiny-imagenet-200/``.

    Looks for ``<root>/tiny-imagenet-200`` or ``<root>/tinyimagenet`` unless ``path`` names the folder.
    """
    split = _split(split)
    folder = Path(path) if path is not None else _locate(
        root, ("tiny-imagenet-200", "tinyimagenet"), "TinyImageNet",
        ["tiny-imagenet-200/wnids.txt", "tiny-imagenet-200/train/<wnid>/images/*.JPEG",
         "tiny-imagenet-200/val/images/*.JPEG", "tiny-imagenet-200/val/val_annotations.txt",
         "(unzip the official tiny-imagenet-200.zip into the data root)"],
    )
    classes, samples = scan_tinyimagenet(folder, split)
    info = DatasetInfo(name="tinyimagenet", num_classes=len(classes), shape=(3, 64, 64),
                       mean=TINYIMAGENET_MEAN, std=TINYIMAGENET_STD)
    return ImageFolderDataset(samples, classes, info, _resolve_transform(transform, split, "tinyimagenet", 64))


def load_imagenet(
    split: str = "train",
    root: Optional[PathLike] = None,
    *,
    path: Optional[PathLike] = None,
    transform: Union[str, Callable, None] = "default",
    image_size: int = 224,
) -> ImageFolderDataset:
    """ImageNet-1k from ``<root>/imagenet/{train,val}/<wnid>/*.JPEG`` (val sorted into class folders).

    ``path`` names the folder holding ``train/`` and ``val/`` instead of ``<root>/imagenet``.
    """
    split = _split(split)
    folder = Path(path) if path is not None else _locate(
        root, ("imagenet",), "ImageNet",
        ["imagenet/train/<wnid>/*.JPEG", "imagenet/val/<wnid>/*.JPEG (validation images sorted into class folders)"],
    )
    split_dir = folder / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"ImageNet {split} folder {split_dir} not found; expected {split_dir}/<wnid>/*.JPEG")
    if not _subdirs(split_dir) and any(_is_image(name) for name in os.listdir(split_dir)):
        raise ValueError(
            f"{split_dir} holds images directly; sort them into class folders {split_dir}/<wnid>/ first "
            f"(the official validation labels map each file to its wnid)"
        )
    train_dir = folder / "train"
    classes = _subdirs(train_dir) if train_dir.is_dir() else None
    classes, samples = scan_class_folders(split_dir, classes, missing_ok=split != "train")
    info = DatasetInfo(name="imagenet", num_classes=len(classes), shape=(3, image_size, image_size),
                       mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return ImageFolderDataset(samples, classes, info, _resolve_transform(transform, split, "imagenet", image_size))
