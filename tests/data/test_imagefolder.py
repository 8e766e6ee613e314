"""Image-folder indexes (TinyImageNet, ImageNet, generic) on fake trees, and the lazy-import install hints."""
import sys

import pytest
import torch

from tractable.data import (
    load_dataset,
    load_imagefolder,
    load_imagenet,
    load_tinyimagenet,
    scan_class_folders,
    scan_tinyimagenet,
)

WNIDS = ["n03", "n01", "n02"]  # deliberately unsorted, as in the official wnids.txt


def touch(path, data=b"not really an image"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def tiny(tmp_path):
    folder = tmp_path / "tiny-imagenet-200"
    folder.mkdir()
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for w in WNIDS:
        for i in range(2):
            touch(folder / "train" / w / "images" / f"{w}_{i}.JPEG")
        (folder / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    val = {"val_0.JPEG": "n02", "val_1.JPEG": "n03", "val_2.JPEG": "n01", "val_3.JPEG": "n02"}
    for name in val:
        touch(folder / "val" / "images" / name)
    (folder / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{w}\t0\t0\t63\t63\n" for name, w in val.items()))
    touch(folder / "test" / "images" / "test_0.JPEG")
    return folder, val


def test_tinyimagenet_train_index(tiny):
    folder, _ = tiny
    classes, samples = scan_tinyimagenet(folder, "train")
    assert classes == ["n01", "n02", "n03"]
    assert len(samples) == 6
    for path, label in samples:
        assert path.endswith(".JPEG") and f"/train/{classes[label]}/images/" in path


def test_tinyimagenet_val_annotations(tiny):
    folder, val = tiny
    classes, samples = scan_tinyimagenet(folder, "val")
    got = {p.rsplit("/", 1)[1]: classes[label] for p, label in samples}
    assert got == val
    ds = load_tinyimagenet("test", folder.parent, transform=None)  # "test" = the labelled val split
    assert len(ds) == 4 and ds.targets == [classes.index(val[f"val_{i}.JPEG"]) for i in range(4)]
    assert ds.info.name == "tinyimagenet" and ds.info.num_classes == 3 and ds.info.shape == (3, 64, 64)


def test_tinyimagenet_annotation_problems(tiny):
    folder, _ = tiny
    ann = folder / "val" / "val_annotations.txt"
    ann.write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="n99"):
        scan_tinyimagenet(folder, "val")
    ann.write_text("missing.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(FileNotFoundError, match="missing.JPEG"):
        scan_tinyimagenet(folder, "val")
    with pytest.raises(ValueError, match="'train' or 'val'"):
        scan_tinyimagenet(folder, "holdout")


def test_imagenet_layout_uses_train_classes_for_val(tmp_path):
    base = tmp_path / "imagenet"
    for w in ("n2", "n1", "n3"):
        touch(base / "train" / w / f"{w}_a.JPEG")
        touch(base / "train" / w / f"{w}_b.jpeg")
        touch(base / "train" / w / "notes.txt")
    touch(base / "val" / "n3" / "v.JPEG")
    touch(base / "val" / "n1" / "w.JPEG")
    train = load_imagenet("train", tmp_path, transform=None)
    assert train.classes == ["n1", "n2", "n3"] and len(train) == 6 and train.info.num_classes == 3
    assert train.targets == [0, 0, 1, 1, 2, 2]
    val = load_imagenet("val", tmp_path, transform=None)
    assert val.classes == ["n1", "n2", "n3"] and val.targets == [0, 2]


def test_flat_imagenet_val_gets_a_clear_error(tmp_path):
    touch(tmp_path / "imagenet" / "train" / "n1" / "a.JPEG")
    touch(tmp_path / "imagenet" / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(ValueError, match="sort them into class folders"):
        load_imagenet("val", tmp_path, transform=None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="class sub-folders"):
        scan_class_folders(empty)


def test_missing_dataset_cannot_be_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot be downloaded automatically") as err:
        load_dataset("imagenet", "train", tmp_path, download=True)
    assert str(tmp_path / "imagenet") in str(err.value)


def test_standard_transforms_need_torchvision(tiny, monkeypatch):
    folder, _ = tiny
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails whether installed or not
    with pytest.raises(ImportError, match=r"pip install 'tractable\[vision\]'"):
        load_tinyimagenet("train", folder.parent)
    with pytest.raises(ValueError, match="transform"):
        load_tinyimagenet("train", folder.parent, transform="augment")


def test_reading_an_image_needs_pillow(tiny, monkeypatch):
    folder, _ = tiny
    ds = load_tinyimagenet("train", folder.parent, transform=None)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install 'tractable\[vision\]'"):
        ds[0]


def test_pixels_are_decoded_to_uint8_chw(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    pixels = torch.randint(0, 256, (5, 7, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for c in ("cat", "dog"):
        (tmp_path / "train" / c).mkdir(parents=True)
        Image.fromarray(pixels.numpy()).save(tmp_path / "train" / c / "img.png")
    ds = load_dataset("imagefolder", "train", tmp_path, transform=None)
    x, label = ds[1]
    assert ds.classes == ["cat", "dog"] and label == 1
    assert x.dtype == torch.uint8 and torch.equal(x, pixels.permute(2, 0, 1))
    seen = []
    custom = load_imagefolder(tmp_path / "train", transform=lambda img: seen.append(img.size) or "ok")
    assert custom[0] == ("ok", 0) and seen == [(7, 5)]
