"""MNIST-1D (procedural), scikit-learn digits and the synthetic dataset: shapes, splits, determinism."""
import random

import numpy as np
import pytest
import torch

from tractable.data import load_dataset, load_digits, load_mnist1d, make_synthetic


@pytest.fixture(scope="module")
def mnist1d_root(tmp_path_factory):
    return tmp_path_factory.mktemp("mnist1d_cache")


def test_mnist1d_default_splits(mnist1d_root):
    train = load_mnist1d("train", mnist1d_root)
    test = load_mnist1d("test", mnist1d_root)  # second call is served from the cache
    assert train.x.shape == (4000, 1, 40) and test.x.shape == (1000, 1, 40)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert sorted(train.y.unique().tolist()) == list(range(10))
    assert train.info.shape == (1, 40) and train.info.num_classes == 10
    assert train.info.mean == (0.0,) and train.info.std == (1.0,)
    both = torch.cat([train.x, test.x])
    assert abs(float(both.mean())) < 1e-4 and abs(float(both.std()) - 1) < 1e-3
    assert len(list((mnist1d_root / "mnist1d").glob("*.npz"))) == 1


def test_mnist1d_cache_equals_fresh_generation(mnist1d_root):
    cached = load_mnist1d("test", mnist1d_root)
    fresh = load_mnist1d("test", None)
    assert torch.equal(cached.x, fresh.x) and torch.equal(cached.y, fresh.y)


def test_mnist1d_is_deterministic_and_leaves_global_random_state_alone():
    np.random.seed(123)
    random.seed(123)
    a = load_mnist1d("train", seed=7, num_samples=300)
    after = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    assert after == (np.random.rand(), random.random())
    b = load_mnist1d("train", seed=7, num_samples=300)
    c = load_mnist1d("train", seed=8, num_samples=300)
    assert a.x.shape == (240, 1, 40) and load_mnist1d("test", seed=7, num_samples=300).x.shape == (60, 1, 40)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)


def test_mnist1d_argument_errors():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_mnist1d("val")
    with pytest.raises(ValueError, match="num_samples"):
        load_mnist1d("train", num_sample=10)


def test_digits_split_sizes_range_and_stratification():
    train, test = load_digits("train"), load_digits("test")
    assert train.x.shape == (1437, 1, 8, 8) and test.x.shape == (360, 1, 8, 8)
    assert train.x.dtype == torch.float32 and float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    from sklearn.datasets import load_digits as sk

    bunch = sk()
    full = np.bincount(bunch.target, minlength=10)
    got = np.bincount(test.y.numpy(), minlength=10)
    exact = full * 360 / 1797
    # largest-remainder rounding: every class gets floor or ceil, the ceil going to the largest fractions
    assert np.all(np.abs(got - exact) < 1) and got.sum() == 360
    rounded_up = got > np.floor(exact)
    assert np.min((exact - np.floor(exact))[rounded_up]) >= np.max((exact - np.floor(exact))[~rounded_up])
    # train ∪ test is exactly the original set (as a multiset of (image, label) rows)
    ours = np.concatenate([torch.cat([train.x, test.x]).reshape(-1, 64).numpy() * 16,
                           torch.cat([train.y, test.y]).numpy()[:, None]], 1)
    theirs = np.concatenate([bunch.images.reshape(-1, 64), bunch.target[:, None]], 1)
    np.testing.assert_array_equal(ours[np.lexsort(ours.T)], theirs[np.lexsort(theirs.T)])
    assert train.info.mean[0] == pytest.approx(bunch.images.mean() / 16)


def test_digits_split_is_seeded():
    a, b, c = load_digits("test", seed=0), load_digits("test", seed=0), load_digits("test", seed=1)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert len(load_dataset("digits", "train", test_size=100)) == 1697


def test_synthetic_is_deterministic_and_shaped():
    a = make_synthetic("train", num_samples=40, shape=(3, 6, 5), num_classes=4, seed=3)
    b = make_synthetic("train", num_samples=40, shape=(3, 6, 5), num_classes=4, seed=3)
    c = make_synthetic("train", num_samples=40, shape=(3, 6, 5), num_classes=4, seed=4)
    assert a.x.dtype == torch.uint8 and a.x.shape == (40, 3, 6, 5) and a.info.shape == (3, 6, 5)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and not torch.equal(a.x, c.x)
    assert torch.bincount(a.y).tolist() == [10, 10, 10, 10]
    sig = make_synthetic("test", shape=(2, 17), seed=0)
    assert sig.x.dtype == torch.float32 and sig.x.shape == (256, 2, 17) and len(make_synthetic()) == 1024
    with pytest.raises(ValueError, match="'train' or 'test'"):
        make_synthetic("val")
    with pytest.raises(ValueError, match="shape"):
        make_synthetic(shape=(32,))


def test_synthetic_is_learnable_and_info_matches_the_data():
    train = make_synthetic("train", num_samples=400, shape=(3, 8, 8), num_classes=5, seed=0)
    test = make_synthetic("test", num_samples=200, shape=(3, 8, 8), num_classes=5, seed=0)
    xtr, xte = train.x.float().flatten(1) / 255, test.x.float().flatten(1) / 255
    centroids = torch.stack([xtr[train.y == k].mean(0) for k in range(5)])
    accuracy = (torch.cdist(xte, centroids).argmin(1) == test.y).float().mean()
    assert accuracy > 0.95
    per_channel = train.x.float().div(255).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.tensor(train.info.mean, dtype=torch.float32), atol=0.02)
    assert torch.allclose(per_channel.std(1), torch.tensor(train.info.std, dtype=torch.float32), atol=0.02)
    assert train.info == test.info
