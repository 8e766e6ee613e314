"""The loop: run directory contents and safety, gradient accumulation, hooks, rules, EMA, AMP, resume in-process."""
import json
import os

import pytest
import torch
import torch.nn as nn

import tractable
from tractable.models import first_layer
from tractable.train import (
    Hook,
    LearningRule,
    Task,
    load_checkpoint,
    register_rule,
    register_task,
    train,
)


def _weights(result):
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def _snapshot(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            out[p] = (st.st_mtime_ns, st.st_size, open(p, "rb").read())
    return out


def test_run_directory_contents(tiny_cfg):
    cfg = tiny_cfg(train={"epochs": 2, "plots": True, "log_every": 2})
    res = train(cfg)
    d = res.run_dir
    assert d.name == "run"
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "summary.json", "checkpoints/latest"):
        assert (d / name).is_file(), name
    assert sorted(p.name for p in (d / "plots").glob("*.png")) == ["accuracy.png", "loss.png", "lr.png"]
    summary = json.loads((d / "summary.json").read_text())
    assert summary == json.loads(json.dumps(res.summary))
    assert summary["epochs"] == 2 and summary["steps"] == 8 and len(summary["test_acc"]) == 2
    assert summary["final_test_acc"] == summary["test_acc"][-1]
    assert summary["best_test_acc"] == max(summary["test_acc"])
    assert summary["images_per_s"] > 0
    # the checkpoint holds the final weights
    m = tractable.models.create_model("mlp", num_classes=4, in_channels=1, input_size=16, hidden=[16])
    load_checkpoint(d / "checkpoints", model=m, restore_rng=False)
    for k, v in m.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k])


def test_existing_run_dir_is_never_overwritten(tiny_cfg):
    train(tiny_cfg(train={"epochs": 1}))
    cfg = tiny_cfg(train={"epochs": 1})
    before = _snapshot(cfg.out_dir)
    with pytest.raises(FileExistsError, match=r"run\.resume=true"):
        train(cfg)
    assert _snapshot(cfg.out_dir) == before


def test_default_name_and_resume_needs_name(tiny_cfg, tmp_path):
    res = train(tiny_cfg(name=None, train={"epochs": 1, "seed": 3}))
    assert res.run_dir.name.startswith("mlp-normal-synthetic-s3-")
    res2 = train(tiny_cfg(name=None, train={"epochs": 1, "seed": 3}))
    assert res2.run_dir != res.run_dir  # a second default-named run gets its own directory
    from tractable.train import ConfigError

    with pytest.raises(ConfigError, match="run.name"):
        train(tiny_cfg(name=None, resume=True))


def test_grad_accumulation_matches_full_batch(tiny_cfg):
    common = dict(optim={"name": "sgd", "lr": 0.1, "momentum": 0.9}, data={"batch_size": 40})
    a = train(tiny_cfg("k1", train={"epochs": 1, "grad_accum": 1}, **common))  # 128 = 3×40 + 8
    b = train(tiny_cfg("k2", train={"epochs": 1, "grad_accum": 2}, **common))
    c = train(tiny_cfg("k3", train={"epochs": 1, "grad_accum": 3}, **common))  # uneven micro-batches
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), k
        assert torch.allclose(wa[k], wc[k], atol=1e-6, rtol=0), k
    assert a.summary["steps"] == b.summary["steps"] == 4


class Recorder(Hook):
    def __init__(self, weight=0.0):
        self.calls = []
        self.weight = weight
        self.seen = 0

    def on_start(self, t):
        self.calls.append("on_start")

    def before_step(self, t):
        self.calls.append("before_step")

    def before_forward(self, t, batch):
        self.calls.append("before_forward")
        self.seen += batch[0].shape[0]

    def extra_loss(self, t, batch):
        self.calls.append("extra_loss")
        if self.weight:
            return self.weight * sum(p.square().sum() for p in t.model.parameters())
        return None

    def after_backward(self, t):
        self.calls.append("after_backward")
        assert all(p.grad is not None for p in t.model.parameters())

    def after_step(self, t):
        self.calls.append("after_step")
        t.log_scalars({"hook_step": t.step})

    def before_eval(self, t):
        self.calls.append("before_eval")

    def after_eval(self, t, metrics):
        self.calls.append("after_eval")
        metrics["hook_metric"] = 1.0

    def on_end(self, t):
        self.calls.append("on_end")


