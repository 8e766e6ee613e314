"""data.label_noise on datasets that stream their samples (ImageFolder and, through it, ImageNet/TinyImageNet)."""
from types import SimpleNamespace

import pytest
import torch

from tractable.data import load_imagefolder
from tractable.data.label_noise import NoisyLabels, apply_label_noise, noisy_labels

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture
def folder(tmp_path):
    for c in range(3):
        for i in range(6):
            path = tmp_path / "imgs" / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            PIL.new("RGB", (4, 4), color=(40 * c, 10 * i, 0)).save(path)
    return tmp_path / "imgs"


def test_imagefolder_label_noise_is_the_fixed_permutation_and_keeps_the_images(folder):
    ds = load_imagefolder(folder, transform=None, image_size=4)
    noisy = apply_label_noise(ds, 0.5, seed=3)
    assert isinstance(noisy, NoisyLabels) and len(noisy) == len(ds) == 18
    want, record = noisy_labels(torch.tensor(ds.targets), 0.5, 3, seed=3)
    assert torch.equal(noisy.targets, want) and torch.equal(noisy.label_noise["indices"], record["indices"])
    assert record["indices"].numel() == 9
    for i in range(len(ds)):
        x, y = noisy[i]
        assert torch.equal(x, ds[i][0]) and y == int(want[i])
    assert noisy.info is ds.info


def test_runner_applies_label_noise_after_the_subset_of_a_streaming_dataset(folder):
    from tractable.train.loaders import apply_subset

    ds = load_imagefolder(folder, transform=None, image_size=4)
    cfg = SimpleNamespace(subset=12, test_subset=None, label_noise=0.25, label_noise_seed=0)
    out = apply_subset(ds, cfg, "train")
    assert len(out) == 12 and out.label_noise["indices"].numel() == 3
    want, _ = noisy_labels(torch.tensor(ds.targets[:12]), 0.25, 3, seed=0)
    assert torch.equal(out.targets, want) and [out[i][1] for i in range(12)] == want.tolist()
    with pytest.raises(ValueError, match="neither .y nor .targets"):
        apply_label_noise(torch.utils.data.TensorDataset(torch.zeros(4, 1)), 0.5)
