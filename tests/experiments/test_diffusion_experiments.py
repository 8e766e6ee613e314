"""``tractable diffusion-sample`` and ``tractable fid`` on a tiny diffusion run: PNG grid named after every sampling
option, FID JSON/table/plot, --device/--batch-size plumbing, the EMA (exported, with a note before it warms up),
the classifier-free-guidance guard, bad inputs."""
import json

import pytest
import torch

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
    png = run_dir / "samples" / "ddim3-trailing-steplast-s1-n6.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    # options that change the images change the name: nothing is written over
    for extra, name in ((["--eta", "0.5"], "ddim3-trailing-eta0.5-steplast-s1-n6.png"),
                        (["--no-ema"], "ddim3-trailing-noema-steplast-s1-n6.png"),
                        (["--spacing", "leading", "--batch-size", "4"], "ddim3-leading-steplast-s1-n6.png")):
        assert main(["diffusion-sample", str(run_dir), "--n", "6", "--steps", "3", "--seed", "1", *extra]) == 0
        assert (run_dir / "samples" / name).is_file(), name
    assert len(list((run_dir / "samples").glob("*.png"))) == 4
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
    assert main(["fid", str(run_dir), "--n", "40", "--steps", "3", "--out", str(out), "--device", "cpu",
                 "--batch-size", "16", "--n-ref", "100"]) == 0
    res = json.loads((out / "fid.json").read_text())
    assert res["device"] == "cpu" and res["spacing"] == "trailing"
    entry = res["runs"][str(run_dir)]
    assert entry["steps"] == [s for s, _ in checkpoint_steps(run_dir)] == [2, 4]
    assert all(f > 0 for f in entry["fid"])
    assert (out / "fid.png").is_file() and "dit_tiny_2 tract" in (out / "fid.md").read_text()
    assert list(out.glob("fid_classifier-digits-*.safetensors"))  # the feature classifier is cached
    table = fid_table({"runs": {"a": {"label": "m", "steps": [1], "fid": [2.0]},
                                "b": {"label": "m", "steps": [1], "fid": [4.0]}}})
    assert "3 ± 1.4 (2)" in table


def test_device_and_batch_size_plumbing(run_dir, monkeypatch, capsys):
    import torch

    from tractable.experiments.diffusion import commands

    seen = []
    real = commands.sample

    def spy(*args, **kwargs):
        seen.append((kwargs["device"], kwargs["batch_size"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(commands, "sample", spy)
    commands.fid_over_checkpoints([run_dir], n=10, steps=2, device="cpu", batch_size=3, n_ref=50, every=2,
                                  echo=lambda s: None)
    assert seen and all(d == torch.device("cpu") and b == 3 for d, b in seen)
    model, diffusion, info, _ = load_run(run_dir)
    a = sample(model, diffusion, info, 7, steps=3, seed=2, batch_size=7)
    b = sample(model, diffusion, info, 7, steps=3, seed=2, batch_size=7, device="cpu")
    assert a.equal(b)
    if not torch.cuda.is_available():
        assert main(["fid", str(run_dir), "--device", "cuda"]) == 2
        assert "--device: 'cuda' asked for, but CUDA is not available" in capsys.readouterr().err
    assert main(["fid", str(run_dir), "--device", "banana"]) == 2
    assert "--device: 'banana' is not a device" in capsys.readouterr().err
    assert main(["diffusion-sample", str(run_dir), "--batch-size", "0"]) == 2
    assert "--batch-size: must be >= 1" in capsys.readouterr().err


def test_ema_is_exported_and_used(run_dir, capsys):
    from safetensors.torch import load_file

    last = checkpoint_steps(run_dir)[-1][1]
    exported = load_file(str(last / "ema.safetensors"))
    model, *_ = load_run(run_dir, echo=lambda s: None)
    for k, v in model.state_dict().items():
        assert torch.equal(v, exported[k]), k
    raw, *_ = load_run(run_dir, ema=False)
    assert any(not torch.equal(v, exported[k]) for k, v in raw.state_dict().items())


def test_ema_note_before_warm_up(tmp_path):
    d = diffusion_dict(tmp_path, "cold", ema=0.99, ema_warmup=False, save_every=0)
    d["data"].update(subset=64, test_subset=32)
    run = train(config_from_dict(d)).run_dir
    notes = []
    load_run(run, echo=notes.append)
    assert len(notes) == 1 and "the initial weights still make" in notes[0] and "no warm-up" in notes[0]
    d = diffusion_dict(tmp_path, "warm", save_every=0)  # train.ema unset: DiT's 0.9999 with the warm-up
    d["data"].update(subset=64, test_subset=32)
    run = train(config_from_dict(d)).run_dir
    notes = []
    load_run(run, echo=notes.append)
    assert notes == []


def test_guidance_needs_a_trained_null_label(tmp_path, run_dir, capsys):
    assert main(["diffusion-sample", str(run_dir), "--guidance", "2"]) == 2
    assert "needs a class-conditional model" in capsys.readouterr().err
    runs = {}
    for name, drop in (("nodrop", 0.0), ("default", None)):
        d = diffusion_dict(tmp_path, name, save_every=0)
        d["data"].update(subset=64, test_subset=32)
        d["model"]["kwargs"] = {"class_cond": True}
        if drop is not None:
            d["task_kwargs"]["cond_drop"] = drop
        runs[name] = train(config_from_dict(d)).run_dir
    assert main(["diffusion-sample", str(runs["nodrop"]), "--guidance", "1.5", "--n", "2", "--steps", "2"]) == 2
    assert "task_kwargs.cond_drop=0, so its null embedding is untrained" in capsys.readouterr().err
    assert main(["diffusion-sample", str(runs["default"]), "--guidance", "1.5", "--n", "2", "--steps", "2"]) == 0
    assert (runs["default"] / "samples" / "ddim2-trailing-cfg1.5-steplast-s0-n2.png").is_file()


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
