"""DDP on 2 gloo ranks (CPU): the same per-step losses and final weights as one process with the same global
batch, for plain backprop and for exact TrAct (statistics summed over ranks)."""
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tractable.train import (
    all_reduce_mean,
    all_reduce_sum,
    cleanup,
    config_from_dict,
    config_to_dict,
    init_distributed,
    is_main,
    latest_checkpoint,
    skip_interpreter_teardown,
    train,
    world_size,
)
from tractable.train import rank as tr_rank

pytestmark = pytest.mark.distributed

# 120 = 3 × 32 + 24 samples: the last global batch is short (12 per rank), which the loss weighting handles
SECTIONS = dict(
    data={"subset": 120, "batch_size": 32, "augment": "flip"},
    optim={"name": "sgd", "lr": 0.2, "momentum": 0.9},
    schedule={"name": "cosine"},
    train={"epochs": 2, "grad_accum": 2},
)
METHODS = {"normal": {"name": "normal"}, "tract_exact": {"name": "tract", "l": 0.1, "exact": True}}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, cfg_dicts):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    assert init_distributed() is True  # from the torchrun-style variables; gloo on CPU
    assert (tr_rank(), world_size(), is_main()) == (rank, world, rank == 0)
    assert dist.get_backend() == "gloo"
    try:
        for d in cfg_dicts:  # several runs share one process group (train() leaves a group it did not create)
            train(config_from_dict(d))
            assert dist.is_initialized()
        t = torch.tensor([float(rank + 1)])
        assert all_reduce_sum(t.clone()).item() == 3.0 and all_reduce_mean(t.clone()).item() == 1.5
    finally:
        cleanup()
    skip_interpreter_teardown()


def _steps(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] == "step"], [r for r in recs if r["kind"] == "epoch"]


def _weights(run_dir):
    return load_file(str(latest_checkpoint(run_dir / "checkpoints") / "model.safetensors"))


def test_ddp_two_ranks_match_single_process(tiny_cfg, tmp_path):
    ddp_cfgs, single = [], {}
    for name, method in METHODS.items():
        ddp_cfgs.append(config_to_dict(tiny_cfg(f"ddp_{name}", method=method, **SECTIONS)))
        single[name] = train(tiny_cfg(f"one_{name}", method=method, **SECTIONS))
    mp.spawn(_worker, args=(2, _free_port(), ddp_cfgs), nprocs=2, join=True)

    for name in METHODS:
        one_dir, ddp_dir = single[name].run_dir, tmp_path / f"ddp_{name}"
        s1, e1 = _steps(one_dir)
        s2, e2 = _steps(ddp_dir)
        assert len(s1) == len(s2) == 8
        for a, b in zip(s1, s2):
            assert a["step"] == b["step"]
            assert abs(a["loss"] - b["loss"]) <= 1e-5, (name, a["step"], a["loss"], b["loss"])
            assert a["acc"] == b["acc"] and a["lr"] == b["lr"]
        for a, b in zip(e1, e2):  # evaluation sums over both ranks' shares of the test set
            assert abs(a["test_loss"] - b["test_loss"]) <= 1e-5 and a["test_acc"] == b["test_acc"]
        w1, w2 = _weights(one_dir), _weights(ddp_dir)
        for k in w1:
            assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=0), (name, k, (w1[k] - w2[k]).abs().max())
        summary = json.loads((ddp_dir / "summary.json").read_text())
        assert summary["world_size"] == 2
