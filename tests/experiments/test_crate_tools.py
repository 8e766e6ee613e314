"""CRATE-MAE through the runner (run, reconstruction PNGs, resume), the linear probe, the white-box commands on a
generated ImageFolder tree, subspace runs at --alpha, measurement over training, and every released checkpoint
layout loading strictly with its builder."""
import argparse
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.experiments.test_crate import crate_dict
from tractable.cli.main import main as cli_main
from tractable.models import create_model
from tractable.models.crate_pretrained import PRETRAINED, load_pretrained, match_pretrained, pretrained_table
from tractable.train import config_from_dict, latest_checkpoint, list_checkpoints, train
from tractable.train.config import ConfigError

MAE = {"name": "mae_crate_tiny", "kwargs": {"patch_size": 4, "depth": 1, "decoder_depth": 1}}


def _one(out, name):
    """The results file ``name`` in the one options sub-folder a command wrote under ``out``."""
    found = sorted(out.rglob(name))
    assert len(found) == 1, found
    return found[0]


def mae_dict(tmp_path, name, **train_kw):
    d = crate_dict(tmp_path, name, task="masked_autoencoding", task_kwargs={"recon_images": 2},
                   data={"subset": 64, "batch_size": 16}, optim={"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
                   train={"epochs": 2, "eval_every": 2, **train_kw})
    d["model"] = MAE
    return d


def test_mae_pretraining_run_writes_reconstructions_and_resumes_bitwise(tmp_path):
    ref = train(config_from_dict(mae_dict(tmp_path / "a", "r", save_every_steps=2, keep_checkpoints=10)))
    assert ref.summary["task"] == "masked_autoencoding" and len(ref.summary["test_loss"]) == 1
    pngs = sorted(p.name for p in (ref.run_dir / "plots").glob("reconstruction_step*.png"))
    assert pngs == ["reconstruction_step00000008.png"]
    a = load_file(str(latest_checkpoint(ref.run_dir / "checkpoints") / "model.safetensors"))
    # the same run as it was had it stopped after step 2, resumed with the same config
    run = ref.run_dir
    for ck in list_checkpoints(run / "checkpoints"):
        if int(ck.name.split("_")[1]) > 2:
            shutil.rmtree(ck)
    (run / "checkpoints" / "latest").write_text("step_00000002")
    (run / "summary.json").unlink()
    train(config_from_dict({**mae_dict(tmp_path / "a", "r", save_every_steps=2, keep_checkpoints=10), "resume": True}))
    b = load_file(str(latest_checkpoint(run / "checkpoints") / "model.safetensors"))
    assert latest_checkpoint(run / "checkpoints").name == "step_00000008"
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mae_model_under_the_classification_task_is_a_config_error(tmp_path):
    cfg = mae_dict(tmp_path, "bad")
    cfg["task"] = "classification"
    del cfg["task_kwargs"]
    with pytest.raises(ConfigError, match="task=masked_autoencoding"):
        train(config_from_dict(cfg))
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def crate_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crate_tools")
    res = train(config_from_dict(crate_dict(tmp, "run", optim={"name": "adamw", "lr": 3e-3},
                                            train={"epochs": 2, "save_every": 1})))
    return res.run_dir


def test_linear_probe_on_a_tiny_run(crate_run, tmp_path):
    out = tmp_path / "lp"
    assert cli_main(["linear-probe", str(crate_run), "--train-num", "96", "--test-num", "32", "--out", str(out)]) == 0
    res = json.loads((_one(out, "probe.json")).read_text())
    assert res["dim"] == 24 and res["train_n"] == 96 and res["test_n"] == 32 and res["test_acc"] > 0.5
    assert "| crate | synthetic | 24 |" in (_one(out, "probe.md")).read_text()
    assert cli_main(["linear-probe", str(crate_run), "--train-num", "3", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_fit_logistic_separable_and_random_labels(gen):
    from tractable.experiments.crate.probe import fit_logistic

    X = torch.randn(400, 5, generator=gen)
    y = (X[:, 0] > 0).long() + 2 * (X[:, 1] > 0).long()
    res = fit_logistic(X[:300], y[:300], X[300:], y[300:])
    assert res["test_acc"] > 0.85 and res["l2"] in res["val_acc"]
    noise = torch.randint(0, 4, (400,), generator=gen)
    assert fit_logistic(X[:300], noise[:300], X[300:], noise[300:])["test_acc"] < 0.45


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def _image_tree(root, sizes=((20, 24), (16, 16), (30, 18))):
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    for c in ("cat", "dog"):
        (root / "val" / c).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / "val" / c / f"{i}.png")
    return root


def test_white_box_commands_stream_a_generated_imagefolder(tmp_path, monkeypatch):
    """imagefolder/imagenet datasets have no in-memory arrays: the commands read items one at a time."""
    from tractable.data.imagefolder import ImageFolderDataset

    root = _image_tree(tmp_path / "data")
    net = create_model("crate", num_classes=2, image_size=8, patch_size=4, dim=24, depth=2, heads=3)
    ck = tmp_path / "ck.pth"
    torch.save({"state_dict": net.state_dict()}, ck)
    reads = []
    orig = ImageFolderDataset.__getitem__
    monkeypatch.setattr(ImageFolderDataset, "__getitem__", lambda self, i: reads.append(i) or orig(self, i))
    out = tmp_path / "m"
    args = ["--model", "crate", "--model-kwargs", '{"dim": 24, "depth": 2, "heads": 3, "patch_size": 4}',
            "--data-dir", str(root)]
    assert cli_main(["crate-measure", str(ck), *args, "--data", "imagefolder", "--num", "4", "--batch-size", "3",
                     "--no-plot", "--out", str(out)]) == 0
    res = json.loads((_one(out, "measure.json")).read_text())
    assert res["images"] == 4 and len(reads) == 4 and sorted(reads) == [0, 2, 3, 5]  # spread over both classes
    reads.clear()
    assert cli_main(["crate-attention", str(ck), *args, "imagefolder:val:0,4", "--pca", "--out",
                     str(tmp_path / "a")]) == 0
    summary = json.loads((_one(tmp_path / "a", "attention.json")).read_text())
    assert summary["grid"] == [2, 2] and len(summary["images"]) == 2 and sorted(reads) == [0, 4]


def test_measure_over_training_and_subspace_alpha(crate_run, tmp_path):
    out = tmp_path / "ot"
    assert cli_main(["crate-measure", str(crate_run), "--over-training", "--num", "8", "--out", str(out)]) == 0
    res = json.loads((_one(out, "over_training.json")).read_text())
    assert [r["step"] for r in res["checkpoints"]] == [3, 6]
    assert set(res["checkpoints"][0]["splits"]) == {"train", "test"}
    assert len(res["checkpoints"][1]["splits"]["train"]) == 2 and (_one(out, "over_training.png")).stat().st_size > 0

    sub = train(config_from_dict(crate_dict(tmp_path, "line", method={"name": "subspace", "kind": "line"},
                                            optim={"name": "adamw", "lr": 3e-3}, train={"epochs": 1})))
    assert cli_main(["crate-measure", str(sub.run_dir), "--num", "8", "--no-plot", "--out", str(tmp_path / "s")]) == 2
    vals = {}
    for a in ("0", "1"):
        assert cli_main(["crate-measure", str(sub.run_dir), "--alpha", a, "--num", "8", "--no-plot", "--out",
                         str(tmp_path / f"s{a}")]) == 0
        vals[a] = json.loads((_one(tmp_path / f"s{a}", "measure.json")).read_text())["layers"][0]["rc_mean"]
    assert vals["0"] != vals["1"]  # two different endpoints
    with pytest.raises(SystemExit):
        cli_main(["crate-measure", str(sub.run_dir), "--alpha", "1.5"])


def _fake(model, gen):
    return {k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("tag", list(PRETRAINED))
def test_every_released_layout_loads_strictly_with_its_builder(tag, tmp_path, gen):
    """A file written in the layout of each released checkpoint (one layer, so the test is quick) loads strictly
    with the table's builder and options; the keys the table drops are named, and nothing else is dropped."""
    p = PRETRAINED[tag]
    small = {"depth": 1, **({"decoder_depth": 1} if p.builder.startswith("mae") else {})}
    src = create_model(p.builder, **{**p.kwargs, **small})
    sd = _fake(src, gen)
    body = {f"module.{k}": v for k, v in sd.items()} if p.wrapper == "state_dict" else dict(sd)
    for prefix in p.drop_keys:
        body[prefix + "weight"] = torch.randn(7, 3, generator=gen)
        body[prefix + "bias"] = torch.randn(7, generator=gen)
    blob = {p.wrapper: body, "epoch": 1}
    if p.builder.startswith("mae"):
        blob["args"] = argparse.Namespace(model="mae_crate_base", lr=None)  # the MAE codebase stores its args
    path = tmp_path / (p.file or "checkpoint.pth")
    torch.save(blob, path)
    m = load_pretrained(tag, path, **small)
    assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    if "lam" in p.kwargs:
        first_ista = m.crate_layers()[0][1].fn
        assert first_ista.lam == p.kwargs["lam"]
    if p.file is not None:
        assert match_pretrained(path) is p
    if p.drop_keys:  # without the table the extra keys are an error that names them
        from tractable.models.crate import load_crate_checkpoint

        with pytest.raises(ValueError, match="unexpected keys \\(2\\): head.weight, head.bias"):
            load_crate_checkpoint(create_model(p.builder, **{**p.kwargs, **small}), path)
    assert f"`{tag}`" in pretrained_table()


def test_mae_lambda_is_checked_against_the_file_name(tmp_path, gen):
    src = create_model("mae_crate_tiny", depth=1, decoder_depth=1, lam=5.0)
    path = tmp_path / "crate-mae-tiny-lmd5.0-checkpoint-1.pth"
    torch.save({"model": src.state_dict()}, path)
    with pytest.raises(ValueError, match="λ = 5 .*pass lam=5"):
        create_model("mae_crate_tiny", depth=1, decoder_depth=1, pretrained=str(path))
    m = create_model("mae_crate_tiny", depth=1, decoder_depth=1, lam=5.0, pretrained=str(path))
    assert m.crate_layers()[0][1].fn.lam == 5.0
