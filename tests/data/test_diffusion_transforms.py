"""Folder-dataset transforms for diffusion: resize + centre crop (+ flip on the train split only), the default for
task=diffusion, the refusal of classification crops, and un-augmented seeded FID reference images."""
import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")

from tractable.data import load_dataset  # noqa: E402
from tractable.data.diffusion_transforms import CenterCropResize, center_crop_resize  # noqa: E402
from tractable.train import ConfigError, config_from_dict  # noqa: E402


def _image(w, h, seed=0):
    """A colour image whose left and right halves differ, so a flip and a crop are visible."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[:, : w // 2, 0] = 0
    arr[:, w // 2:, 0] = 255
    return Image.fromarray(arr)


def _folder(tmp_path, sizes=((40, 30), (30, 50), (130, 70)), classes=("a", "b")):
    for c in classes:
        (tmp_path / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            _image(w, h, seed=i).save(tmp_path / c / f"{i}.png")
    return tmp_path


def test_center_crop_resize_against_pil_written_out():
    img = _image(130, 70)
    out = center_crop_resize(img, 16)
    assert out.size == (16, 16)
    # reference: box-halve while the short side is >= 32 (70 → 35 → 17), bicubic to short side 16, centre crop
    ref = img.resize((65, 35), resample=Image.BOX).resize((32, 17), resample=Image.BOX)
    ref = ref.resize((round(32 * 16 / 17), 16), resample=Image.BICUBIC)
    left = (ref.size[0] - 16) // 2
    ref = ref.crop((left, 0, left + 16, 16))
    assert np.array_equal(np.asarray(out), np.asarray(ref))
    with pytest.raises(ValueError, match="size"):
        center_crop_resize(img, 0)


def test_transform_returns_uint8_chw_and_flips_only_when_asked():
    img = _image(40, 30)
    plain = CenterCropResize(24)(img)
    assert plain.dtype == torch.uint8 and plain.shape == (3, 24, 24)
    assert plain[0, :, 0].max() < 60 and plain[0, :, -1].min() > 200  # left half dark in the red channel: no flip
    flip = CenterCropResize(24, flip=True)
    torch.manual_seed(0)
    outs = [flip(img) for _ in range(40)]
    flipped = [bool(torch.equal(o, plain.flip(-1))) for o in outs]
    assert all(f or torch.equal(o, plain) for f, o in zip(flipped, outs))
    assert 5 < sum(flipped) < 35  # about half


def test_folder_dataset_diffusion_transform(tmp_path):
    root = _folder(tmp_path)
    tr = load_dataset("imagefolder", "train", path=root, transform="diffusion", image_size=16)
    ev = load_dataset("imagefolder", "test", path=root, transform="diffusion", image_size=16)
    nf = load_dataset("imagefolder", "train", path=root, transform="diffusion_noflip", image_size=16)
    assert tr.transform.flip and not ev.transform.flip and not nf.transform.flip
    x, y = ev[2]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8
    assert torch.equal(x, nf[2][0])


def _cfg(tmp_path, **kwargs):
    d = {"task": "diffusion", "data": {"name": "imagefolder", "kwargs": {"path": str(tmp_path), "image_size": 16,
                                                                        **kwargs}},
         "model": {"name": "dit_tiny_2"}, "optim": {"name": "adamw", "lr": 1e-3}, "train": {"epochs": 1}}
    return d


def test_task_diffusion_defaults_and_refuses_crops(tmp_path):
    cfg = config_from_dict(_cfg(tmp_path))
    assert cfg.data.kwargs["transform"] == "diffusion"
    assert config_from_dict(_cfg(tmp_path, transform="default")).data.kwargs["transform"] == "diffusion"
    assert config_from_dict(_cfg(tmp_path, transform="diffusion_noflip")).data.kwargs["transform"] == "diffusion_noflip"
    with pytest.raises(ConfigError, match="data.kwargs.transform: 'train' is the classification augmentation"):
        config_from_dict(_cfg(tmp_path, transform="train"))
    asked = _cfg(tmp_path, transform="train")
    asked["task_kwargs"] = {"random_crops": True}
    assert config_from_dict(asked).data.kwargs["transform"] == "train"
    clf = _cfg(tmp_path)
    clf["task"] = "classification"
    assert "transform" not in config_from_dict(clf).data.kwargs  # other tasks keep their defaults


def test_fid_reference_images_are_unaugmented_seeded_and_standardised(tmp_path):
    from tractable.experiments.diffusion.commands import dataset_images

    root = _folder(tmp_path / "imgs", sizes=((40, 30), (30, 50), (130, 70), (20, 20), (33, 21)))
    cfg = config_from_dict(_cfg(root))
    a, ya, info = dataset_images(cfg, "train", 6, seed=3, num_workers=0)
    b, yb, _ = dataset_images(cfg, "train", 6, seed=3, num_workers=0)
    assert a.shape == (6, 3, 16, 16) and torch.equal(a, b) and torch.equal(ya, yb)  # no random flip
    c, _, _ = dataset_images(cfg, "train", 6, seed=4, num_workers=0)
    assert not torch.equal(a, c)  # another seed, another subset
    # standardised as the loaders do (uint8 → [0, 1] → (x − mean)/std), not raw 0-255 values
    ds = load_dataset("imagefolder", "train", path=root, transform="diffusion_noflip", image_size=16)
    idx = torch.randperm(10, generator=torch.Generator().manual_seed(3))[:6].sort().values
    mean = torch.tensor(info.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(info.std).reshape(1, 3, 1, 1)
    ref = (torch.stack([ds[int(i)][0] for i in idx]).float() / 255 - mean) / std
    assert torch.allclose(a, ref, atol=1e-6)