def test_hooks_order_scalars_and_extra_loss(tiny_cfg):
    h = Recorder()
    res = train(tiny_cfg("h", train={"epochs": 1, "grad_accum": 2}), hooks=[h])
    per_step = ["before_step", "before_forward", "extra_loss", "before_forward", "extra_loss",
                "after_backward", "after_step"]
    assert h.calls == ["on_start"] + per_step * 4 + ["before_eval", "after_eval", "on_end"]
    assert h.seen == 128
    records = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["hook_step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4]
    assert records[-1]["kind"] == "epoch" and records[-1]["hook_metric"] == 1.0

    # a large L2 regulariser through extra_loss shrinks the weights
    plain = train(tiny_cfg("p", train={"epochs": 1}))
    reg = train(tiny_cfg("r", train={"epochs": 1}), hooks=[Recorder(weight=0.5)])
    norm = lambda r: sum(p.square().sum() for p in r.model.parameters())  # noqa: E731
    assert norm(reg) < 0.5 * norm(plain)


def test_tract_rule_attaches_to_first_layer_and_exact_mode_runs(tiny_cfg):
    res = train(tiny_cfg("t", method={"name": "tract", "l": 0.1}))
    path, layer = first_layer(res.model)
    assert tractable.is_tract(layer) and layer.tract_lambda == 0.1
    assert res.summary["method"].startswith("tract(l=0.1")
    res = train(tiny_cfg("te", method={"name": "tract", "exact": True}, train={"grad_accum": 2, "epochs": 1}))
    assert tractable.is_tract(first_layer(res.model)[1]) and first_layer(res.model)[1].tract_exact
    assert not tractable.tract.pending(res.model)
    with pytest.raises(ValueError, match="method.layer"):
        train(tiny_cfg("tl", method={"name": "tract", "layer": "nope"}))


@register_rule("test_freeze_first")
class FreezeFirst(LearningRule):
    """A rule that re-parametrises the model before the optimizer exists: here, freeze the first layer."""

    def attach(self, model):
        first_layer(model)[1].weight.requires_grad_(False)
        return model


@register_task("test_mse_onehot")
class OneHotMSE(Task):
    def loss(self, model, batch):
        x, y = batch
        out = model(x)
        per = (out - nn.functional.one_hot(y, out.shape[-1]).float()).square().mean(-1)
        return per.mean(), {"mse": per.detach().sum(), "n": torch.tensor(float(len(y)))}


def test_custom_rule_and_task_plug_in(tiny_cfg):
    first = None
    res = train(tiny_cfg("c", method={"name": "test_freeze_first"}, task="test_mse_onehot"))
    first = first_layer(res.model)[1]
    assert not first.weight.requires_grad
    assert res.summary["final_test"] == {"test_mse": pytest.approx(res.summary["final_test"]["test_mse"])}
    assert res.summary["final_test"]["test_mse"] > 0


def test_ema_is_evaluated_and_reported(tiny_cfg):
    res = train(tiny_cfg("e", train={"ema": 0.9, "epochs": 2}))
    s = res.summary
    assert len(s["ema_test_acc"]) == 2 and 0 <= s["final_ema_test_acc"] <= 1
    assert "ema_test_loss" in s["final_ema_test"]


def test_bf16_autocast_and_label_smoothing(tiny_cfg):
    res = train(tiny_cfg("bf", train={"amp": "bf16", "label_smoothing": 0.1, "clip_grad": 1.0}))
    records = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert all(0 < r["loss"] < 10 and r["grad_norm"] > 0 for r in steps)


def test_bad_model_name_is_reported(tiny_cfg):
    with pytest.raises(ValueError, match="unknown model name"):
        train(tiny_cfg("bad", model={"name": "resnet_nope", "kwargs": {}}))


class Stop(Hook):
    """Interrupts a run: after optimizer step ``step``, or when evaluation of epoch ``eval_epoch`` starts."""

    def __init__(self, step=None, eval_epoch=None):
        self.at_step, self.eval_epoch = step, eval_epoch

    def after_step(self, t):
        if t.step == self.at_step:
            raise KeyboardInterrupt

    def before_eval(self, t):
        if t.epoch + 1 == self.eval_epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop, every", [
    (dict(step=7), 3),  # latest checkpoint: step 6, in the middle of epoch 2
    (dict(eval_epoch=2), 4),  # latest checkpoint: step 8, all batches of epoch 2 done but not its evaluation
])
def test_resume_in_process_is_bitwise(tiny_cfg, stop, every):
    """Interrupt a run, resume it into the same directory, and compare with an uninterrupted run."""
    extra = dict(optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.05},
                 schedule={"name": "cosine", "warmup_epochs": 0.25}, data={"augment": "crop_flip"},
                 train={"epochs": 3, "ema": 0.8, "save_every_steps": every})
    ref = train(tiny_cfg("ref", **extra))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg("int", **extra), hooks=[Stop(**stop)])
    res = train(tiny_cfg("int", resume=True, **extra), hooks=[Hook()])
    for k, v in _weights(ref).items():
        assert torch.equal(v, _weights(res)[k]), k
    assert res.summary["test_acc"] == ref.summary["test_acc"]
    assert res.summary["ema_test_acc"] == ref.summary["ema_test_acc"]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("img_s", "time_s")} for r in rs]  # noqa: E731
    read = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert strip(read(res.run_dir)) == strip(read(ref.run_dir))


class Streaming(torch.utils.data.Dataset):
    """A map-style dataset that is not an ArrayDataset (like ImageFolder): returns float tensors per item."""

    def __init__(self, n, seed):
        from tractable.data import DatasetInfo

        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 4, (n,), generator=g)
        self.x = torch.randn(n, 1, 16, generator=g) * 0.3 + self.y.view(-1, 1, 1).float() / 2
        self.info = DatasetInfo("stream", 4, (1, 16), (0.0,), (1.0,))

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_streaming_dataset_path_and_resume_position(tiny_cfg):
    from tractable.train import StreamLoader

    train_ds, test_ds = Streaming(100, 0), Streaming(40, 1)
    res = train(tiny_cfg("s", data={"num_workers": 0, "subset": None, "test_subset": None}), train_data=train_ds,
                test_data=test_ds)
    assert res.summary["steps"] == 2 * 4 and len(res.summary["test_acc"]) == 2
    loader = StreamLoader(train_ds, 32, shuffle=True, drop_last=False, seed=0, device="cpu", num_workers=0)
    full = list(loader.iterate(3))
    tail = list(loader.iterate(3, start=2))
    assert len(full) == len(loader) == 4 and len(tail) == 2
    for a, b in zip(full[2:], tail):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(full[0][1], list(loader.iterate(4))[0][1])  # a new order every epoch
