"""The runner side: the ``subspace`` and ``swa`` rules, ``data.label_noise``, config errors, the commands."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import tractable.subspace as ts
from tests.train.conftest import tiny_dict
from tractable.train import ConfigError, Hook, config_from_dict, latest_checkpoint, train

BN_SECTIONS = dict(
    data={"name": "synthetic", "kwargs": {"shape": [1, 8, 8], "num_classes": 4, "noise": 0.3}, "subset": 128,
          "test_subset": 64, "batch_size": 32, "eval_batch_size": 64},
    model={"name": "small_cnn", "kwargs": {"widths": [8, 16]}},
    optim={"name": "sgd", "lr": 0.05, "momentum": 0.9},
)


def bn_cfg(tmp_path, name, method, **extra):
    sections = {k: dict(v) for k, v in BN_SECTIONS.items()}
    for k, v in extra.items():
        sections[k] = {**sections.get(k, {}), **v} if isinstance(v, dict) else v
    return config_from_dict(tiny_dict(tmp_path, name, method=method, **sections))


def test_subspace_rule_trains_a_line_and_reports_the_honest_midpoint(tmp_path):
    res = train(bn_cfg(tmp_path, "line", {"name": "subspace", "kind": "line", "beta": 1.0}))
    assert res.summary["method"] == "subspace(line, beta=1.0)"
    ckpt = latest_checkpoint(res.run_dir / "checkpoints")
    saved = load_file(str(ckpt / "model.safetensors"))
    assert saved["conv1.parametrizations.weight.original"].shape[0] == 2 and "conv1.weight" not in saved
    recs = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("subspace_cos2_mean" in r for r in recs if r["kind"] == "step")
    # rebuild from config + strict checkpoint load; the midpoint with recomputed BN gives the logged accuracy
    from tractable.experiments.subspace.evaluate import load_run

    run = load_run(res.run_dir)
    assert run.sub is not None and run.sub.kind == "line"
    mixture_mean = run.model.bn1.running_mean.clone()
    logits, labels = ts.evaluate_point(run.sub, 0.5, run.train_loader, run.test_loader)
    assert ts.accuracy(logits, labels) == pytest.approx(res.summary["final_test_acc"], abs=1e-12)
    assert ts.ece(logits, labels) == pytest.approx(res.summary["final_test"]["test_ece"], abs=1e-9)
    assert not torch.equal(mixture_mean, run.model.bn1.running_mean)  # the checkpoint kept the training stats


def test_simplex_layerwise_multi_sample_with_accumulation(tmp_path):
    cfg = config_from_dict(tiny_dict(tmp_path, "simplex", method={"name": "subspace", "kind": "simplex", "k": 3,
                                                                  "layerwise": True, "num_samples": 2},
                                     train={"grad_accum": 2, "epochs": 1}))
    res = train(cfg)
    assert res.summary["method"] == "subspace(simplex, k=3, beta=1.0, layerwise, samples=2)"
    assert math.isfinite(res.summary["final_test"]["test_loss"])


@pytest.mark.parametrize("method,match", [
    ({"name": "subspace", "kind": "plane"}, "accepted values: 'line', 'curve', 'simplex'"),
    ({"name": "subspace", "beta": -1}, "method.beta: must be >= 0"),
    ({"name": "subspace", "kind": "simplex", "k": 1}, "method.k: a simplex needs k >= 2"),
    ({"name": "subspace", "kind": "simplex"}, "method.k: a simplex needs k >= 2"),
    ({"name": "subspace", "kind": "line", "k": 3}, "method.k: only for method.kind=simplex"),
    ({"name": "subspace", "l": 0.2}, "unknown key 'method.l' for learning rule 'subspace'.*valid keys: name, kind"),
    ({"name": "swa", "swa_start": 1.0}, "method.swa_start"),
])
def test_bad_rule_options(tmp_path, method, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(tiny_dict(tmp_path, method=method))


def test_label_noise_is_a_fixed_saved_permutation(tmp_path):
    from tractable.data.label_noise import noisy_labels

    y = torch.arange(20000) % 10
    a, rec = noisy_labels(y, 0.2, 10, seed=3)
    b, _ = noisy_labels(y, 0.2, 10, seed=3)
    c, _ = noisy_labels(y, 0.2, 10, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert rec["indices"].numel() == 4000 == math.floor(20000 * 0.2)
    unchanged = int((rec["labels"] == rec["original"]).sum())
    assert abs(unchanged - 400) < 4 * math.sqrt(4000 * 0.1 * 0.9)  # about 1/C keep their class
    changed = (a != y).nonzero().flatten()
    assert set(changed.tolist()) <= set(rec["indices"].tolist())
    with pytest.raises(ConfigError, match="data.label_noise"):
        config_from_dict(tiny_dict(tmp_path, data={"label_noise": 1.5}))
    with pytest.raises(ValueError, match="data.label_noise"):
        noisy_labels(y, -0.1, 10)
    # through the runner: saved in the run directory, the same for every training seed
    runs = [train(config_from_dict(tiny_dict(tmp_path, f"n{s}", data={"label_noise": 0.25},
                                             train={"seed": s, "epochs": 1}))) for s in (0, 1)]
    saved = [torch.load(r.run_dir / "label_noise.pt", weights_only=True) for r in runs]
    assert torch.equal(saved[0]["indices"], saved[1]["indices"]) and saved[0]["indices"].numel() == 32
    assert torch.equal(saved[0]["labels"], saved[1]["labels"])


class _Snapshots(Hook):
    def __init__(self):
        self.snaps, self.lrs = [], []

    def after_backward(self, trainer):  # the lr the optimizer step uses
        self.lrs.append((trainer.epoch, trainer.optimizer.param_groups[0]["lr"]))

    def after_step(self, trainer):
        if trainer.batch_index == trainer.steps_per_epoch - 1:
            self.snaps.append((trainer.epoch, [p.detach().clone() for p in trainer.model.parameters()]))


def test_swa_rule_averages_epoch_ends_and_updates_bn(tmp_path):
    rec = _Snapshots()
    res = train(bn_cfg(tmp_path, "swa", {"name": "swa", "swa_start": 0.5, "swa_lr": 0.02}, train={"epochs": 4},
                       schedule={"name": "cosine"}), hooks=[rec])
    assert all(lr == 0.02 for e, lr in rec.lrs if e >= 2) and any(lr != 0.02 for e, lr in rec.lrs if e < 2)
    snaps = [s for e, s in rec.snaps if e >= 2]
    assert len(snaps) == 2
    mean = [sum(ps) / len(ps) for ps in zip(*snaps)]
    for p, m in zip(res.model.parameters(), mean):
        assert torch.allclose(p, m, atol=1e-6)
    # BN statistics: update_bn of the averaged weights over the (unaugmented) training set
    from torch.optim.swa_utils import update_bn

    from tractable.experiments.subspace.evaluate import load_run

    run = load_run(res.run_dir)
    ref = run.model
    before = ref.bn1.running_mean.clone()
    update_bn(run.train_loader, ref)
    assert torch.allclose(before, ref.bn1.running_mean, atol=1e-6)
    last = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["swa_n_averaged"] == 2 and "test_ece" in res.summary["final_test"]


def test_commands_subspace_eval_ensemble_eval_and_compare(tmp_path, capsys):
    from tractable.cli.main import main

    line = train(bn_cfg(tmp_path, "line", {"name": "subspace"}))
    std = [train(bn_cfg(tmp_path, f"std{s}", {"name": "normal"}, train={"seed": s})) for s in (0, 1)]
    rc = main(["subspace-eval", str(line.run_dir), "--standard", str(std[0].run_dir), "--ensemble",
               str(std[0].run_dir), str(std[1].run_dir), "--bn-batches", "1"])
    assert rc == 0
    res = json.loads((line.run_dir / "subspace_eval.json").read_text())
    assert len(res["points"]) == 21 and res["standard_ensemble"]["ensemble"]["acc"] >= 0
    assert (line.run_dir / "plots" / "subspace_line.png").stat().st_size > 1000
    out = tmp_path / "ens"
    assert main(["ensemble-eval", str(std[0].run_dir), str(std[1].run_dir), "--out", str(out)]) == 0
    assert main(["compare", str(line.run_dir), str(std[0].run_dir), str(out), "--no-plot"]) == 0
    table = capsys.readouterr().out
    assert "final test_ece" in table and "ens" in table
    assert main(["ensemble-eval", str(std[0].run_dir), "--out", str(tmp_path / "e1")]) == 2  # clear error
    simplex = train(bn_cfg(tmp_path, "simplex", {"name": "subspace", "kind": "simplex", "k": 3},
                           train={"epochs": 1}))
    assert main(["subspace-eval", str(simplex.run_dir), "--bn-batches", "1", "--heatmap-step", "0.5"]) == 0
    assert (simplex.run_dir / "plots" / "subspace_simplex.png").is_file()


def test_demo_section_reports_midpoint_and_endpoints(tmp_path, monkeypatch):
    from tractable.experiments.subspace import demo as subspace_demo

    monkeypatch.setitem(subspace_demo.BASE, "train", {**subspace_demo.BASE["train"], "epochs": 1, "eval_every": 1,
                                                      "save_every": 1})
    lines = []
    text = subspace_demo.demo_section(seeds=1, root=tmp_path, echo=lines.append)
    for label in ("standard training", "line midpoint (BN recomputed)", "line endpoint α=0", "line endpoint α=1"):
        assert f"| {label} |" in text
    assert text.startswith("### Subspaces") and "What this shows" in text
    assert lines == [text]


def test_subspace_rule_under_bf16_autocast(tmp_path):
    res = train(bn_cfg(tmp_path, "amp", {"name": "subspace", "kind": "curve"}, train={"amp": "bf16", "epochs": 1}))
    assert math.isfinite(res.summary["final_test"]["test_loss"])
    from tractable.experiments.subspace.evaluate import load_run

    run = load_run(res.run_dir)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reg = run.sub.regularizer(1.0, generator=torch.Generator().manual_seed(0))
    assert reg.dtype == torch.float32  # accumulated in float32 under autocast


@pytest.mark.slow
def test_digits_with_label_noise_midpoint_needs_its_own_bn(tmp_path):
    """Spec test 18: digits, 20 % label noise, a BN CNN line; the midpoint with recomputed statistics clearly beats
    the midpoint with the training-time (mixture) statistics."""
    from tractable.experiments.subspace import demo as subspace_demo
    from tractable.experiments.subspace.evaluate import load_run
    from tractable.train.config import apply_overrides

    accs = {"recomputed": [], "mixture": []}
    for s in range(2):
        cfg = apply_overrides(subspace_demo.BASE, [f"train.seed={s}", f"out_dir={tmp_path}", f"name=l{s}",
                                                   "method.name=subspace", "data.label_noise=0.2"])
        run = load_run(train(config_from_dict(cfg)).run_dir)
        run.sub.set_point(0.5)
        accs["mixture"].append(ts.accuracy(*ts.predict(run.model, run.test_loader)))
        accs["recomputed"].append(ts.accuracy(*ts.evaluate_point(run.sub, 0.5, run.train_loader, run.test_loader)))
    assert sum(accs["recomputed"]) / 2 > sum(accs["mixture"]) / 2 + 0.02, accs


def test_a_model_passed_to_train_gets_endpoints_from_reset_parameters(tmp_path):
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    res = train(config_from_dict(tiny_dict(tmp_path, "given", method={"name": "subspace"}, train={"epochs": 1})),
                model=model)
    assert res.model is model
    w0, w1 = model[1].parametrizations.weight.original
    assert not torch.allclose(w0, w1)  # independent initialisations, not copies
    # the factory's draws never repeat the model's own initialisation (convert refuses identical endpoints)
    from tractable.experiments.subspace.rules import reinit_factory

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    torch.manual_seed(0)
    fresh = reinit_factory(plain)()
    assert not torch.allclose(fresh[1].weight, plain[1].weight)


def test_point_and_pair_streams_never_share_a_seed(tmp_path, monkeypatch):
    """Under grad_accum the point of micro-batch j and the regulariser's pair come from different salts."""
    from tractable.experiments.subspace import rules
    from tractable.train.loop import Trainer

    salts = []
    original = Trainer.generator

    def record(self, salt=0, device="cpu"):
        salts.append((self.step, salt))
        return original(self, salt, device)

    monkeypatch.setattr(Trainer, "generator", record)
    train(config_from_dict(tiny_dict(tmp_path, "curve", method={"name": "subspace", "kind": "curve"},
                                     train={"grad_accum": 4, "epochs": 1})))
    point = {s for _, s in salts if s != rules._SALT_PAIR}
    pair = {s for _, s in salts if s == rules._SALT_PAIR}
    assert len(point) == 4 and pair and not point & pair
    per_step = {}
    for step, s in salts:
        per_step.setdefault(step, []).append(s)
    assert all(len(set(v)) == 5 for v in per_step.values())  # 4 point streams and the pair stream, all distinct


