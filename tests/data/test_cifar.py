"""CIFAR-10/100 readers on tiny archives and folders in the official python and binary formats."""
import pickle
import tarfile

import numpy as np
import pytest
import torch

from tractable.data import ChecksumError, DownloadError, load_cifar, load_dataset, md5sum

from ._builders import (
    PIXELS,
    cifar10_arrays,
    cifar100_arrays,
    py2_style_pickle,
    tar_gz,
    tar_gz_members,
    write_cifar10_binary,
    write_cifar10_python,
    write_cifar100_binary,
    write_cifar100_python,
)

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def expected(arrays, names):
    x = np.concatenate([arrays[n][0] for n in names]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.asarray(arrays[n][1]) for n in names])
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.fixture
def cifar10(tmp_path):
    """A data root holding only cifar-10-python.tar.gz, plus the arrays it was built from."""
    arrays = cifar10_arrays()
    src = tmp_path / "src"
    folder = write_cifar10_python(src, arrays)
    root = tmp_path / "root"
    root.mkdir()
    archive = tar_gz(folder, root / "cifar-10-python.tar.gz")
    return root, arrays, md5sum(archive)


def test_python_archive_reads_images_channel_first_and_labels(cifar10):
    root, arrays, md5 = cifar10
    ds = load_cifar("cifar10", "train", root, md5=md5)
    x, y = expected(arrays, TRAIN)
    assert ds.x.dtype == torch.uint8 and ds.y.dtype == torch.int64
    assert ds.x.shape == (15, 3, 32, 32) and torch.equal(ds.x, x) and torch.equal(ds.y, y)
    # row layout of the official files: 1024 red, then 1024 green, then 1024 blue values, row-major
    first = arrays["data_batch_1"][0][0]
    assert torch.equal(ds.x[0, 1], torch.from_numpy(first[1024:2048].reshape(32, 32)))
    test = load_cifar("cifar10", "test", root, md5=md5)
    assert torch.equal(test.x, expected(arrays, ["test_batch"])[0])
    assert ds.info.name == "cifar10" and ds.info.num_classes == 10 and ds.info.shape == (3, 32, 32)
    assert ds.info.mean == (0.4914, 0.4822, 0.4465) and ds.info.std == (0.2023, 0.1994, 0.2010)


def test_archive_is_checked_against_the_official_md5_by_default(cifar10):
    root, _, _ = cifar10
    with pytest.raises(ChecksumError, match="c58f30108f718f92721af3b95e74349a"):
        load_cifar("cifar10", "train", root)


def test_corrupted_archive_is_rejected(cifar10):
    root, _, md5 = cifar10
    archive = root / "cifar-10-python.tar.gz"
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    archive.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="MD5 mismatch"):
        load_cifar("cifar10", "train", root, md5=md5)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_tampered_archive_fails_the_checksum_before_anything_is_unpickled(cifar10, tmp_path):
    root, arrays, md5 = cifar10
    marker = tmp_path / "executed"
    members = {f"cifar-10-batches-py/{n}": py2_style_pickle({b"data": arrays[n][0], b"labels": arrays[n][1]})
               for n in TRAIN}
    members["cifar-10-batches-py/data_batch_1"] = pickle.dumps(_Evil(marker), protocol=2)
    tar_gz_members(root / "cifar-10-python.tar.gz", members)
    # unpickling first would raise UnpicklingError (or run the payload); the checksum must come first
    with pytest.raises(ChecksumError):
        load_cifar("cifar10", "train", root, md5=md5)
    assert not marker.exists()


def test_extracted_folder_gives_the_same_data_as_the_archive(cifar10, tmp_path):
    root, arrays, md5 = cifar10
    from_archive = load_cifar("cifar10", "train", root, md5=md5)
    other = tmp_path / "extracted"
    with tarfile.open(root / "cifar-10-python.tar.gz") as tf:
        for member in tf.getmembers():
            if member.isfile():
                (other / member.name).parent.mkdir(parents=True, exist_ok=True)
                (other / member.name).write_bytes(tf.extractfile(member).read())
    assert (other / "cifar-10-batches-py" / "data_batch_5").is_file()
    from_folder = load_cifar("cifar10", "train", other)
    assert torch.equal(from_folder.x, from_archive.x) and torch.equal(from_folder.y, from_archive.y)


def test_extracted_folder_refuses_pickles_with_foreign_globals(tmp_path):
    arrays = cifar10_arrays()
    folder = write_cifar10_python(tmp_path, arrays)
    marker = tmp_path / "executed"
    (folder / "data_batch_3").write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="posix.mkdir|os.mkdir|nt.mkdir"):
        load_cifar("cifar10", "train", tmp_path)
    assert not marker.exists()


