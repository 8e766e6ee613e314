"""DeviceLoader: coverage, resumption, rank slicing equal to the single-process batch, normalisation."""
import pytest
import torch

from tractable.data import ArrayDataset, DatasetInfo, DeviceLoader, make_synthetic, normalize, to_float

N = 50


@pytest.fixture
def indexed():
    """uint8 images whose first pixel is the sample index, so batches reveal which samples they hold."""
    x = torch.randint(0, 256, (N, 3, 6, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(N, dtype=torch.uint8)
    y = torch.arange(N) % 5
    info = DatasetInfo("indexed", 5, (3, 6, 6), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    return ArrayDataset(x, y, info)


def ids(batch_x):
    return (batch_x[:, 0, 0, 0] * 255).round().long()


def collect(loader, epoch, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.iterate(epoch, start)]


@pytest.mark.parametrize("drop_last", [False, True])
def test_each_sample_once_per_epoch(indexed, drop_last):
    loader = DeviceLoader(indexed, 16, drop_last=drop_last, normalize=False, seed=3)
    batches = collect(loader, 0)
    assert len(loader) == len(batches) == (3 if drop_last else 4)
    assert [len(y) for _, y in batches] == ([16] * 3 if drop_last else [16, 16, 16, 2])
    seen = torch.cat([ids(x) for x, _ in batches])
    assert len(set(seen.tolist())) == len(seen) == (48 if drop_last else N)
    ys = torch.cat([y for _, y in batches])
    assert torch.equal(ys, indexed.y[seen])
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.device.type == "cpu"


def test_order_depends_on_seed_and_epoch_only(indexed):
    a = DeviceLoader(indexed, 10, normalize=False, seed=1)
    b = DeviceLoader(indexed, 10, normalize=False, seed=1)
    c = DeviceLoader(indexed, 10, normalize=False, seed=2)
    order = lambda loader, e: torch.cat([ids(x) for x, _ in loader.iterate(e)])  # noqa: E731
    assert torch.equal(order(a, 0), order(b, 0))
    assert not torch.equal(order(a, 0), order(a, 1))
    assert not torch.equal(order(a, 0), order(c, 0))
    b.set_epoch(1)
    assert torch.equal(torch.cat([ids(x) for x, _ in b]), order(a, 1))
    plain = DeviceLoader(indexed, 10, shuffle=False, normalize=False)
    assert order(plain, 0).tolist() == list(range(N)) == order(plain, 5).tolist()


@pytest.mark.parametrize("augment", [None, "crop_flip"])
def test_resume_mid_epoch_equals_the_tail_of_a_full_epoch(indexed, augment):
    full = collect(DeviceLoader(indexed, 8, augment=augment, seed=4), 2)
    fresh = DeviceLoader(indexed, 8, augment=augment, seed=4)
    collect(fresh, 0)  # unrelated iteration in between must not matter
    tail = collect(fresh, 2, start=3)
    assert len(tail) == len(full) - 3
    for (xa, ya), (xb, yb) in zip(full[3:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert collect(fresh, 2, start=len(fresh)) == []


@pytest.mark.parametrize("augment", [None, "flip", "crop", "crop_flip"])
@pytest.mark.parametrize("world_size, drop_last", [(2, False), (2, True), (4, False)])
def test_rank_slices_reassemble_the_single_process_batch(indexed, augment, world_size, drop_last):
    kw = dict(augment=augment, seed=9, drop_last=drop_last, pad=2)
    single = collect(DeviceLoader(indexed, 16, **kw), 1)
    ranks = [collect(DeviceLoader(indexed, 16, rank=r, world_size=world_size, **kw), 1)
             for r in range(world_size)]
    assert all(len(r) == len(single) for r in ranks)
    for b, (x, y) in enumerate(single):
        parts = [ranks[r][b] for r in range(world_size)]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
    if not drop_last:  # last global batch has 2 samples: split 1/1 (R=2) or 1/1/0/0 (R=4)
        sizes = [len(ranks[r][-1][1]) for r in range(world_size)]
        assert sizes == ([1, 1] if world_size == 2 else [1, 1, 0, 0])


def test_augmentation_is_applied_and_seeded(indexed):
    plain = collect(DeviceLoader(indexed, 25, seed=0), 0)
    aug = collect(DeviceLoader(indexed, 25, augment="crop_flip", seed=0), 0)
    again = collect(DeviceLoader(indexed, 25, augment="crop_flip", seed=0), 0)
    assert all(torch.equal(a[1], p[1]) for a, p in zip(aug, plain))  # same samples,
    assert not all(torch.equal(a[0], p[0]) for a, p in zip(aug, plain))  # but transformed
    assert all(torch.equal(a[0], b[0]) for a, b in zip(aug, again))


def test_normalisation_uses_info_mean_and_std(indexed):
    loader = DeviceLoader(indexed, 20, shuffle=False)
    x = torch.cat([b for b, _ in loader])
    mean = torch.tensor(indexed.info.mean).view(1, 3, 1, 1)
    std = torch.tensor(indexed.info.std).view(1, 3, 1, 1)
    expected = (indexed.x.float() / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-6, rtol=0)
    assert torch.equal(x, normalize(to_float(indexed.x), indexed.info.mean, indexed.info.std))
    raw = torch.cat([b for b, _ in DeviceLoader(indexed, 20, shuffle=False, normalize=False)])
    assert torch.equal(raw, indexed.x.float() / 255)


def test_normalised_data_has_zero_mean_unit_std_when_info_is_exact():
    ds = make_synthetic("train", num_samples=200, shape=(3, 5, 5), seed=1)
    xf = ds.x.float().div(255).transpose(0, 1).reshape(3, -1).double()
    info = DatasetInfo("exact", ds.info.num_classes, ds.info.shape, tuple(xf.mean(1).tolist()),
                       tuple(xf.std(1, unbiased=False).tolist()))
    out = torch.cat([x for x, _ in DeviceLoader(ArrayDataset(ds.x, ds.y, info), 64)])
    per_channel = out.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(3), atol=1e-5)


def test_one_dimensional_signals_with_crop():
    ds = make_synthetic("train", num_samples=30, shape=(1, 40), seed=0)
    assert ds.x.dtype == torch.float32
    for x, y in DeviceLoader(ds, 8, augment="crop", pad=3):
        assert x.shape[1:] == (1, 40) and x.dtype == torch.float32


def test_argument_errors(indexed):
    with pytest.raises(ValueError, match="divisible by world_size"):
        DeviceLoader(indexed, 15, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        DeviceLoader(indexed, 16, rank=2, world_size=2)
    with pytest.raises(ValueError, match="crop_flip"):
        DeviceLoader(indexed, 16, augment="mixup")
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(indexed, 0)
    with pytest.raises(ValueError, match="ArrayDataset"):
        DeviceLoader([(1, 2)], 4)
    loader = DeviceLoader(indexed, 16)
    with pytest.raises(ValueError, match="start"):
        next(loader.iterate(0, start=5))
    with pytest.raises(ValueError, match="epoch"):
        loader.set_epoch(-1)
