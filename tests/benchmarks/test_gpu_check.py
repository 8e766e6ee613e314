"""benchmarks/gpu_check.sh: its float64 formula, its stage timeout, and (slow) the CPU smoke run end to end."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tests.tract._reference import reference

ROOT = Path(__file__).resolve().parents[2]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 7)),
    (lambda: nn.Conv2d(3, 5, 4, stride=4), (2, 3, 8, 8)),
    (lambda: nn.Linear(6, 3), (10, 6)),
])
def test_float64_formula_of_the_e2e_check_matches_the_reference(make, shape):
    gc = _gpu_check()
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(shape, dtype=torch.float64)
    R = torch.randn(layer(x).shape, dtype=torch.float64)
    tract, plain = gc.float64_tract_grad(layer, x, R, lam=0.1)
    _, plain_ref, tract_ref = reference(layer, x, R, 0.1)
    torch.testing.assert_close(tract, tract_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(plain, plain_ref, rtol=1e-10, atol=1e-12)


def test_a_stage_past_its_timeout_is_killed_and_recorded(tmp_path):
    gc = _gpu_check()
    res = gc.run_child([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                       dict(os.environ), 2.0, tmp_path / "logs" / "sleep.log", "")
    assert res["timed_out"] and res["returncode"] != 0 and res["wall_s"] < 30
    assert gc.stage_status(res) == "timeout"
    assert "started" in (tmp_path / "logs" / "sleep.log").read_text()


@pytest.mark.slow
def test_cpu_quick_run_writes_every_stage(tmp_path):
    out = tmp_path / "gc"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick", "--out",
                        str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert set(report["stages"]) == {"env", "tests", "overhead", "e2e", "runner"}
    assert {k: v["status"] for k, v in report["stages"].items()} == dict.fromkeys(report["stages"], "ok")
    tests = report["stages"]["tests"]
    assert tests["counts"]["passed"] > 0 and tests["counts"]["failures"] == tests["counts"]["errors"] == 0
    overhead = report["stages"]["overhead"]
    assert set(overhead["runs"]) == {"cpu_fp32_x1", "cpu_bf16_x1", "cpu_fp32_x8", "cpu_bf16_x8"}
    for r in overhead["runs"].values():
        assert json.loads(Path(r["json"]).read_text())["runs"][0]["shapes"]
    e2e = report["stages"]["e2e"]["result"]
    assert len(e2e["models"]) == 2 and all(m["ok"] and m["rel_err"] < e2e["tolerance"] for m in e2e["models"])
    runner = report["stages"]["runner"]["result"]
    assert not runner["partial"] and len(runner["rows"]) == 4
    # on the CPU the runner and the bare loop do bitwise the same arithmetic (bf16 autocast, TrAct or not)
    assert all(r["max_abs_weight_diff"] == 0 and r["bare_images_per_s"] > 0 for r in runner["rows"])
    md = (out / "gpu_check.md").read_text()
    assert "### Runner vs bare loop" in md and "### TrAct on third-party models" in md