def test_binary_folder_and_archive_match_the_python_version(tmp_path):
    arrays = cifar10_arrays(seed=5)
    folder = write_cifar10_binary(tmp_path / "bin", arrays)
    for split, names in (("train", TRAIN), ("test", ["test_batch"])):
        ds = load_cifar("cifar10", split, tmp_path / "bin")
        x, y = expected(arrays, names)
        assert torch.equal(ds.x, x) and torch.equal(ds.y, y)
    root = tmp_path / "root"
    root.mkdir()
    archive = tar_gz(folder, root / "cifar-10-binary.tar.gz")
    with pytest.raises(ChecksumError, match="c32a1d4ab5d03f1284b67883e8d87530"):
        load_cifar("cifar10", "train", root, format="binary")
    ds = load_cifar("cifar10", "train", root, format="binary", md5=md5sum(archive))
    assert torch.equal(ds.x, expected(arrays, TRAIN)[0])


def test_binary_file_with_a_partial_record_is_rejected(tmp_path):
    folder = write_cifar10_binary(tmp_path, cifar10_arrays())
    path = folder / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="3073-byte"):
        load_cifar("cifar10", "test", tmp_path)


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_cifar100_fine_and_coarse_labels(tmp_path, fmt):
    arrays = cifar100_arrays()
    write = write_cifar100_python if fmt == "python" else write_cifar100_binary
    folder = write(tmp_path / "src", arrays)
    archive = tar_gz(folder, tmp_path / ("cifar-100-python.tar.gz" if fmt == "python" else "cifar-100-binary.tar.gz"))
    md5 = md5sum(archive)
    fine = load_cifar("cifar100", "train", tmp_path, format=fmt, md5=md5)
    coarse = load_cifar("cifar100", "test", tmp_path, format=fmt, md5=md5, label="coarse")
    assert torch.equal(fine.x, torch.from_numpy(arrays["train"][0].reshape(-1, 3, 32, 32)))
    assert fine.y.tolist() == arrays["train"][1] and fine.info.num_classes == 100
    assert coarse.y.tolist() == arrays["test"][2] and coarse.info.num_classes == 20
    assert fine.info.mean == (0.5071, 0.4865, 0.4409)
    # the same from the extracted folder, no checksum involved
    assert torch.equal(load_cifar("cifar100", "train", tmp_path / "src", format=fmt).y, fine.y)


def test_bad_arguments_name_the_accepted_values(cifar10):
    root, _, md5 = cifar10
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_cifar("cifar10", "val", root, md5=md5)
    with pytest.raises(ValueError, match=r"\['fine'\]"):
        load_cifar("cifar10", "train", root, label="coarse", md5=md5)
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar("cifar1000", "train", root)
    with pytest.raises(ValueError, match="format"):
        load_cifar("cifar10", "train", root, format="hdf5")


def test_missing_files_error_says_where_and_what(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar("cifar10", "train", tmp_path)
    msg = str(err.value)
    for needle in (str(tmp_path), "cifar-10-python.tar.gz", "cifar-10-batches-py", "data_batch_5",
                   "download=True", "data.download=true", "TRACTABLE_DATA"):
        assert needle in msg


def test_download_fetches_and_verifies_the_archive(cifar10, tmp_path):
    server, _, md5 = cifar10  # a "mirror" reached through a file:// URL
    root = tmp_path / "fresh"
    with pytest.raises(ChecksumError):
        load_cifar("cifar10", "test", root, download=True, base_url=server.as_uri(), md5="0" * 32)
    assert not (root / "cifar-10-python.tar.gz").exists() and not list(root.glob("*.part"))
    ds = load_cifar("cifar10", "test", root, download=True, base_url=server.as_uri(), md5=md5)
    assert (root / "cifar-10-python.tar.gz").is_file() and len(ds) == 4


def test_download_failure_is_explained(tmp_path):
    with pytest.raises(DownloadError, match="offline"):
        load_cifar("cifar10", "test", tmp_path, download=True, base_url=(tmp_path / "no-mirror").as_uri())


def test_registry_and_environment_root(cifar10, monkeypatch):
    root, arrays, md5 = cifar10
    monkeypatch.setenv("TRACTABLE_DATA", str(root))
    ds = load_dataset("CIFAR-10", "test", md5=md5)
    assert torch.equal(ds.y, torch.tensor(arrays["test_batch"][1]))
    assert ds.x.shape[1:] == (3, 32, 32) and PIXELS == 3072
