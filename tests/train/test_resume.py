"""Crash safety: SIGKILL a training process after a mid-epoch checkpoint, resume it in a new process, and get
bit-identical final weights and the same metrics as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from tractable.train import latest_checkpoint, save_config

# The child process: ``python -c SCRIPT config.yaml delay``. A hook sleeps after every step so that the parent
# can kill it part-way; the resumed and reference runs use the same hook with delay 0.
SCRIPT = """
import sys, time
import torch
torch.set_num_threads(1)
from tractable.train import Hook, load_config, train

class Delay(Hook):
    def __init__(self, s):
        self.s = s
    def after_step(self, trainer):
        if self.s:
            time.sleep(self.s)

train(load_config(sys.argv[1]), hooks=[Delay(float(sys.argv[2]))])
"""


def _env():
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cfg_path, delay, **kw):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(cfg_path), str(delay)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _records(run_dir):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.pop("img_s", None)
        r.pop("time_s", None)
        out.append(r)
    return out


def kill_and_resume(tmp_path, ref_cfg, run_cfg, resume_cfg, *, steps_per_epoch=5, min_step=0, delay=0.05,
                    wait_s=90, timeout=180):
    """Train ``ref_cfg`` to the end; train ``run_cfg`` (same run, another directory) with a ``delay`` after every
    step and SIGKILL it as soon as it has a checkpoint inside an epoch (a step that is no multiple of
    ``steps_per_epoch``, after ``min_step``); resume it with ``resume_cfg``. Checks that the victim died without a
    summary, that both runs then end normally and that the resumed log equals the reference log; returns the last
    checkpoint directories ``(ref, run)``."""
    paths = {n: tmp_path / f"{n}.yaml" for n in ("ref", "run", "resume")}
    for name, cfg in zip(paths, (ref_cfg, run_cfg, resume_cfg)):
        save_config(cfg, paths[name])
    ref = _run(paths["ref"], 0)
    victim = _run(paths["run"], delay)
    run_dir = tmp_path / run_cfg.name
    ckpt_dir = run_dir / "checkpoints"
    deadline = time.time() + wait_s
    while time.time() < deadline and victim.poll() is None:
        ck = latest_checkpoint(ckpt_dir)
        step = int(ck.name.split("_")[1]) if ck is not None else 0
        if step % steps_per_epoch and step > min_step:
            break
        time.sleep(0.01)
    assert victim.poll() is None, "the run finished before it could be killed: " + victim.stdout.read().decode()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()
    assert latest_checkpoint(ckpt_dir) is not None

    resumed = _run(paths["resume"], 0)
    out_r, _ = resumed.communicate(timeout=timeout)
    out_ref, _ = ref.communicate(timeout=timeout)
    assert resumed.returncode == 0, out_r.decode()
    assert ref.returncode == 0, out_ref.decode()
    ref_dir = tmp_path / ref_cfg.name
    assert _records(run_dir) == _records(ref_dir)  # the log continues without duplicates
    return latest_checkpoint(ref_dir / "checkpoints"), latest_checkpoint(ckpt_dir)


def assert_same_checkpoint(last_ref, last_run, *, ema=False):
    """Bit-identical weights (and EMA weights) in two checkpoint directories."""
    w_ref = load_file(str(last_ref / "model.safetensors"))
    w_run = load_file(str(last_run / "model.safetensors"))
    assert w_ref.keys() == w_run.keys()
    for k in w_ref:
        assert torch.equal(w_ref[k], w_run[k]), k
    if ema:
        e_ref = torch.load(last_ref / "state.pt", weights_only=True)["ema"]["module"]
        e_run = torch.load(last_run / "state.pt", weights_only=True)["ema"]["module"]
        assert e_ref.keys() == e_run.keys()
        for k in e_ref:
            assert torch.equal(e_ref[k], e_run[k]), k
    return w_run


def test_sigkill_and_resume_is_bitwise(tiny_cfg, tmp_path):
    sections = dict(
        data={"subset": 160, "batch_size": 32, "augment": "crop_flip"},  # 5 steps per epoch
        optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.05},
        schedule={"name": "cosine", "warmup_epochs": 1},
        train={"epochs": 8, "save_every_steps": 3, "ema": 0.9, "keep_checkpoints": 2},
    )
    last_ref, last_run = kill_and_resume(tmp_path, tiny_cfg("ref", **sections), tiny_cfg("run", **sections),
                                         tiny_cfg("run", resume=True, **sections), timeout=120)
    assert last_run.name == "step_00000040"
    assert_same_checkpoint(last_ref, last_run, ema=True)
    s_ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    s_run = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s_run["test_acc"] == s_ref["test_acc"] and s_run["steps"] == 40