def test_ema_is_evaluated_at_the_midpoint_with_its_own_statistics(tmp_path):
    """train.ema with a subspace: the EMA copy's stored points are averaged and evaluated at the midpoint with
    their own recomputed BatchNorm statistics (not at endpoint 0 with the EMA'd training statistics)."""
    from tractable.experiments.subspace.evaluate import load_run

    res = train(bn_cfg(tmp_path, "ema", {"name": "subspace"}, train={"ema": 0.8}))
    final = res.summary["final_ema_test"]
    run = load_run(res.run_dir)
    state = torch.load(latest_checkpoint(res.run_dir / "checkpoints") / "state.pt", weights_only=True)
    run.model.load_state_dict(state["ema"]["module"], strict=True)
    ref = ts.classification_metrics(*ts.evaluate_point(run.sub, 0.5, run.train_loader, run.test_loader))
    assert final["ema_test_loss"] == pytest.approx(ref["nll"], rel=1e-5)
    run.model.load_state_dict(state["ema"]["module"], strict=True)  # the EMA'd training statistics again
    run.sub.set_point(0.0)
    old = ts.classification_metrics(*ts.predict(run.model, run.test_loader))
    assert abs(old["nll"] - ref["nll"]) > 1e-4  # what the EMA reported before: a different network


