"""A user's results are never replaced, mixed or misreported, and bad input is a one-line error (rc 2) before any
work: each case a new user hit, as a command-line call."""
import json
import os

import pytest
import torch
import yaml

from tests.experiments.test_crate import crate_dict
from tests.train.conftest import tiny_dict
from tests.train.test_diffusion_task import diffusion_dict
from tractable.cli.main import main
from tractable.train import config_from_dict, latest_checkpoint, train
from tractable.train.outputs import MARKER, check_output_dir, claim_output_dir, merge_summary, option_slug


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    out = {}
    out["digits"] = train(config_from_dict(tiny_dict(tmp, "digits", data={"name": "digits", "subset": 200,
                                                                           "test_subset": 64, "kwargs": {}},
                                                     train={"epochs": 1}))).run_dir
    out["digits2"] = train(config_from_dict(tiny_dict(tmp, "digits2", data={"name": "digits", "subset": 200,
                                                                             "test_subset": 64, "kwargs": {}},
                                                      train={"epochs": 1, "seed": 1}))).run_dir
    out["synthetic"] = train(config_from_dict(tiny_dict(tmp, "synthetic", train={"epochs": 1}))).run_dir
    out["crate"] = train(config_from_dict(crate_dict(tmp, "crate", train={"epochs": 1}))).run_dir
    out["line"] = train(config_from_dict(tiny_dict(tmp, "line", method={"name": "tract+subspace"},
                                                   train={"epochs": 1}))).run_dir
    d = diffusion_dict(tmp, "diff", epochs=1)
    d["data"].update(subset=64, test_subset=32)
    out["diffusion"] = train(config_from_dict(d)).run_dir
    return out


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _err(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def _one_line_error(capsys, argv, *needles):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own argument errors
        rc = e.code
    assert rc == 2
    err = _err(capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 or lines[-1].startswith(("tractable", "usage")), err
    for n in needles:
        assert n in err, (n, err)
    return err


# -- the helper --------------------------------------------------------------------------------------------

def test_output_helper_owns_refuses_and_reuses(tmp_path, runs):
    with pytest.raises(FileExistsError, match="holds a training run"):
        check_output_dir(runs["digits"], "fid")
    d = claim_output_dir(tmp_path / "new", "fid")
    assert json.loads((d / MARKER).read_text()) == {"command": "fid"}
    (d / "fid.json").write_text("{}")
    assert claim_output_dir(d, "fid") == d  # its own results: reused
    with pytest.raises(FileExistsError, match=r"holds the results of `tractable fid`"):
        check_output_dir(d, "crate-measure")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="files that are not results"):
        check_output_dir(tmp_path / "user", "fid")
    assert option_slug({"ddim": 50, "eta": 0.0, "x": None, "imgs": ["a.png"]}, hashed=("imgs",)).startswith(
        "ddim50-eta0-")
    assert option_slug({"imgs": ["a"]}, hashed=("imgs",)) != option_slug({"imgs": ["b"]}, hashed=("imgs",))
    old = {"runs": [{"id": "a", "v": 1}, {"id": "b", "v": 2}]}
    assert merge_summary(old, {"runs": [{"id": "b", "v": 3}]})["runs"] == [{"id": "a", "v": 1}, {"id": "b", "v": 3}]


# -- data loss ---------------------------------------------------------------------------------------------

def test_fid_and_crate_measure_never_write_into_a_training_run(runs, capsys):
    before = _snapshot(runs["crate"])
    _one_line_error(capsys, ["fid", str(runs["diffusion"]), "--n", "8", "--steps", "2", "--out", str(runs["crate"])],
                    "holds a training run", "--out")
    _one_line_error(capsys, ["crate-measure", str(runs["crate"]), "--num", "8", "--out", str(runs["digits"])],
                    "holds a training run")
    _one_line_error(capsys, ["crate-attention", str(runs["crate"]), "synthetic:test:0", "--out",
                             str(runs["digits"])], "holds a training run")
    assert _snapshot(runs["crate"]) == before


def test_fa_audit_never_writes_into_a_training_run(runs, capsys):
    before = _snapshot(runs["digits"])
    _one_line_error(capsys, ["fa-audit", "--quick", "--archs", "resmlp", "--methods", "bp", "--seeds", "42",
                             "--no-baselines", "--no-penalty", "--out", str(runs["digits"])], "holds a training run")
    assert _snapshot(runs["digits"]) == before


def test_crate_measure_and_attention_keep_earlier_outputs_when_an_option_changes(runs, tmp_path, capsys):
    out = tmp_path / "m"
    for mode in ("official", "paper"):
        assert main(["crate-measure", str(runs["crate"]), "--num", "8", "--batch-size", "8", "--mode", mode,
                     "--no-plot", "--out", str(out)]) == 0
    results = sorted(out.glob("*/measure.json"))
    assert len(results) == 2
    assert {json.loads(p.read_text())["mode"] for p in results} == {"official", "paper"}
    att = tmp_path / "a"
    for thr in ("0.6", "0.9"):
        assert main(["crate-attention", str(runs["crate"]), "synthetic:test:0,1", "--threshold", thr,
                     "--out", str(att)]) == 0
    assert main(["crate-attention", str(runs["crate"]), "synthetic:test:2", "--out", str(att)]) == 0
    found = sorted(att.glob("*/attention.json"))
    assert len(found) == 3
    assert {tuple(json.loads(p.read_text())["images"]) != () for p in found} == {True}


def test_diffusion_sample_names_encode_every_option(runs, capsys):
    run = runs["diffusion"]
    for extra in ([], ["--eta", "0.5"], ["--spacing", "leading"], ["--n", "3"], ["--no-ema"]):
        assert main(["diffusion-sample", str(run), "--n", "2", "--steps", "2", *extra] if "--n" not in extra else
                    ["diffusion-sample", str(run), "--steps", "2", *extra]) == 0
    pngs = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert len(pngs) == 5, pngs
    capsys.readouterr()
    mine = run / "samples" / "mine.png"
    mine.write_bytes(b"user's picture")
    _one_line_error(capsys, ["diffusion-sample", str(run), "--n", "2", "--steps", "2", "--out", str(mine)],
                    "exists")
    assert mine.read_bytes() == b"user's picture"


def test_ensemble_eval_and_compare_refuse_runs_on_other_data(runs, tmp_path, capsys):
    _one_line_error(capsys, ["ensemble-eval", str(runs["digits"]), str(runs["synthetic"]), "--out",
                             str(tmp_path / "ens")], "not trained on the same data", "dataset 'digits' vs 'synthetic'")
    assert not (tmp_path / "ens").exists()
    _one_line_error(capsys, ["compare", str(runs["digits"]), str(runs["synthetic"]), "--no-plot"],
                    "not trained on the same data")
    _one_line_error(capsys, ["ensemble-eval", str(runs["digits"]), str(runs["crate"]), "--out",
                             str(tmp_path / "ens")], "not trained on the same data")
    assert main(["ensemble-eval", str(runs["digits"]), str(runs["digits2"]), "--out", str(tmp_path / "ens")]) == 0
    assert json.loads((tmp_path / "ens" / MARKER).read_text())["command"] == "ensemble-eval"


def test_compare_reports_the_lowest_ece_and_loss_as_best(runs, tmp_path, capsys):
    d = tmp_path / "ece"
    d.mkdir()
    (d / "config.yaml").write_text((runs["digits"] / "config.yaml").read_text())
    recs = [{"kind": "epoch", "epoch": 1, "test_acc": 0.5, "test_loss": 2.0, "test_ece": 0.30, "test_tv": 0.1},
            {"kind": "epoch", "epoch": 2, "test_acc": 0.7, "test_loss": 1.0, "test_ece": 0.05, "test_tv": 0.4}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["compare", str(d), "--no-plot"]) == 0
    table = capsys.readouterr().out
    rows = {ln.split("|")[1].strip(): ln.split("|")[2].strip() for ln in table.splitlines() if ln.startswith("| ")}
    assert rows["best test_ece (lowest)"] == "0.05" and rows["best test_loss (lowest)"] == "1"
    assert rows["best test_acc (highest)"] == "0.7"
    assert not any(k.startswith("best test_tv") for k in rows)  # no direction declared: no "best"


def test_every_logged_metric_declares_its_direction(runs, tmp_path):
    from tractable.train import read_metrics
    from tractable.train.directions import METRIC_DIRECTIONS, _base, metric_direction

    keys = set()
    for d in runs.values():
        keys |= {k for r in read_metrics(d) if r.get("kind") == "epoch" for k in r
                 if k.startswith(("test_", "train_", "ema_test_"))}
    assert {"test_acc", "test_loss", "test_ece", "train_loss"} <= keys
    undeclared = [k for k in keys if _base(k) not in METRIC_DIRECTIONS]
    assert undeclared == []
    assert (metric_direction("test_ece"), metric_direction("ema_test_acc"), metric_direction("test_tv")) == (
        "min", "max", None)


# -- one-line errors ----------------------------------------------------------------------------------------

def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_damaged_checkpoints_are_one_line_errors(runs, tmp_path, capsys):
    run = _copy_run(runs["crate"], tmp_path / "crate")
    ckpt = latest_checkpoint(run / "checkpoints")
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[:40])
    _one_line_error(capsys, ["crate-measure", str(run), "--num", "8"], str(w), "not a readable safetensors file")
    text = tmp_path / "notes.pth"
    text.write_text("these are my notes\n")
    err = _one_line_error(capsys, ["crate-measure", str(text), "--model", "crate_tiny", "--num", "8"], str(text),
                          "a text file")
    assert "weights_only=False" not in err
    diff = _copy_run(runs["diffusion"], tmp_path / "diff")
    state = latest_checkpoint(diff / "checkpoints") / "state.pt"
    state.write_bytes(b"\x80garbage" * 10)
    _one_line_error(capsys, ["diffusion-sample", str(diff), "--n", "2", "--steps", "2"], str(state),
                    "not a readable PyTorch checkpoint")
    state.write_bytes(state.read_bytes()[:3])
    assert main(["diffusion-sample", str(diff), "--n", "2", "--steps", "2"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_wrong_model_for_a_checkpoint_and_wrong_task_are_one_line_errors(runs, capsys):
    ckpt = latest_checkpoint(runs["crate"] / "checkpoints") / "model.safetensors"
    _one_line_error(capsys, ["crate-measure", str(ckpt), "--model", "crate_small", "--data", "synthetic",
                             "--num", "8"], "another CRATE", "--model")
    _one_line_error(capsys, ["subspace-eval", str(runs["diffusion"]), "--no-plot"], "task 'diffusion'",
                    "classification")
    _one_line_error(capsys, ["fid", str(runs["digits"]), "--n", "8"], "task 'classification'", "not a diffusion run")


def test_device_and_image_and_argument_errors_before_any_work(runs, tmp_path, capsys):
    if not torch.cuda.is_available():
        _one_line_error(capsys, ["diffusion-sample", str(runs["diffusion"]), "--device", "cuda"], "--device",
                        "CUDA is not available")
        _one_line_error(capsys, ["subspace-eval", str(runs["digits"]), "--device", "cuda"], "CUDA is not available")
    not_image = tmp_path / "cat.png"
    not_image.write_text("not a picture")
    _one_line_error(capsys, ["crate-attention", str(runs["crate"]), str(not_image), "--out", str(tmp_path / "a")],
                    str(not_image), "not an image file")
    _one_line_error(capsys, ["crate-attention", str(runs["crate"]), "synthetic:test:0", "--threshold", "-0.5"],
                    "--threshold", "[0, 1]")
    out = tmp_path / "fid-out"
    _one_line_error(capsys, ["fid", str(runs["diffusion"]), "--n", "-1", "--out", str(out)], "--n")
    assert not out.exists()  # checked before the feature classifier is trained or --out is created
    _one_line_error(capsys, ["demo", "--seeds", "0"], "--seeds", ">= 1")
    _one_line_error(capsys, ["compare", str(tmp_path)], "is not a run directory")
    err = _one_line_error(capsys, ["fid", str(runs["diffusion"]), "--bogus"], "unrecognized arguments: --bogus")
    assert "tractable fid" in err  # the subcommand's usage, not the top-level one


def test_resume_of_a_missing_run_is_an_error(tmp_path, capsys):
    _one_line_error(capsys, ["train", "--preset", "smoke", f"out_dir={tmp_path}", "name=nope", "resume=true"],
                    "does not exist", "nothing to resume")
    assert not (tmp_path / "nope").exists()


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    from safetensors.torch import load_file

    def tiny_cfg(name, **kw):
        return config_from_dict(tiny_dict(tmp_path, name, **kw))

    sections = dict(train={"epochs": 2, "save_every_steps": 2, "keep_checkpoints": 5},
                    optim={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    ref = train(tiny_cfg("ref", **sections))
    run = train(tiny_cfg("run", **sections))
    ckpts = sorted((run.run_dir / "checkpoints").glob("step_*"))
    latest = latest_checkpoint(run.run_dir / "checkpoints")
    assert latest == ckpts[-1] and len(ckpts) >= 2
    w = latest / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    os.remove(run.run_dir / "summary.json")
    with pytest.warns(UserWarning, match=r"not a readable safetensors file.*previous complete checkpoint"):
        res = train(tiny_cfg("run", resume=True, **sections))
    a = load_file(str(latest_checkpoint(ref.run_dir / "checkpoints") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(res.run_dir / "checkpoints") / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["name"] == "run"
