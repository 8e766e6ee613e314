"""The CRATE study's pieces: paired t-intervals, matched ViT widths, the ViT cls row, and (slow, needs
Fashion-MNIST) the whole pipeline at the smoke scale."""
import json
import math

import pytest
import torch

from tractable.experiments.crate.study_report import jaccard_scores, paired, vit_cls_attention
from tractable.models import create_model


def test_paired_interval_against_the_t_formula():
    a, b = [0.80, 0.82, 0.81], [0.79, 0.80, 0.81]
    p = paired(a, b)
    d = [0.01, 0.02, 0.0]
    sd = math.sqrt(sum((x - 0.01) ** 2 for x in d) / 2)
    assert p["mean"] == pytest.approx(0.01) and p["hi"] - p["mean"] == pytest.approx(4.303 * sd / math.sqrt(3))
    assert math.isnan(paired([1.0], [0.0])["lo"])


def test_vit_cls_row_equals_the_attention_of_its_block():
    torch.manual_seed(0)
    m = create_model("vit_cifar", num_classes=3, in_channels=1, image_size=8, patch_size=4, hidden=12, mlp_hidden=24,
                     heads=3, depth=2, attn_scale="head").eval()
    x = torch.randn(2, 1, 8, 8)
    maps = vit_cls_attention(m, x, -1)
    # reference: the full softmax(q kᵀ·scale) of the last block, row 0
    from tractable.models.vit import patchify

    with torch.no_grad():
        z = torch.cat([m.cls_token.expand(2, -1, -1), m.emb(patchify(x, 4))], 1) + m.pos_emb
        z = m.blocks[0](z)
        h = m.blocks[1].norm1(z)
        a = m.blocks[1].attn
        q = a.q(h).reshape(2, 5, 3, 4).transpose(1, 2)
        k = a.k(h).reshape(2, 5, 3, 4).transpose(1, 2)
        full = torch.softmax(q @ k.transpose(-1, -2) * a.scale, -1)
    torch.testing.assert_close(maps, full[:, :, 0, 1:].reshape(2, 3, 2, 2))
    j = jaccard_scores(maps, torch.ones(2, 8, 8, dtype=torch.bool), mass=1.0)
    assert j.shape == (2, 4) and torch.allclose(j, torch.ones_like(j, dtype=j.dtype))


@pytest.mark.slow
def test_study_pipeline_at_smoke_scale(tmp_path):
    from tractable.data import load_dataset

    try:
        load_dataset("fashion_mnist", "test")
    except (FileNotFoundError, ValueError):
        pytest.skip("Fashion-MNIST is not installed")
    from tractable.experiments.crate.fashion import SCALES, main, study_models

    models = study_models("smoke")
    c = models["crate"]
    for kind, key in (("vit_params", "parameters"), ("vit_flops", "flops")):
        assert models[kind]["kwargs"]["hidden"] % models[kind]["kwargs"]["heads"] == 0
        assert abs(models[kind][key] - c[key]) < 0.25 * c[key], (kind, models[kind][key], c[key])
    assert main(["--scale", "smoke", "--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--report"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["accuracy"]) >= {"crate", "vit_params", "vit_flops", "crate-lam1"}
    assert set(res["over_training"]) == {str(x) for x in SCALES["smoke"]["seeds"]}
    assert "floor_prior_mask" in res["jaccard"] and 0 < res["logistic_floor"]["test_acc"] <= 1
    assert len(list((tmp_path / "over_training" / "s0").rglob("over_training.png"))) == 1
    assert (tmp_path / "attention" / "attention.png").is_file()
