"""Registry names and root resolution; DatasetInfo/ArrayDataset contracts; downloads; the safe unpickler."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tractable.data import (
    ArrayDataset,
    ChecksumError,
    DatasetInfo,
    DownloadError,
    default_root,
    derive_seed,
    download_file,
    list_datasets,
    load_dataset,
    md5sum,
    safe_load,
    to_float,
)

NAMES = ["cifar10", "cifar100", "digits", "fashion_mnist", "imagefolder", "imagenet", "mnist", "mnist1d",
         "synthetic", "tinyimagenet"]


def test_list_and_unknown_names():
    assert list_datasets() == NAMES
    with pytest.raises(ValueError, match="available: cifar10, cifar100"):
        load_dataset("svhn")


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRACTABLE_DATA", str(tmp_path / "d"))
    assert default_root() == tmp_path / "d"
    monkeypatch.delenv("TRACTABLE_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_root() == tmp_path / ".cache" / "tractable" / "data"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / ".cache" / "tractable" / "data" / "mnist")):
        load_dataset("mnist")


def test_registry_passes_reader_options_and_rejects_unknown_ones(tmp_path):
    ds = load_dataset("synthetic", "test", num_samples=12, shape=(2, 9), num_classes=3, seed=5)
    assert len(ds) == 12 and ds.info.shape == (2, 9) and ds.info.num_classes == 3
    with pytest.raises(ValueError, match=r"accepted: \['dtype', 'noise', 'num_classes'"):
        load_dataset("synthetic", "train", colour=True)
    with pytest.raises(ValueError, match="label"):
        load_dataset("cifar100", "train", tmp_path, lable="coarse")
    m = load_dataset("mnist1d", "test", tmp_path, num_samples=100)
    assert m.x.shape == (20, 1, 40) and any((tmp_path / "mnist1d").iterdir())


def test_dataset_info_validation():
    info = DatasetInfo("x", 10, [3, 4, 4], [0.1, 0.2, 0.3], [1, 1, 1])
    assert info.shape == (3, 4, 4) and info.std == (1.0, 1.0, 1.0) and info.channels == 3
    with pytest.raises(ValueError, match="one entry per channel"):
        DatasetInfo("x", 10, (3, 4, 4), (0.1,), (1.0,))
    with pytest.raises(ValueError, match="std"):
        DatasetInfo("x", 10, (1, 4), (0.0,), (0.0,))
    with pytest.raises(ValueError, match="num_classes"):
        DatasetInfo("x", 0, (1, 4), (0.0,), (1.0,))


def test_array_dataset_contract():
    info = DatasetInfo("t", 3, (1, 2, 2), (0.5,), (0.5,))
    x = torch.arange(40, dtype=torch.uint8).view(10, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], dtype=torch.int32)
    ds = ArrayDataset(x, y, info)
    assert len(ds) == 10 and ds.y.dtype == torch.int64 and ds.info is info
    xi, yi = ds[3]
    assert torch.equal(xi, x[3]) and int(yi) == 0
    assert torch.equal(ds.subset(4).x, x[:4]) and torch.equal(ds.subset([7, 2]).y, torch.tensor([1, 2]))
    r1, r2 = ds.subset(5, seed=1), ds.subset(5, seed=1)
    assert torch.equal(r1.x, r2.x) and len(set(r1.x[:, 0, 0, 0].tolist())) == 5
    assert ds.to("cpu").device == torch.device("cpu")
    assert torch.equal(to_float(x), x.float() / 255) and to_float(x).dtype == torch.float32
    with pytest.raises(ValueError, match="labels must lie"):
        ArrayDataset(x, y + 1, info)
    with pytest.raises(ValueError, match="info.shape"):
        ArrayDataset(x.view(10, 4), y, info)
    with pytest.raises(ValueError, match="subset n"):
        ds.subset(11)
    with pytest.raises(ValueError, match="uint8 or floating"):
        to_float(x.to(torch.int32))


def test_download_file_verifies_and_explains(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(ChecksumError, match="MD5 mismatch"):
        download_file(src.as_uri(), dest, "0" * 32)
    assert not dest.exists() and not dest.with_name("file.bin.part").exists()
    assert download_file(src.as_uri(), dest, md5sum(src)) == dest and dest.read_bytes() == b"payload"
    with pytest.raises(DownloadError, match="TRACTABLE_DATA"):
        download_file((tmp_path / "absent").as_uri(), tmp_path / "x", None)


def test_safe_load_accepts_arrays_and_refuses_other_globals():
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    out = safe_load(pickle.dumps({b"data": arr, "labels": [1, 2]}, protocol=2))
    np.testing.assert_array_equal(out[b"data"], arr)
    with pytest.raises(pickle.UnpicklingError, match="pathlib"):
        safe_load(pickle.dumps(Path("x")))


def test_derive_seed_is_stable_and_separates_inputs():
    assert derive_seed(0, 1) == derive_seed(0, 1)
    assert len({derive_seed(0, 1), derive_seed(1, 0), derive_seed(0, 1, 0), derive_seed(0, "1")}) == 4
    assert 0 <= derive_seed(2**70) < 2**63
    with pytest.raises(ValueError, match="ints or strings"):
        derive_seed(1.5)
