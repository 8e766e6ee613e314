"""Batched RandAugment / Random Erasing against per-sample references written out by hand (PIL's formulas),
their dependence on the generator only, and DeviceLoader("randaugment") rank slicing and resumption."""
import math

import pytest
import torch

from tractable.data import (
    ArrayDataset,
    DatasetInfo,
    DeviceLoader,
    RandAugmentParams,
    apply_erasing,
    apply_rand_augment,
    rand_augment,
    random_erasing,
    sample_erasing_params,
    sample_rand_augment_params,
)
from tractable.data import randaugment as ra

H, W = 7, 9
FILL = (128, 100, 30)


def g(seed):
    return torch.Generator().manual_seed(seed)


def images(n=12, c=3, h=H, w=W, seed=0):
    x = torch.randint(0, 256, (n, c, h, w), generator=g(seed), dtype=torch.uint8)
    x[0] = 77  # a constant image
    x[1, :, :, : w // 2] = 10  # two-valued channels
    x[1, :, :, w // 2:] = 200
    x[2] = x[2] // 4 + 60  # low contrast
    return x


def forced(op, magnitude, negate, layers=1):
    """Params in which sample i applies ``op`` at ``magnitude[i]`` in every layer."""
    n = len(magnitude)
    mag = torch.tensor(magnitude, dtype=torch.float64)[:, None].repeat(1, layers)
    neg = torch.tensor(negate, dtype=torch.bool)[:, None].repeat(1, layers)
    return RandAugmentParams(torch.full((n, layers), op), torch.ones(n, layers, dtype=torch.bool), mag, neg)


def lut_reference(x, make_lut):
    """Apply a per-(sample, channel) Python lookup table built by ``make_lut(i, c, values)``."""
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            lut = make_lut(i, c, x[i, c].flatten().tolist())
            assert len(lut) == 256 and all(0 <= v <= 255 for v in lut)
            out[i, c] = torch.tensor(lut, dtype=torch.uint8)[x[i, c].long()]
    return out


def pil_autocontrast_lut(values):
    lo, hi = min(values), max(values)
    if hi <= lo:
        return list(range(256))
    scale = 255.0 / (hi - lo)
    offset = -lo * scale
    return [max(0, min(255, int(v * scale + offset))) for v in range(256)]


def pil_equalize_lut(values):
    h = [0] * 256
    for v in values:
        h[v] += 1
    histo = [c for c in h if c]
    if len(histo) <= 1:
        return list(range(256))
    step = (sum(histo) - histo[-1]) // 255
    if not step:
        return list(range(256))
    lut, n = [], step // 2
    for v in range(256):
        lut.append(min(255, n // step))
        n += h[v]
    return lut


def luma(img):
    """PIL convert('L') of one (C, H, W) image, pixel by pixel."""
    if img.shape[0] == 1:
        return [[int(v) for v in row] for row in img[0].tolist()]
    r, gg, b = img.tolist()
    return [[(r[i][j] * 19595 + gg[i][j] * 38470 + b[i][j] * 7471 + 32768) >> 16 for j in range(len(r[0]))]
            for i in range(len(r))]


def degenerate_reference(op, img):
    """float64 (C, H, W) degenerate image of an enhancement op (PIL ImageEnhance)."""
    c, h, w = img.shape
    if op == ra.COLOR:
        return torch.tensor(luma(img), dtype=torch.float64).expand(c, h, w)
    if op == ra.CONTRAST:
        lum = luma(img)
        mean = int(sum(map(sum, lum)) / (h * w) + 0.5)
        return torch.full((c, h, w), float(mean), dtype=torch.float64)
    if op == ra.BRIGHTNESS:
        return torch.zeros((c, h, w), dtype=torch.float64)
    out = img.to(torch.float64).clone()  # SMOOTH: border unchanged
    for ch in range(c):
        for i in range(1, h - 1):
            for j in range(1, w - 1):
                s = sum(int(img[ch, i + di, j + dj]) for di in (-1, 0, 1) for dj in (-1, 0, 1)) + 4 * int(img[ch, i, j])
                out[ch, i, j] = round(s / 13)
    return out


def check_blend(out, x, op, factors):
    """out == trunc(clip(d + f (x - d))) up to float rounding where that value is within 1e-3 of an integer."""
    for i, f in enumerate(factors):
        d = degenerate_reference(op, x[i])
        exact = (d + f * (x[i].double() - d)).clamp(0, 255)
        expected = exact.floor()
        near = (exact - exact.round()).abs() < 1e-3
        diff = (out[i].double() - expected).abs()
        assert torch.all(diff[~near] == 0), (op, i, f)
        assert torch.all(diff[near] <= 1)


def affine_reference(img, matrix, fill):
    """Nearest-neighbour affine resampling pixel by pixel; also returns where the source is near a pixel edge."""
    c, h, w = img.shape
    (a, b, t0), (d, e, t1) = matrix
    out = torch.empty_like(img)
    ambiguous = torch.zeros(h, w, dtype=torch.bool)
    for i in range(h):
        for j in range(w):
            xs = a * (j + 0.5) + b * (i + 0.5) + t0
            ys = d * (j + 0.5) + e * (i + 0.5) + t1
            ambiguous[i, j] = min(abs(xs - round(xs)), abs(ys - round(ys))) < 1e-4
            col, row = math.floor(xs), math.floor(ys)
            if 0 <= col < w and 0 <= row < h:
                out[:, i, j] = img[:, row, col]
            else:
                out[:, i, j] = torch.tensor(fill, dtype=torch.uint8)[:c]
    return out, ambiguous


MAGS = [0.0, 10.0, 9.0, 4.5, 7.3, 1.2, 9.6, 2.5, 10.0, 6.0, 3.3, 8.8]
NEGS = [False, True, False, True, True, False, False, True, False, True, False, True]


def test_op_names_are_timms_inc_policy():
    assert ra.op_names() == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
        "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
        "TranslateXRel", "TranslateYRel")
    assert len(ra.op_names(False)) == 15 and "Posterize" in ra.op_names(False)


@pytest.mark.parametrize("op, make_lut", [
    (ra.AUTOCONTRAST, lambda m, s: lambda i, c, v: pil_autocontrast_lut(v)),
    (ra.EQUALIZE, lambda m, s: lambda i, c, v: pil_equalize_lut(v)),
    (ra.INVERT, lambda m, s: lambda i, c, v: [255 - k for k in range(256)]),
    # increasing posterize keeps 4 - int(4 m / 10) bits: PIL's mask ~(2^(8-bits) - 1)
    (ra.POSTERIZE, lambda m, s: lambda i, c, v: [k & ~(2 ** (4 + int(m[i] / 10 * 4)) - 1) & 255 for k in range(256)]),
    # increasing solarize inverts from 256 - int(256 m / 10)
    (ra.SOLARIZE, lambda m, s: lambda i, c, v: [255 - k if k >= 256 - int(m[i] / 10 * 256) else k
                                                for k in range(256)]),
    (ra.SOLARIZE_ADD, lambda m, s: lambda i, c, v: [min(255, k + int(m[i] / 10 * 110)) if k < 128 else k
                                                    for k in range(256)]),
])
def test_point_ops_match_pil_lookup_tables(op, make_lut):
    x = images()
    out = apply_rand_augment(x, forced(op, MAGS, NEGS))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, lut_reference(x, make_lut(MAGS, NEGS)))


@pytest.mark.parametrize("op", [ra.COLOR, ra.CONTRAST, ra.BRIGHTNESS, ra.SHARPNESS])
@pytest.mark.parametrize("channels", [3, 1])
def test_enhancements_match_the_blend_formula(op, channels):
    x = images(c=channels)
    out = apply_rand_augment(x, forced(op, MAGS, NEGS))
    factors = [1 + (-1 if s else 1) * 0.9 * m / 10 for m, s in zip(MAGS, NEGS)]
    check_blend(out, x, op, factors)


def test_op_functions_take_per_sample_parameters():
    x = images(4)
    bits = torch.tensor([0, 3, 7, 8])
    expected = torch.stack([x[i] & (0xFF << (8 - int(b)) & 0xFF) for i, b in enumerate(bits)])
    assert torch.equal(ra.posterize(x, bits), expected)
    assert torch.equal(ra.solarize(x, torch.tensor([0, 256, 100, 128])),
                       torch.stack([255 - x[0], x[1], torch.where(x[2] >= 100, 255 - x[2], x[2]),
                                    torch.where(x[3] >= 128, 255 - x[3], x[3])]))
    assert torch.equal(ra.solarize_add(x, 0), x)
    check_blend(ra.adjust_brightness(x, torch.tensor([0.0, 0.5, 1.0, 1.9])), x, ra.BRIGHTNESS, [0.0, 0.5, 1.0, 1.9])
    check_blend(ra.adjust_sharpness(x, 0.3), x, ra.SHARPNESS, [0.3] * 4)
    with pytest.raises(ValueError, match="uint8"):
        ra.invert(x.float())
    with pytest.raises(ValueError, match="channels"):
        ra.invert(torch.zeros(1, 2, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 8\]"):
        ra.posterize(x, 9)


def geometric_matrix_reference(op, m, neg, h, w):
    """The maps written out independently: (a, b, c), (d, e, f) with x_in = a x + b y + c, y_in = d x + e y + f."""
    s = -1.0 if neg else 1.0
    if op == ra.ROTATE:
        t = math.radians(s * 30 * m / 10)
        cx, cy = w / 2, h / 2
        # x_in - cx = cos t (x - cx) - sin t (y - cy); y_in - cy = sin t (x - cx) + cos t (y - cy)
        return ((math.cos(t), -math.sin(t), cx - math.cos(t) * cx + math.sin(t) * cy),
                (math.sin(t), math.cos(t), cy - math.sin(t) * cx - math.cos(t) * cy))
    if op == ra.SHEAR_X:
        return (1, s * 0.3 * m / 10, 0), (0, 1, 0)
    if op == ra.SHEAR_Y:
        return (1, 0, 0), (s * 0.3 * m / 10, 1, 0)
    if op == ra.TRANSLATE_X:
        return (1, 0, s * 0.45 * m / 10 * w), (0, 1, 0)
    return (1, 0, 0), (0, 1, s * 0.45 * m / 10 * h)


@pytest.mark.parametrize("op", [ra.ROTATE, ra.SHEAR_X, ra.SHEAR_Y, ra.TRANSLATE_X, ra.TRANSLATE_Y])
def test_geometric_ops_match_a_pixel_mapping_loop(op):
    x = images()
    out = apply_rand_augment(x, forced(op, MAGS, NEGS), fill=FILL)
    skipped = 0
    for i, (m, neg) in enumerate(zip(MAGS, NEGS)):
        expected, ambiguous = affine_reference(x[i], geometric_matrix_reference(op, m, neg, H, W), FILL)
        assert torch.equal(out[i][:, ~ambiguous], expected[:, ~ambiguous]), (op, i)
        skipped += int(ambiguous.sum())
    assert skipped < 0.05 * len(MAGS) * H * W  # (30° rotations put some pixel centres exactly on edges)
    assert torch.equal(out[0], x[0])  # magnitude 0


def test_rotation_is_counter_clockwise_and_translation_moves_content_against_the_shift():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    x[0, 0, 0, 3] = 255  # top-right
    out = ra.affine(x, ra.rotate_matrix(90.0, 4, 4), fill=0)
    assert out[0, 0].nonzero().tolist() == [[0, 0]]  # top-left after a quarter turn counter-clockwise
    out = ra.affine(x, ra.translate_matrix(1.0, "x"), fill=7)
    assert out[0, 0, 0].tolist() == [0, 0, 255, 7]
    out = ra.affine(x, ra.shear_matrix(2.0, "x"), fill=0)  # x_in = x + 2y: row 0 (y = 1/2) moves left by 1
    assert out[0, 0].nonzero().tolist() == [[0, 2]]
    out = ra.affine(x, ra.shear_matrix(1.0, "x"), fill=0)  # x_in = x + 1/2 + 1/2 on a pixel edge: floor, as PIL
    assert out[0, 0].nonzero().tolist() == [[0, 2]]
    assert torch.equal(ra.affine(x, torch.eye(2, 3).unsqueeze(0), interpolation="bilinear"), x)


def test_identity_when_nothing_is_applied_or_magnitude_is_zero():
    x = images()
    n = x.shape[0]
    params = sample_rand_augment_params(n, g(1), num_ops=3)
    none = RandAugmentParams(params.ops, torch.zeros_like(params.applied), params.magnitude, params.negate)
    assert torch.equal(apply_rand_augment(x, none), x)
    assert torch.equal(rand_augment(x, g(1), num_ops=0), x)
    assert torch.equal(rand_augment(x, g(1), prob=0.0), x)
    scaled = [ra.ROTATE, ra.SOLARIZE, ra.SOLARIZE_ADD, ra.COLOR, ra.CONTRAST, ra.BRIGHTNESS, ra.SHARPNESS,
              ra.SHEAR_X, ra.SHEAR_Y, ra.TRANSLATE_X, ra.TRANSLATE_Y]
    for op in scaled:  # (PosterizeIncreasing keeps 4 bits at magnitude 0, as in timm)
        assert torch.equal(apply_rand_augment(x, forced(op, [0.0] * n, NEGS, layers=2)), x), op


def test_layers_compose_in_order_and_unselected_samples_are_untouched():
    x = images()
    n = x.shape[0]
    ops = torch.tensor([[ra.INVERT, ra.ROTATE]] * (n // 2) + [[ra.ROTATE, ra.SOLARIZE]] * (n - n // 2))
    applied = torch.ones(n, 2, dtype=torch.bool)
    applied[::3, 1] = False
    mag = torch.full((n, 2), 6.0, dtype=torch.float64)
    neg = torch.zeros(n, 2, dtype=torch.bool)
    out = apply_rand_augment(x, RandAugmentParams(ops, applied, mag, neg), fill=FILL)
    for i in range(n):
        y = x[i:i + 1]
        for k in range(2):
            if not applied[i, k]:
                continue
            op = int(ops[i, k])
            if op == ra.INVERT:
                y = 255 - y
            elif op == ra.SOLARIZE:
                y = torch.where(y >= 256 - int(0.6 * 256), 255 - y, y)
            else:
                y = ra.affine(y, ra.rotate_matrix(18.0, H, W), FILL)
        assert torch.equal(out[i:i + 1], y), i


def test_sampling_distribution():
    p = sample_rand_augment_params(20000, g(0))
    assert p.ops.shape == (20000, 2) and p.ops.min() == 0 and p.ops.max() == 14
    counts = torch.bincount(p.ops.flatten(), minlength=15).double() / p.ops.numel()
    assert torch.allclose(counts, torch.full((15,), 1 / 15, dtype=torch.float64), atol=0.01)
    assert abs(p.applied.double().mean().item() - 0.5) < 0.01
    assert abs(p.negate.double().mean().item() - 0.5) < 0.01
    assert p.magnitude.min() >= 0 and p.magnitude.max() == 10.0  # N(9, 0.5) clipped at 10
    assert abs(p.magnitude.mean().item() - 8.99) < 0.02 and abs(p.magnitude.std().item() - 0.49) < 0.02
    u = sample_rand_augment_params(5000, g(0), magnitude=9, magnitude_std=float("inf")).magnitude
    assert u.min() >= 0 and u.max() <= 9 and abs(u.mean().item() - 4.5) < 0.15
    assert torch.equal(sample_rand_augment_params(50, g(0), magnitude_std=0).magnitude, torch.full((50, 2), 9.0,
                                                                                                   dtype=torch.float64))
    # level -> argument at m = 9: the values of timm's rand-m9 policy
    m, no = torch.tensor([9.0], dtype=torch.float64), torch.tensor([False])
    assert ra.op_argument(ra.ROTATE, m, no).item() == pytest.approx(27.0)
    assert ra.op_argument(ra.POSTERIZE, m, no).item() == 1
    assert ra.op_argument(ra.SOLARIZE, m, no).item() == 26
    assert ra.op_argument(ra.SOLARIZE_ADD, m, no).item() == 99
    assert ra.op_argument(ra.COLOR, m, torch.tensor([True])).item() == pytest.approx(0.19)
    assert ra.op_argument(ra.SHEAR_X, m, no).item() == pytest.approx(0.27)
    assert ra.op_argument(ra.TRANSLATE_X, m, no, height=10, width=32).item() == pytest.approx(0.405 * 32)
    assert ra.op_argument(ra.POSTERIZE, torch.tensor([10.0]), no).item() == 0


def test_same_generator_seed_same_output_and_no_global_randomness():
    x = images(64, h=16, w=16)
    state = torch.random.get_rng_state()
    a = rand_augment(x, g(5))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, rand_augment(x, g(5)))
    assert not torch.equal(a, rand_augment(x, g(6)))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert (a != x).flatten(1).any(1).float().mean() > 0.5  # 1 - 0.5^2 of the samples draw at least one op
    # a slice of the parameters acts on a slice of the batch exactly as in the full batch
    params = sample_rand_augment_params(64, g(5))
    assert torch.equal(apply_rand_augment(x[10:30], params[10:30]), a[10:30])
    with pytest.raises(ValueError, match="Generator"):
        rand_augment(x, None)
    with pytest.raises(ValueError, match="fill"):
        rand_augment(x, g(0), fill=(1, 2))


# -- random erasing --------------------------------------------------------------------------------------------
def rectangles(before, after):
    """Per sample: None if unchanged, else (top, left, h, w) of the changed set, asserting it is a full rectangle."""
    changed = (before != after).any(1)  # (N, H, W)
    boxes = []
    for i in range(changed.shape[0]):
        if not changed[i].any():
            boxes.append(None)
            continue
        rows = changed[i].any(1).nonzero().flatten()
        cols = changed[i].any(0).nonzero().flatten()
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        assert changed[i, top:bottom, left:right].all()  # one solid rectangle, nothing outside it
        assert int(changed[i].sum()) == (bottom - top) * (right - left)
        boxes.append((top, left, bottom - top, right - left))
    return boxes


def test_random_erasing_fraction_and_one_rectangle_per_sample():
    x = torch.randn(1000, 3, 32, 32, generator=g(0)) + 10  # never exactly 0
    out = random_erasing(x, g(1))
    boxes = rectangles(x, out)
    erased = [b for b in boxes if b is not None]
    assert abs(len(erased) / 1000 - 0.25) < 0.05
    for i, b in enumerate(boxes):
        if b is not None:
            top, left, h, w = b
            assert torch.all(out[i, :, top:top + h, left:left + w] == 0)
            assert h < 32 and w < 32
            assert 0.02 * 1024 * 0.7 <= h * w <= 1024 / 3 * 1.3  # area fraction in scale, up to the rounding of h, w
            assert 0.3 / 1.5 <= h / w <= 1.5 / 0.3
    assert torch.equal(random_erasing(x, g(1), p=0.0), x)
    assert sum(b is not None for b in rectangles(x, random_erasing(x, g(2), p=1.0))) >= 995


def test_random_erasing_modes_and_params():
    x = torch.randn(200, 3, 16, 16, generator=g(0)) + 10
    params = sample_erasing_params(200, (3, 16, 16), g(3), p=0.5, mode="pixel")
    out = apply_erasing(x, params)
    mask = ra.erasing_mask(params, 16, 16).expand_as(x)
    assert torch.equal(out[mask], params.noise[mask]) and torch.equal(out[~mask], x[~mask])
    boxes = rectangles(x, out)
    for i, b in enumerate(boxes):
        assert (b is not None) == bool(params.erase[i])
        if b is not None:
            assert b == tuple(int(t[i]) for t in (params.top, params.left, params.height, params.width))
    rand = random_erasing(x, g(3), p=1.0, mode="rand")
    for i, b in enumerate(rectangles(x, rand)[:20]):
        if b is not None:
            top, left, h, w = b
            patch = rand[i, :, top:top + h, left:left + w]
            assert torch.all(patch == patch[:, :1, :1])  # one value per channel
    state = torch.random.get_rng_state()
    assert torch.equal(random_erasing(x, g(4)), random_erasing(x, g(4)))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(apply_erasing(x[50:80], params[50:80]), out[50:80])
    with pytest.raises(ValueError, match="mode"):
        random_erasing(x, g(0), mode="zeros")
    with pytest.raises(ValueError, match="floating"):
        random_erasing(x.to(torch.uint8), g(0))


# -- DeviceLoader --------------------------------------------------------------------------------------------
N = 50


@pytest.fixture
def cifarish():
    x = torch.randint(0, 256, (N, 3, 8, 8), generator=g(0), dtype=torch.uint8)
    info = DatasetInfo("cifarish", 5, (3, 8, 8), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    return ArrayDataset(x, torch.arange(N) % 5, info)


def collect(loader, epoch, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.iterate(epoch, start)]


@pytest.mark.parametrize("world_size", [2, 4])
def test_loader_rank_slices_reassemble_the_single_process_batch(cifarish, world_size):
    kw = dict(augment="randaugment", seed=9, pad=2, erasing=dict(p=0.5))
    single = collect(DeviceLoader(cifarish, 16, **kw), 1)
    ranks = [collect(DeviceLoader(cifarish, 16, rank=r, world_size=world_size, **kw), 1) for r in range(world_size)]
    for b, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([ranks[r][b][0] for r in range(world_size)]), x)
        assert torch.equal(torch.cat([ranks[r][b][1] for r in range(world_size)]), y)
    plain = collect(DeviceLoader(cifarish, 16, seed=9, shuffle=True), 1)
    assert all(torch.equal(a[1], p[1]) for a, p in zip(single, plain))
    assert not any(torch.equal(a[0], p[0]) for a, p in zip(single, plain))


def test_loader_resume_and_seeding(cifarish):
    full = collect(DeviceLoader(cifarish, 8, augment="randaugment", seed=4), 2)
    fresh = DeviceLoader(cifarish, 8, augment="randaugment", seed=4)
    collect(fresh, 0)
    for (xa, ya), (xb, yb) in zip(full[3:], collect(fresh, 2, start=3)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = collect(DeviceLoader(cifarish, 8, augment="randaugment", seed=5), 2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(full, other))
    # erasing (const) writes the normalised mean, 0; with p=1 every sample has some zeros
    erased = collect(DeviceLoader(cifarish, 25, augment="randaugment", erasing=dict(p=1.0)), 0)
    assert all(bool((x == 0).flatten(1).any(1).all()) for x, _ in erased)
    off = collect(DeviceLoader(cifarish, 25, augment="randaugment", erasing=dict(p=0.0),
                               randaugment=dict(num_ops=0)), 0)
    crop_flip = collect(DeviceLoader(cifarish, 25, augment="crop_flip"), 0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(off, crop_flip))  # same crop and flip draws come first


def test_loader_options_are_checked(cifarish):
    with pytest.raises(ValueError, match="unknown randaugment"):
        DeviceLoader(cifarish, 8, augment="randaugment", randaugment=dict(magnitud=9))
    with pytest.raises(ValueError, match="magnitude"):
        DeviceLoader(cifarish, 8, augment="randaugment", randaugment=dict(magnitude=11))
    with pytest.raises(ValueError, match="bad randaugment / erasing"):
        DeviceLoader(cifarish, 8, augment="randaugment", erasing=dict(prob=0.5))
    with pytest.raises(ValueError, match="need augment='randaugment'"):
        DeviceLoader(cifarish, 8, augment="crop_flip", erasing=dict(p=0.5))
    two = ArrayDataset(cifarish.x[:, :2], cifarish.y, DatasetInfo("two", 5, (2, 8, 8), (0.5, 0.5), (0.2, 0.2)))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        DeviceLoader(two, 8, augment="randaugment")
    assert DeviceLoader(cifarish, 8, augment="randaugment")._ra_apply["fill"] == (128, 102, 76)  # round(255·mean)


def test_config_accepts_randaugment():
    from tractable.train.config import load_config

    cfg = load_config(None, ["data.name=cifar100", "data.augment=randaugment", "model.name=resnet18_cifar",
                             "optim.lr=0.1", "train.epochs=1"])
    assert cfg.data.augment == "randaugment"
