"""``tractable diffusion-sample`` and ``tractable fid`` on a tiny diffusion run: PNG grid, FID JSON/table/plot,
bad inputs."""
import json

import pytest

from tests.train.test_diffusion_task import diffusion_dict
from tractable.cli.main import main
from tractable.experiments.diffusion.commands import checkpoint_steps, fid_table, load_run, sample
from tractable.train import config_from_dict, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diff")
    d = diffusion_dict(tmp, "tiny", ema=0.9, save_every=1)
    d["data"].update(subset=64, test_subset=32)
    return train(config_from_dict(d)).run_dir


def test_sample_command_writes_png(run_dir, capsys):
    assert main(["diffusion-sample", str(run_dir), "--n", "6", "--steps", "3", "--seed", "1"]) == 0
    png = run_dir / "samples" / "ddim3-eta0-g1-steplast-s1-n6-ema.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["diffusion-sample", str(run_dir), "--n", "4", "--steps", "3", "--sampler", "ddpm", "--no-ema",
                 "--step", "2", "--out", str(run_dir / "x.png")]) == 0
    assert (run_dir / "x.png").is_file()


def test_samples_are_seeded_and_clipped(run_dir):
    model, diffusion, info, _ = load_run(run_dir)
    a = sample(model, diffusion, info, 5, steps=4, seed=3)
    b = sample(model, diffusion, info, 5, steps=4, seed=3)
    assert a.equal(b) and a.shape == (5, 1, 8, 8)
    lo, hi = (-info.mean[0] / info.std[0], (1 - info.mean[0]) / info.std[0])
    assert a.min() >= lo - 1e-5 and a.max() <= hi + 1e-5  # x̂₀ clipped to the pixel range, last step returns x̂₀


def test_fid_command(run_dir, tmp_path, capsys):
    out = tmp_path / "fid"
    assert main(["fid", str(run_dir), "--n", "40", "--steps", "3", "--out", str(out)]) == 0
    res = json.loads((out / "fid.json").read_text())
    entry = res["runs"][str(run_dir)]
    assert entry["steps"] == [s for s, _ in checkpoint_steps(run_dir)] == [2, 4]
    assert all(f > 0 for f in entry["fid"])
    assert (out / "fid.png").is_file() and "dit_tiny_2 tract" in (out / "fid.md").read_text()
    assert list(out.glob("fid_classifier-digits-*.safetensors"))  # the feature classifier is cached
    table = fid_table({"runs": {"a": {"label": "m", "steps": [1], "fid": [2.0]},
                                "b": {"label": "m", "steps": [1], "fid": [4.0]}}})
    assert "3 ± 1.4 (2)" in table


def test_bad_inputs(run_dir, tmp_path, capsys):
    assert main(["diffusion-sample", str(run_dir), "--step", "7"]) == 2
    assert "no checkpoint at step 7; available: [2, 4]" in capsys.readouterr().err
    assert main(["fid", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["diffusion-sample", str(run_dir), "--n", "0"]) == 2
    assert "n: must be >= 1" in capsys.readouterr().err


def test_feature_classifier_does_not_depend_on_the_global_rng(run_dir):
    import torch

    from tractable.experiments.diffusion.commands import _cfg, train_fid_classifier

    cfg = _cfg(run_dir)
    torch.manual_seed(1)
    a = train_fid_classifier(cfg, epochs=1, echo=lambda s: None)
    torch.manual_seed(2)
    b = train_fid_classifier(cfg, epochs=1, echo=lambda s: None)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
