"""tractable.data: datasets, on-device augmentation and a reproducible device-resident loader.

* :func:`load_dataset` / :func:`list_datasets` -- one entry point for CIFAR-10/100, MNIST, Fashion-MNIST,
  MNIST-1D, scikit-learn digits, a synthetic set, TinyImageNet, ImageNet and generic image folders, all read
  offline from the official formats (``download=True`` fetches the official archives, checksummed).
* :class:`ArrayDataset` + :class:`DatasetInfo` -- small datasets as two tensors in storage dtype, plus the
  per-channel statistics used for normalisation (:func:`to_float`, :func:`normalize`).
* :func:`random_crop`, :func:`random_flip` -- batched augmentation from an explicit ``torch.Generator``.
* :func:`rand_augment`, :func:`random_erasing` -- batched RandAugment (timm ``rand-m9-mstd0.5-inc1``) and
  Random Erasing, also generator-driven (:mod:`tractable.data.randaugment`).
* :class:`DeviceLoader` -- keeps the dataset on the device; seeded, resumable, rank-sliced global batches.

>>> from tractable.data import load_dataset, DeviceLoader
>>> train = load_dataset("synthetic", "train", num_samples=64, shape=(3, 8, 8))
>>> loader = DeviceLoader(train, 16, augment="crop_flip", seed=0)
>>> x, y = next(iter(loader)); tuple(x.shape), x.dtype, y.dtype
((16, 3, 8, 8), torch.float32, torch.int64)
"""
from tractable.data.array import ArrayDataset
from tractable.data.augment import (
    crop_with_offsets,
    flip_where,
    random_crop,
    random_flip,
    sample_crop_offsets,
    sample_flip_mask,
)
from tractable.data.cifar import load_cifar
from tractable.data.convert import normalize, to_float
from tractable.data.digits import load_digits
from tractable.data.download import ChecksumError, DownloadError, download_file, md5sum
from tractable.data.idx import load_fashion_mnist, load_mnist, read_idx
from tractable.data.imagefolder import (
    ImageFolderDataset,
    load_imagefolder,
    load_imagenet,
    load_tinyimagenet,
    scan_class_folders,
    scan_tinyimagenet,
)
from tractable.data.info import DatasetInfo
from tractable.data.loader import DeviceLoader
from tractable.data.mnist1d import load_mnist1d
from tractable.data.randaugment import (
    ErasingParams,
    RandAugmentParams,
    apply_erasing,
    apply_rand_augment,
    rand_augment,
    random_erasing,
    sample_erasing_params,
    sample_rand_augment_params,
)
from tractable.data.paths import DatasetNotFoundError, default_root
from tractable.data.registry import list_datasets, load_dataset
from tractable.data.safe_pickle import safe_load
from tractable.data.seeding import derive_seed
from tractable.data.synthetic import make_synthetic

__all__ = [
    "ArrayDataset",
    "ChecksumError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DeviceLoader",
    "DownloadError",
    "ErasingParams",
    "ImageFolderDataset",
    "RandAugmentParams",
    "apply_erasing",
    "apply_rand_augment",
    "crop_with_offsets",
    "default_root",
    "derive_seed",
    "download_file",
    "flip_where",
    "list_datasets",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_imagefolder",
    "load_imagenet",
    "load_mnist",
    "load_mnist1d",
    "load_tinyimagenet",
    "make_synthetic",
    "md5sum",
    "normalize",
    "rand_augment",
    "random_crop",
    "random_erasing",
    "random_flip",
    "read_idx",
    "safe_load",
    "sample_crop_offsets",
    "sample_erasing_params",
    "sample_flip_mask",
    "sample_rand_augment_params",
    "scan_class_folders",
    "scan_tinyimagenet",
    "to_float",
]
