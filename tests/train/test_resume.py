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


def test_sigkill_and_resume_is_bitwise(tiny_cfg, tmp_path):
    sections = dict(
        data={"subset": 160, "batch_size": 32, "augment": "crop_flip"},  # 5 steps per epoch
        optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.05},
        schedule={"name": "cosine", "warmup_epochs": 1},
        train={"epochs": 8, "save_every_steps": 3, "ema": 0.9, "keep_checkpoints": 2},
    )
    ref_cfg, run_cfg, resume_cfg = tmp_path / "ref.yaml", tmp_path / "run.yaml", tmp_path / "resume.yaml"
    save_config(tiny_cfg("ref", **sections), ref_cfg)
    save_config(tiny_cfg("run", **sections), run_cfg)
    save_config(tiny_cfg("run", resume=True, **sections), resume_cfg)

    ref = _run(ref_cfg, 0)
    victim = _run(run_cfg, 0.05)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 60
    # wait for a checkpoint that is not at an epoch boundary (step 3, 6, 9, ... with 5 steps per epoch)
    while time.time() < deadline and victim.poll() is None:
        ck = latest_checkpoint(ckpt_dir)
        if ck is not None and int(ck.name.split("_")[1]) % 5:
            break
        time.sleep(0.01)
    assert victim.poll() is None, "the run finished before it could be killed: " + victim.stdout.read().decode()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "summary.json").exists()
    killed_at = latest_checkpoint(ckpt_dir)
    assert killed_at is not None

    resumed = _run(resume_cfg, 0)
    out_r, _ = resumed.communicate(timeout=120)
    out_ref, _ = ref.communicate(timeout=120)
    assert resumed.returncode == 0, out_r.decode()
    assert ref.returncode == 0, out_ref.decode()

    w_ref = load_file(str(latest_checkpoint(tmp_path / "ref" / "checkpoints") / "model.safetensors"))
    w_run = load_file(str(latest_checkpoint(ckpt_dir) / "model.safetensors"))
    assert latest_checkpoint(ckpt_dir).name == "step_00000040"
    assert w_ref.keys() == w_run.keys()
    for k in w_ref:
        assert torch.equal(w_ref[k], w_run[k]), k
    ema_ref = torch.load(latest_checkpoint(tmp_path / "ref" / "checkpoints") / "state.pt", weights_only=True)
    ema_run = torch.load(latest_checkpoint(ckpt_dir) / "state.pt", weights_only=True)
    for k, v in ema_ref["ema"]["module"].items():
        assert torch.equal(v, ema_run["ema"]["module"][k]), k
    s_ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    s_run = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s_run["test_acc"] == s_ref["test_acc"] and s_run["steps"] == 40
    assert _records(tmp_path / "run") == _records(tmp_path / "ref")  # the log continues without duplicates
