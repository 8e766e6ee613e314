"""IDX reader and the MNIST / Fashion-MNIST loaders on tiny gzipped and raw files."""
import gzip

import numpy as np
import pytest
import torch

from tractable.data import ChecksumError, load_dataset, load_fashion_mnist, load_mnist, md5sum, read_idx

from ._builders import idx_bytes, mnist_arrays, write_idx, write_mnist_split


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_read_idx_roundtrip(tmp_path, gz, dtype):
    arr = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5) if dtype != "u1" else \
        np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / "a-idx3", arr, gz)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative and out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "type code"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: b[:6], "header"),
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path, mutate, message):
    path = tmp_path / "bad"
    path.write_bytes(mutate(idx_bytes(np.zeros((3, 4), np.uint8))))
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8)))[:-6])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(path)


@pytest.mark.parametrize("sub, gz", [("mnist", True), ("MNIST/raw", False)])
def test_mnist_from_either_layout(tmp_path, sub, gz):
    images, labels = mnist_arrays(0, 7)
    write_mnist_split(tmp_path / sub, "t10k", images, labels, gz)
    ds = load_mnist("test", tmp_path)
    assert ds.x.dtype == torch.uint8 and ds.x.shape == (7, 1, 28, 28) and ds.y.dtype == torch.int64
    assert torch.equal(ds.x[:, 0], torch.from_numpy(images)) and ds.y.tolist() == labels.tolist()
    assert ds.info.name == "mnist" and ds.info.mean == (0.1307,) and ds.info.std == (0.3081,)


def test_fashion_mnist_and_its_statistics(tmp_path):
    images, labels = mnist_arrays(1, 5)
    write_mnist_split(tmp_path / "FashionMNIST" / "raw", "train", images, labels, gz=True)
    ds = load_fashion_mnist("train", tmp_path, system=False)
    assert torch.equal(ds.x[:, 0], torch.from_numpy(images)) and ds.info.name == "fashion_mnist"
    assert ds.info.mean == (0.2860,) and ds.info.std == (0.3530,)
    assert torch.equal(load_dataset("Fashion-MNIST", "train", tmp_path, system=False).y, ds.y)


def test_images_and_labels_must_agree(tmp_path):
    images, labels = mnist_arrays(2, 6)
    write_mnist_split(tmp_path / "mnist", "train", images, labels[:5], gz=False)
    with pytest.raises(ValueError, match="6 images .* 5 labels"):
        load_mnist("train", tmp_path)


def test_wrong_image_size_and_label_range(tmp_path):
    images, labels = mnist_arrays(3, 4)
    write_mnist_split(tmp_path / "a" / "mnist", "train", images[:, :27], labels, gz=False)
    with pytest.raises(ValueError, match=r"\(n, 28, 28\)"):
        load_mnist("train", tmp_path / "a")
    labels[2] = 10
    write_mnist_split(tmp_path / "b" / "mnist", "train", images, labels, gz=False)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        load_mnist("train", tmp_path / "b")


def test_missing_files_and_bad_split(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_fashion_mnist("test", tmp_path, system=False)
    msg = str(err.value)
    for needle in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte", str(tmp_path / "fashion_mnist"),
                   "FashionMNIST", "download=True", "TRACTABLE_DATA"):
        assert needle in msg
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_mnist("validation", tmp_path)


def test_download_through_a_mirror_checks_each_file(tmp_path):
    images, labels = mnist_arrays(4, 3)
    mirror = tmp_path / "mirror"
    write_mnist_split(mirror, "t10k", images, labels, gz=True)
    sums = {p.name: md5sum(p) for p in mirror.iterdir()}
    root = tmp_path / "root"
    with pytest.raises(ChecksumError):  # the official checksums do not match the test files
        load_mnist("test", root, download=True, base_url=mirror.as_uri())
    ds = load_mnist("test", root, download=True, base_url=mirror.as_uri(), md5=sums)
    assert ds.y.tolist() == labels.tolist()
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(sums)
