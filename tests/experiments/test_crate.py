"""CRATE through the runner (TrAct on the patch-embedding Linear, 2-rank gloo DDP, kill -9 + resume), the
crate-measure / crate-attention commands, and the CRATE presets."""
import json

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tests.train.conftest import tiny_dict
from tests.train.test_distributed import _free_port, _steps, _weights, _worker
from tests.train.test_resume import assert_same_checkpoint, kill_and_resume
from tractable.cli.main import main as cli_main
from tractable.experiments.presets import list_presets, preset_config
from tractable.models import create_model
from tractable.models.crate import CRATE
from tractable.train import config_from_dict, config_to_dict, latest_checkpoint, train

CRATE_MODEL = {"name": "crate", "kwargs": {"patch_size": 4, "dim": 24, "depth": 2, "heads": 3}}
DATA = {"name": "synthetic", "kwargs": {"shape": [3, 8, 8], "num_classes": 4, "noise": 0.3},
        "subset": 96, "test_subset": 32, "batch_size": 32}


def _only(out):
    """The one result sub-folder (named after the options) of a crate-measure/crate-attention output directory."""
    (sub,) = [p for p in out.iterdir() if p.is_dir()]
    return sub


def crate_dict(tmp_path, name, **sections):
    data = {**DATA, **sections.pop("data", {})}
    d = tiny_dict(tmp_path, name, model=CRATE_MODEL, **sections)
    d["data"] = data
    return d


def test_runner_trains_a_tiny_crate_with_tract_on_its_patch_embedding(tmp_path):
    cfg = config_from_dict(crate_dict(tmp_path, "tract", method={"name": "tract", "l": 0.1},
                                      optim={"name": "adamw", "lr": 3e-3, "weight_decay": 0.05},
                                      schedule={"name": "cosine", "warmup_epochs": 0.5},
                                      train={"epochs": 3, "label_smoothing": 0.1}))
    res = train(cfg)
    model = res.model
    assert isinstance(model, CRATE)
    from tractable.tract import TrAct

    layer = model.get_submodule("to_patch_embedding.2")
    assert isinstance(layer, TrAct) or any(isinstance(m, TrAct) for m in model.modules()), type(layer)
    assert set(load_file(str(latest_checkpoint(res.run_dir / "checkpoints") / "model.safetensors"))) == \
        set(create_model("crate", num_classes=4, image_size=8, patch_size=4, dim=24, depth=2, heads=3).state_dict())
    assert res.summary["final_test_acc"] > 0.5  # 4 learnable classes: it trains


@pytest.mark.distributed
def test_crate_ddp_two_ranks_match_single_process(tmp_path):
    sections = dict(method={"name": "tract", "l": 0.1, "exact": True}, optim={"name": "sgd", "lr": 0.05},
                    train={"epochs": 1})
    ddp = crate_dict(tmp_path, "ddp", **sections)
    one = train(config_from_dict(crate_dict(tmp_path, "one", **sections)))
    mp.spawn(_worker, args=(2, _free_port(), [config_to_dict(config_from_dict(ddp))]), nprocs=2, join=True)
    s1, _ = _steps(one.run_dir)
    s2, _ = _steps(tmp_path / "ddp")
    assert len(s1) == len(s2) == 3
    for a, b in zip(s1, s2):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a, b)
    w1, w2 = _weights(one.run_dir), _weights(tmp_path / "ddp")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=0), k


def test_crate_sigkill_and_resume_is_bitwise(tmp_path):
    sections = dict(data={"subset": 160}, optim={"name": "adamw", "lr": 0.003, "weight_decay": 0.05},
                    method={"name": "tract", "l": 0.1}, schedule={"name": "cosine", "warmup_epochs": 1},
                    train={"epochs": 4, "save_every_steps": 3, "keep_checkpoints": 2})
    last_ref, last_run = kill_and_resume(
        tmp_path, config_from_dict(crate_dict(tmp_path, "ref", **sections)),
        config_from_dict(crate_dict(tmp_path, "run", **sections)),
        config_from_dict({**crate_dict(tmp_path, "run", **sections), "resume": True}), delay=0.1)
    assert last_run.name == "step_00000020"
    assert_same_checkpoint(last_ref, last_run)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crate_run")
    res = train(config_from_dict(crate_dict(tmp, "run", optim={"name": "adamw", "lr": 3e-3},
                                            train={"epochs": 2})))
    return res.run_dir


def test_crate_measure_command_writes_json_table_and_plot(trained_run, tmp_path, capsys):
    out = tmp_path / "m"
    assert cli_main(["crate-measure", str(trained_run), "--num", "16", "--batch-size", "8", "--out", str(out)]) == 0
    result = json.loads((_only(out) / "measure.json").read_text())
    assert result["dataset"] == "synthetic" and result["images"] == 16 and len(result["layers"]) == 2
    layer = result["layers"][0]
    assert layer["rc_mean"] > 0 and 0 <= layer["nonzero_mean"] <= 1
    assert (_only(out) / "measure.png").stat().st_size > 0 and "| layer |" in (_only(out) / "measure.md").read_text()


