"""The subspace rule under 2-rank gloo DDP (shared α, identical endpoints, SyncBatchNorm) and after kill -9."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.train.conftest import tiny_dict
from tests.train.test_distributed import _free_port, _steps, _weights
from tests.train.test_resume import assert_same_checkpoint, kill_and_resume
from tractable.train import (Hook, cleanup, config_from_dict, config_to_dict, init_distributed,
                             skip_interpreter_teardown, train)

LINE = {"name": "subspace", "kind": "curve", "beta": 1.0}
# no accumulation: the point is drawn per micro-batch, so with train.grad_accum > 1 the samples of a micro-batch
# (and hence the sample → α assignment) differ between one process and two ranks
DDP_SECTIONS = dict(data={"subset": 120, "batch_size": 32}, optim={"name": "sgd", "lr": 0.2, "momentum": 0.9},
                    train={"epochs": 2})
BN_SECTIONS = dict(data={"name": "synthetic", "kwargs": {"shape": [1, 8, 8], "num_classes": 4, "noise": 0.3},
                         "subset": 64, "test_subset": 32, "batch_size": 16, "eval_batch_size": 32},
                   model={"name": "small_cnn", "kwargs": {"widths": [4, 8]}},
                   train={"epochs": 1})


class _Coeffs(Hook):
    def __init__(self):
        self.seen = []

    def after_backward(self, trainer):
        self.seen.append(trainer.rule.sub.point[0].clone())


def _worker(rank, world, port, cfgs, out):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    init_distributed()
    try:
        rec = _Coeffs()
        res = train(config_from_dict(cfgs[0]), hooks=[rec])
        flat = torch.cat([p.detach().flatten() for p in res.model.parameters()] + rec.seen)
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        assert torch.equal(gathered[0], gathered[1]), "endpoints or α differ between ranks"
        res = train(config_from_dict(cfgs[1]))  # BatchNorm model: the midpoint's statistics recomputed per rank
        assert res.summary["final_test_acc"] >= 0
        cfg = config_from_dict({**cfgs[1], "name": "ddp_sync", "train": {**cfgs[1]["train"], "sync_bn": True}})
        try:  # torch's SyncBatchNorm is CUDA-only under DDP: a clear error on CPU
            train(cfg)
            raise AssertionError("train.sync_bn on CPU did not raise")
        except ValueError as e:
            assert "train.sync_bn" in str(e), e
        if rank == 0:
            torch.save({"coeffs": torch.stack(rec.seen)}, out)
    finally:
        cleanup()
    skip_interpreter_teardown()


@pytest.mark.distributed
def test_ddp_two_ranks_share_alpha_and_match_one_process(tmp_path):
    ddp = config_to_dict(config_from_dict(tiny_dict(tmp_path, "ddp", method=LINE, **DDP_SECTIONS)))
    bn = config_to_dict(config_from_dict(tiny_dict(tmp_path, "ddp_bn", method={"name": "subspace"}, **BN_SECTIONS)))
    rec = _Coeffs()
    one = train(config_from_dict(tiny_dict(tmp_path, "one", method=LINE, **DDP_SECTIONS)), hooks=[rec])
    mp.spawn(_worker, args=(2, _free_port(), [ddp, bn], tmp_path / "coeffs.pt"), nprocs=2, join=True)
    coeffs = torch.load(tmp_path / "coeffs.pt", weights_only=True)["coeffs"]
    assert torch.equal(coeffs, torch.stack(rec.seen))  # the same draw per micro-batch as one process
    s1, _ = _steps(one.run_dir)
    s2, _ = _steps(tmp_path / "ddp")
    assert len(s1) == len(s2) == 8
    for a, b in zip(s1, s2):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["step"], a["loss"], b["loss"])
    w1, w2 = _weights(one.run_dir), _weights(tmp_path / "ddp")
    assert any(k.endswith(".original") and w1[k].shape[0] == 3 for k in w1)  # the curve's 3 stored points
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=0), k


def test_kill_and_resume_is_bitwise(tmp_path):
    sections = dict(
        data={"name": "synthetic", "kwargs": {"shape": [1, 8, 8], "num_classes": 4, "noise": 0.3}, "subset": 160,
              "test_subset": 64, "batch_size": 32, "augment": "flip", "label_noise": 0.2},
        model={"name": "small_cnn", "kwargs": {"widths": [4, 8]}},
        optim={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        method={"name": "subspace", "kind": "line", "beta": 1.0, "num_samples": 2},
        schedule={"name": "cosine", "warmup_epochs": 1},
        train={"epochs": 4, "save_every_steps": 3, "keep_checkpoints": 2},
    )
    # killed mid-epoch after an evaluation (BN recompute) has happened
    last_ref, last_run = kill_and_resume(
        tmp_path, config_from_dict(tiny_dict(tmp_path, "ref", **sections)),
        config_from_dict(tiny_dict(tmp_path, "run", **sections)),
        config_from_dict(tiny_dict(tmp_path, "run", resume=True, **sections)), min_step=5, delay=0.1)
    assert any(k.endswith(".original") for k in assert_same_checkpoint(last_ref, last_run))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test_acc"] == \
        json.loads((tmp_path / "ref" / "summary.json").read_text())["test_acc"]