def test_bn_every_recomputes_at_every_nth_and_the_last_evaluation_and_the_cache_is_checkpointed(tmp_path):
    from tractable.experiments.subspace.evaluate import load_run

    res = train(bn_cfg(tmp_path, "every", {"name": "subspace", "bn_every": 2},
                       train={"epochs": 4, "eval_every": 1, "save_every": 4}))
    recs = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["subspace_bn_recomputed"] for r in recs if r["kind"] == "epoch"] == [1.0, 0.0, 1.0, 1.0]
    ckpt = latest_checkpoint(res.run_dir / "checkpoints")
    rule_state = torch.load(ckpt / "state.pt", weights_only=True)["extra"]["rule"]
    assert rule_state["evaluations"] == 4 and rule_state["bn_cache_step"] == int(ckpt.name.split("_")[1])
    run = load_run(res.run_dir)
    run.sub.load_bn_cache_state(rule_state["bn_cache"])
    assert run.sub.has_bn(0.5)
    run.sub.load_bn(0.5)
    cached = run.model.bn1.running_mean.clone()
    run.sub.recompute_bn(run.train_loader)
    assert torch.allclose(cached, run.model.bn1.running_mean, atol=1e-6)
    with pytest.raises(ConfigError, match="method.bn_every"):
        config_from_dict(tiny_dict(tmp_path, method={"name": "subspace", "bn_every": 0}))