def test_crate_attention_command_writes_a_png_grid(trained_run, tmp_path):
    out = tmp_path / "a"
    assert cli_main(["crate-attention", str(trained_run), "synthetic:test:0,1,2", "--pca", "--out", str(out)]) == 0
    summary = json.loads((_only(out) / "attention.json").read_text())
    assert summary["grid"] == [2, 2] and summary["heads"] == 3 and len(summary["images"]) == 3
    assert (_only(out) / "attention.png").stat().st_size > 0


def test_commands_read_an_official_checkpoint_file(tmp_path):
    """A wrapped, module.-prefixed .pth with --model: the shape is read off the tensors; a wrong preset fails."""
    net = create_model("crate", num_classes=10, in_channels=1, image_size=8, patch_size=4, dim=24, depth=2, heads=3)
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    out = tmp_path / "m"
    assert cli_main(["crate-measure", str(path), "--model", "crate", "--model-kwargs",
                     '{"dim": 24, "depth": 2, "heads": 3, "patch_size": 4}', "--data", "digits", "--num", "8",
                     "--no-plot", "--out", str(out)]) == 0
    assert json.loads((_only(out) / "measure.json").read_text())["images"] == 8
    # a checkpoint of another size, and a file without --model: clear errors, exit status 2
    assert cli_main(["crate-measure", str(path), "--model", "crate_tiny", "--data", "digits", "--out", str(out)]) == 2
    assert cli_main(["crate-measure", str(path), "--data", "digits", "--out", str(out)]) == 2


def test_pretrained_and_resize_to_builder_options(tmp_path, gen):
    src = create_model("crate", num_classes=1000, image_size=16, patch_size=4, dim=24, depth=2, heads=3)
    path = tmp_path / "ck.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    with pytest.raises(ValueError, match="mlp_head.1.weight"):
        create_model("crate", num_classes=10, image_size=8, patch_size=4, dim=24, depth=2, heads=3,
                     resize_to=16, pretrained=str(path))
    m = create_model("crate", num_classes=10, image_size=8, patch_size=4, dim=24, depth=2, heads=3, resize_to=16,
                     pretrained=str(path), replace_head=True)
    assert torch.equal(m.transformer.layers[1][1].fn.weight, src.transformer.layers[1][1].fn.weight)
    x = torch.randn(2, 3, 8, 8, generator=gen)  # the data's size: upsampled to 16² inside
    with torch.no_grad():
        up = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
        torch.testing.assert_close(m(x), m(up))
    with pytest.raises(ValueError, match="replace_head=True needs pretrained"):
        create_model("crate", replace_head=True)


def test_crate_presets_validate():
    names = [n for n in list_presets() if n.startswith("crate")]
    assert {"crate_cifar10_finetune", "crate_cifar10_scratch", "crate_imagenet_paper",
            "crate_imagenet_readme"} <= set(names)
    for n in names:
        cfg = preset_config(n)
        assert cfg.model.name.startswith("crate")
        model = create_model(cfg.model.name, num_classes=10, in_channels=3, image_size=32, **cfg.model.kwargs)
        assert isinstance(model, CRATE)  # every preset's model kwargs are accepted
        if "cifar" in n:
            assert model.resize_to == (224, 224) and model.grid == (14, 14)
    paper = preset_config("crate_imagenet_paper")
    assert (paper.optim.name, paper.optim.lr, paper.optim.weight_decay, paper.data.batch_size) == ("lion", 2.4e-4, 0.5, 2048)
    assert paper.train.label_smoothing == 0.1 and paper.schedule.warmup_epochs == 5


def test_demo_section_runs_and_reports_sparsity(tmp_path, monkeypatch):
    from tractable.experiments import demo
    from tractable.experiments.crate import demo as crate_demo

    assert "tractable.experiments.crate.demo:crate_section" in demo.SECTIONS
    monkeypatch.setattr(crate_demo, "EPOCHS", 1)
    lines = []
    md = crate_demo.crate_section(seeds=1, root=tmp_path, echo=lines.append)
    assert md.startswith("### CRATE") and "| after 1 epochs |" in md and "exactly zero" in md
    assert (tmp_path / "crate-digits-s0" / "summary.json").is_file()


def test_mae_reconstruction_figure(tmp_path, gen):
    from tractable.experiments.crate.commands import mae_reconstruction_figure
    from tractable.models.crate_mae import CRATEMAE

    m = CRATEMAE(image_size=16, patch_size=4, in_channels=1, dim=16, depth=1, heads=2)
    p = mae_reconstruction_figure(m, torch.randn(2, 1, 16, 16, generator=gen), tmp_path / "rec.png")
    assert p.stat().st_size > 0
