#!/usr/bin/env python
"""GPU check: one prepared run that proves TrAct and the runner on CUDA and writes the GPU speed tables.

Run from the repository root (``benchmarks/gpu_check.sh`` picks the python and sets ``PYTHONPATH=src``)::

    bash benchmarks/gpu_check.sh                                   # CUDA, the full check (< 8 min on one H200)
    bash benchmarks/gpu_check.sh --torch-tract-wheel PATH.whl      # torch_tract from this wheel
    bash benchmarks/gpu_check.sh --device cpu --quick --out DIR    # CPU smoke run (about a minute)

Nothing is installed from the network: the package comes from the working tree (``PYTHONPATH=src``) and the
official ``torch_tract`` from a wheel file (``--torch-tract-wheel``, default the newest
``benchmarks/wheels/torch_tract-*.whl``), installed with ``pip install --no-deps --no-index --target`` into a
temporary folder that goes on ``PYTHONPATH`` (a plain unzip if pip is missing). Without a wheel, an installed
``torch_tract`` is used if there is one; otherwise the "official" columns are skipped, with a note.

Stages (each one a child process with its own timeout, inside a total budget, ``--budget-s``; a stage that
fails or times out is recorded in the JSON and the others still run; exit status 1 if any stage failed):

``env``       python, torch, CUDA/cuDNN, the GPU, versions of timm/torchvision/torch_tract, tractable importable.
``tests``     ``pytest tests/tract/test_cuda.py tests/tract/test_precision.py -k cuda``: TrAct under CUDA autocast
              fp16/bf16, with fp16/bf16 parameters, exact mode, ``torch.compile`` (inductor) and one runner epoch
              in bf16, all against the float64 reference (on the CPU their CPU variants run, the CUDA ones skip).
``overhead``  ``benchmarks/tract_overhead.py`` (ours vs plain vs official; extra memory): float32 and
              ``--amp bf16``, at the paper's batch sizes and at ×8 (``--scale 8``). On the CPU with ``--quick``:
              ``--quick --threads 1`` on three shapes.
``e2e``       TrAct on third-party models: timm ``vit_small_patch16_224`` (``patch_embed.proj``) and torchvision
              ``resnet50`` (``conv1``), located by ``tractable.models.first_layer``; a few SGD steps in bf16 autocast,
              then one batch whose TrAct weight gradient is checked against the float64 formula
              ``Gᵀ X (XᵀX/b + λI)⁻¹`` (X from ``F.unfold`` of the layer's recorded input, G the recorded output
              gradient). Where timm/torchvision is missing, our own registry model with the same first layer
              (``vit_small_open`` with a 16×16/384 patch embedding at 224; ``resnet50_tract_cifar`` with its stem
              replaced by a 7×7/2 Conv2d(3,64)) runs instead, and the JSON and table say so.
``runner``    images/s of ``resnet18_tract_cifar`` and ``vit_cifar`` on synthetic CIFAR-shaped data, plain vs TrAct,
              the runner (``tractable.train.train``) vs a bare PyTorch loop over the same on-device tensors
              (``benchmarks/runner_overhead.py``'s loop plus device, autocast and compile), bf16 autocast, without
              and with ``torch.compile`` (compile is skipped on the CPU). Both are timed the same way: per epoch,
              from the first step's start to the last step's end with ``torch.cuda.synchronize()`` at both ends
              (the runner through a hook); the first epoch (warm-up, compilation) is not counted.

Output (``--out DIR``): ``gpu_check.json`` (every stage: status, wall time, its results), one JSON per stage
(``env.json``, ``tests.xml``, ``tract_overhead_*.json``, ``e2e.json``, ``runner.json``), ``logs/<stage>.log`` and
``gpu_check.md`` with the Markdown tables that are also printed at the end.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import tract_overhead as _overhead  # noqa: E402  (no torch import at module level)

STAGES = ("env", "tests", "overhead", "e2e", "runner")
# wall-clock caps per stage (seconds); the total --budget-s is shared out as they run
CAPS = {"cuda": {"env": 60, "tests": 150, "overhead": 150, "e2e": 90, "runner": 330},
        "cpu": {"env": 60, "tests": 120, "overhead": 120, "e2e": 90, "runner": 120}}
OVERHEAD_RUNS = (("none", 1), ("bf16", 1), ("none", 8), ("bf16", 8))
QUICK_CPU_SHAPES = "stem,patch4,linear"
QUICK_CPU_SHAPES_X8 = "patch4,linear"
TARGETS = {"stem": 1.05, "vit_s16": 1.3}  # TrAct step / plain step on the GPU (issue 12)
LAMBDA = 0.1


# ----------------------------------------------------------------------------------------------------------
# orchestration (no torch import in this process)
# ----------------------------------------------------------------------------------------------------------
def _stream(pipe, log, prefix):
    for line in iter(pipe.readline, ""):
        log.write(line)
        log.flush()
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def run_child(cmd, env, timeout, log_path, prefix):
    """Run ``cmd`` in its own process group, echoing and logging its output; kill the group on timeout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(map(str, cmd)) + "\n")
        p = subprocess.Popen([str(c) for c in cmd], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        reader = threading.Thread(target=_stream, args=(p.stdout, log, prefix), daemon=True)
        reader.start()
        timed_out = False
        try:
            rc = p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc = p.wait()
        reader.join(timeout=5)
    tail = log_path.read_text(errors="replace")[-3000:]
    return {"cmd": " ".join(map(str, cmd)), "returncode": rc, "timed_out": timed_out,
            "timeout_s": round(timeout, 1), "wall_s": round(time.perf_counter() - t0, 2), "log": str(log_path),
            "log_tail": tail}


def install_wheel(wheel: str, python: str, target: Path) -> dict:
    """``pip install --no-deps --no-index --target target wheel``; a plain unzip if that fails (pure wheels)."""
    target.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
                        str(target), wheel], capture_output=True, text=True)
    if p.returncode == 0:
        return {"wheel": wheel, "method": "pip --no-deps --no-index --target", "target": str(target)}
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    return {"wheel": wheel, "method": "unzip (pip failed: " + (p.stderr or p.stdout).strip()[-300:] + ")",
            "target": str(target)}


def find_wheel(arg):
    if arg:
        if not Path(arg).is_file():
            raise SystemExit(f"gpu_check: --torch-tract-wheel {arg}: no such file")
        return str(Path(arg).resolve())
    found = sorted(glob.glob(str(HERE / "wheels" / "torch_tract-*.whl")), key=os.path.getmtime)
    return found[-1] if found else None


def child_cmd(python, stage, args):
    cmd = [python, str(Path(__file__).resolve()), "--stage", stage, "--device", args.device, "--out", args.out]
    return cmd + (["--quick"] if args.quick else [])


def stage_status(res: dict, json_path=None) -> str:
    if res["timed_out"]:
        return "timeout"
    if res["returncode"] != 0:
        return "failed"
    if json_path is not None and not Path(json_path).exists():
        return "failed"
    return "ok"


def orchestrate(args) -> int:
    out = Path(args.out).resolve()
    args.out = str(out)
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    caps = CAPS[args.device]
    wanted = [s for s in args.stages.split(",") if s]
    bad = [s for s in wanted if s not in STAGES]
    if bad:
        raise SystemExit(f"gpu_check: --stages: unknown {bad}; choose from {', '.join(STAGES)}")

    env = dict(os.environ)
    paths = [str(ROOT / "src")]
    report = {"benchmark": "gpu_check", "command": " ".join(["gpu_check.sh"] + sys.argv[1:]),
              "device": args.device, "quick": args.quick, "budget_s": args.budget_s, "python": python,
              "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "stages": {}, "notes": []}
    wheel = find_wheel(args.torch_tract_wheel)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    if wheel:
        try:
            report["torch_tract_wheel"] = install_wheel(wheel, python, tmp / "site")
            paths.append(str(tmp / "site"))
        except Exception as e:  # a broken wheel must not stop the check
            report["torch_tract_wheel"] = {"wheel": wheel, "error": f"{type(e).__name__}: {e}"}
            report["notes"].append(f"torch_tract wheel {wheel} could not be installed: {e}")
    else:
        report["torch_tract_wheel"] = None
        report["notes"].append("no torch_tract wheel given (--torch-tract-wheel) or found in benchmarks/wheels/; "
                               "an installed torch_tract is used if importable, else the official columns are empty")
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("PYTHONUNBUFFERED", "1")
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    env["TORCHINDUCTOR_CACHE_DIR"] = env.get("TORCHINDUCTOR_CACHE_DIR", str(tmp / "inductor"))
    report["pythonpath"] = env["PYTHONPATH"]

    def budget(stage):
        return min(caps[stage], deadline - time.perf_counter())

    def save():
        report["wall_s"] = round(time.perf_counter() - t_start, 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")

    cuda_unusable = None
    for stage in STAGES:
        if stage not in wanted:
            continue
        if cuda_unusable:
            report["stages"][stage] = {"status": "skipped", "reason": cuda_unusable}
            print(f"=== {stage}: skipped ({cuda_unusable})", flush=True)
            continue
        left = budget(stage)
        print(f"\n=== gpu_check: stage {stage} (timeout {left:.0f} s; {deadline - time.perf_counter():.0f} s of "
              f"the budget left)", flush=True)
        if left < 10:
            report["stages"][stage] = {"status": "skipped", "reason": "no time left in --budget-s"}
            print(f"=== {stage}: skipped (no time left in the budget)", flush=True)
            save()
            continue
        if stage == "tests":
            xml = out / "tests.xml"
            xml.unlink(missing_ok=True)  # never read a stale file from an earlier run
            cmd = [python, "-m", "pytest", "tests/tract/test_cuda.py", "tests/tract/test_precision.py", "-k", "cuda",
                   "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--durations=5", f"--junitxml={xml}"]
            res = run_child(cmd, env, left, out / "logs" / "tests.log", "[tests] ")
            res["status"] = stage_status(res)
            res.update(parse_junit(xml))
            summary = [ln for ln in res["log_tail"].splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
            res["pytest_summary"] = summary[-1].strip("= ") if summary else None
        elif stage == "overhead":
            res = {"runs": {}, "wall_s": 0.0}
            runs = [(a, s) for a, s in OVERHEAD_RUNS]
            for i, (amp, scale) in enumerate(runs):
                left = min(caps[stage] - res["wall_s"], deadline - time.perf_counter())
                share = left / (len(runs) - i)  # what is left, shared by the runs still to come
                key = f"{args.device}_{'fp32' if amp == 'none' else amp}_x{scale}"
                path = out / f"tract_overhead_{key}.json"
                path.unlink(missing_ok=True)
                if share < 8:
                    res["runs"][key] = {"status": "skipped", "reason": "no time left in --budget-s"}
                    continue
                cmd = [python, "benchmarks/tract_overhead.py", "--device", args.device, "--amp", amp, "--scale",
                       str(scale), "--json", str(path)]
                if args.device == "cuda":
                    cmd += ["--budget", "0.5", "--reps", "11", "--warmup", "2"] + (["--quick"] if args.quick else [])
                elif args.quick:  # a smoke run of the code path: three small shapes, two at ×8
                    cmd += ["--quick", "--threads", "1", "--no-memory", "--shapes",
                            QUICK_CPU_SHAPES if scale == 1 else QUICK_CPU_SHAPES_X8]
                else:
                    cmd += ["--quick", "--threads", "1"]
                r = run_child(cmd, env, share, out / "logs" / f"overhead_{key}.log", f"[overhead {key}] ")
                r["status"] = stage_status(r, path)
                r["json"] = str(path) if path.exists() else None
                res["runs"][key] = r
                res["wall_s"] += r["wall_s"]
            sts = [r["status"] for r in res["runs"].values()]
            res["status"] = ("ok" if all(s == "ok" for s in sts) else "timeout" if "timeout" in sts
                             else "failed" if "failed" in sts else "skipped")
            res["summary"] = overhead_summary(res)
        else:
            path = out / f"{stage}.json"
            path.unlink(missing_ok=True)
            res = run_child(child_cmd(python, stage, args), env, left, out / "logs" / f"{stage}.log", f"[{stage}] ")
            res["status"] = stage_status(res, path)
            if path.exists():
                try:
                    res["result"] = json.loads(path.read_text())
                    if res["result"].get("partial") and res["status"] == "timeout":
                        res["status"] = "timeout (partial results kept)"
                    if res["result"].get("check_failed"):
                        res["status"] = "failed"
                except ValueError as e:
                    res["status"] = "failed"
                    res["error"] = f"unreadable {path}: {e}"
        report["stages"][stage] = res
        print(f"=== {stage}: {res['status']} ({res.get('wall_s', 0):.0f} s)", flush=True)
        if stage == "env" and args.device == "cuda" and res["status"] != "ok":
            cuda_unusable = "the env stage found no usable CUDA device (see logs/env.log); nothing else can run"
        save()

    md = markdown(report)
    (out / "gpu_check.md").write_text(md + "\n")
    save()
    shutil.rmtree(tmp, ignore_errors=True)
    print("\n" + md)
    failed = [k for k, v in report["stages"].items() if v["status"] not in ("ok", "skipped")]
    total = time.perf_counter() - t_start
    print(f"\ngpu_check: {'FAILED stages: ' + ', '.join(failed) if failed else 'all stages ok'}; "
          f"total {total:.0f} s; wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 1 if failed else 0


def parse_junit(xml: Path) -> dict:
    if not xml.exists():
        return {}
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError:
        return {}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    cases = []
    for case in root.iter("testcase"):
        state = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                state = tag
        cases.append({"name": f"{case.get('classname')}::{case.get('name')}", "state": state,
                      "time_s": float(case.get("time", 0))})
    return {"counts": counts, "cases": cases}


# ----------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------
def _load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, TypeError):
        return None


def overhead_summary(res: dict) -> dict:
    """Per shape and run: ours/plain, official/plain (ratio of medians), extra MB; target checks on CUDA."""
    rows = {}
    for key, r in res["runs"].items():
        data = _load(r.get("json")) if isinstance(r, dict) else None
        if not data:
            continue
        run = data["runs"][0]
        for name, e in run["shapes"].items():
            mem = e.get("memory", {})
            rows.setdefault(name, {})[key] = {
                "ours": e["ratio_median"].get("ours"), "official": e["ratio_median"].get("official"),
                "ours_extra_mb": (mem.get("ours") or {}).get("extra_mb"),
                "official_extra_mb": (mem.get("official") or {}).get("extra_mb"),
                "b": e["b"], "floor": e["floor"], "official_error": e.get("official_error"),
            }
    targets = {}
    for name, runs in rows.items():
        for key, v in runs.items():
            t = {}
            if name in TARGETS and v["ours"] is not None:
                t["ours_le_target"] = v["ours"] <= TARGETS[name]
            if v["ours"] is not None and v["official"] is not None:
                t["ours_ahead_of_official"] = v["ours"] < v["official"]
            if t:
                targets[f"{name}/{key}"] = t
    return {"ratios": rows, "targets": targets}


def _f(x, spec=".2f", suffix=""):
    return format(x, spec) + suffix if isinstance(x, (int, float)) else "–"


def markdown(report: dict) -> str:
    out = [f"## gpu_check ({report['device']}{', --quick' if report['quick'] else ''})", ""]
    env = (report["stages"].get("env") or {}).get("result")
    if env:
        cu = env.get("cuda") or {}
        dev = (f"{cu.get('device_name')} (cc {cu.get('capability')}, {cu.get('total_mem_gib')} GiB), CUDA "
               f"{cu.get('cuda_version')}, cuDNN {cu.get('cudnn_version')}" if cu else f"CPU: {env.get('cpu_model')}")
        out.append(f"{dev}; torch {env.get('torch')}; Python {env.get('python')}; timm {env.get('timm') or 'missing'}; "
                   f"torchvision {env.get('torchvision') or 'missing'}; torch_tract {env.get('torch_tract') or 'missing'}")
        out.append("")
    out += ["| stage | status | wall s | note |", "|---|---|--:|---|"]
    for name, s in report["stages"].items():
        note = s.get("reason") or s.get("pytest_summary") or ""
        if name == "overhead" and s.get("runs"):
            note = ", ".join(f"{k}: {v['status']}" for k, v in s["runs"].items())
        if name in ("e2e", "runner") and s.get("result"):
            note = "; ".join(s["result"].get("notes", []))[:300]
        if s["status"] not in ("ok", "skipped") and not note:  # the child's last words
            lines = [ln.strip() for ln in s.get("log_tail", "").splitlines() if ln.strip()]
            note = (lines[-1] if lines else "")[:300]
        note = note.replace("|", "\\|").replace("\n", " ")
        out.append(f"| {name} | {s['status']} | {_f(s.get('wall_s'), '.0f')} | {note} |")
    for n in report.get("notes", []):
        out.append(f"\nNote: {n}")

    ov = report["stages"].get("overhead")
    if ov and ov.get("summary", {}).get("ratios"):
        keys = [k for k in ov["runs"] if ov["runs"][k].get("json")]
        out += ["", "### TrAct step / plain step (ratio of medians; official in brackets)", "",
                "| shape | floor | " + " | ".join(keys) + " |", "|---|--:|" + "--:|" * len(keys)]
        for name, runs in ov["summary"]["ratios"].items():
            first = next(iter(runs.values()))
            cells = [f"{_f(runs[k]['ours'], '.2f', '×')} ({_f(runs[k]['official'], '.2f', '×')})" if k in runs
                     else "–" for k in keys]
            out.append(f"| {_overhead.SHORT.get(name, name)} | {first['floor']:.2f}× | " + " | ".join(cells) + " |")
        tg = ov["summary"]["targets"]
        if tg and report["device"] == "cuda":
            miss = [k for k, t in tg.items() if not all(t.values())]
            out.append("")
            out.append("Targets (stem ≤ 1.05×, ViT-S/16 ≤ 1.3×, ahead of torch_tract): "
                       + ("all met" if not miss else "missed on " + ", ".join(miss)))
        for key in keys:
            data = _load(ov["runs"][key]["json"])
            if data:
                run = data["runs"][0]
                head = _overhead.cuda_header(run) if report["device"] == "cuda" else _overhead.header(run)
                out += ["", f"#### tract_overhead, {key}: `{data.get('command', '')}`", "", head, _overhead.table(run)]

    e2e = (report["stages"].get("e2e") or {}).get("result")
    if e2e:
        out += ["", "### TrAct on third-party models (bf16 autocast)", "",
                "| model | layer | source | input | steps | loss first → last | ms/step | rel. error vs float64 "
                "| plain-vs-float64 (sanity) | ok |", "|---|---|---|---|--:|---|--:|--:|--:|---|"]
        for m in e2e.get("models", []):
            if "error" in m:
                out.append(f"| {m['name']} | – | {m.get('source', '–')} | – | – | – | – | – | – | error: "
                           f"{m['error'][:120].replace('|', '/')} |")
                continue
            out.append(f"| {m['name']} | {m['layer']} {m['layer_repr']} | {m['source']} | {m['input_shape']} "
                       f"| {m['steps']} | {m['losses'][0]:.3f} → {m['losses'][-1]:.3f} | {m['ms_per_step']:.1f} "
                       f"| {m['rel_err']:.1e} | {m['plain_rel_diff']:.2f} | {'yes' if m['ok'] else 'NO'} |")
        for n in e2e.get("notes", []):
            out.append(f"\nNote: {n}")

    rn = (report["stages"].get("runner") or {}).get("result")
    if rn and rn.get("rows"):
        out += ["", f"### Runner vs bare loop ({rn['amp']} autocast, batch {rn['batch_size']}, {rn['train_samples']} "
                f"synthetic 3×32×32 images, {rn['epochs']} epochs of which the first is not timed, {rn['reps']} reps eager"
                + (f", {rn.get('compile_reps', rn['reps'])} compiled" if any(r["compile"] for r in rn["rows"]) else "")
                + ")",
                "", "| model | method | compile | bare img/s | runner img/s | runner / bare | max abs Δw |",
                "|---|---|---|--:|--:|--:|--:|"]
        for r in rn["rows"]:
            if "error" in r:
                out.append(f"| {r['model']} | {r['method']} | {r['compile']} | error: {r['error'][:150].replace('|', '/')} | – | – | – |")
                continue
            out.append(f"| {r['model']} | {r['method']} | {r['compile']} | {r['bare_images_per_s']:.0f} "
                       f"| {r['runner_images_per_s']:.0f} | **{r['ratio']:.3f}×** | {r['max_abs_weight_diff']:.1e} |")
        ok_rows = [r for r in rn["rows"] if "error" not in r]
        slow = [f"{r['model']}/{r['method']}/compile={r['compile']}" for r in ok_rows if r["ratio"] < 0.95]
        if rn.get("device") == "cuda":  # the CPU smoke run is too small to read as a measurement
            out += ["", "Runner target (≥ 0.95× the bare loop's images/s): "
                    + ("met on every setting" if not slow else "missed on " + ", ".join(slow))]
        tr = {(r["model"], r["compile"]): r for r in rn["rows"] if r["method"] == "tract" and "error" not in r}
        pl = {(r["model"], r["compile"]): r for r in rn["rows"] if r["method"] == "normal" and "error" not in r}
        both = [k for k in tr if k in pl]
        if both:
            out += ["", "| model | compile | TrAct / plain img/s (bare loop) | TrAct / plain img/s (runner) |",
                    "|---|---|--:|--:|"]
            for k in both:
                out.append(f"| {k[0]} | {k[1]} | {tr[k]['bare_images_per_s'] / pl[k]['bare_images_per_s']:.3f}× "
                           f"| {tr[k]['runner_images_per_s'] / pl[k]['runner_images_per_s']:.3f}× |")
        for n in rn.get("notes", []):
            out.append(f"\nNote: {n}")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------
# stages run in child processes
# ----------------------------------------------------------------------------------------------------------
def _version(mod, dist=None):
    try:
        m = __import__(mod)
    except Exception:
        return None
    version = getattr(m, "__version__", None)
    if version is None:
        from importlib.metadata import PackageNotFoundError, version as dist_version

        try:
            version = dist_version(dist or mod)
        except PackageNotFoundError:
            version = "importable, version unknown"
    return version


def stage_env(args) -> dict:
    import platform

    import _timing
    import torch

    res = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "cpu_model": _timing.cpu_model(),
           "machine": _timing.machine_info()}
    for mod in ("timm", "torchvision", "torch_tract", "pytest", "scipy", "matplotlib", "yaml", "safetensors",
                "tqdm", "numpy"):
        res[mod] = _version(mod, "PyYAML" if mod == "yaml" else None)
    import tractable

    res["tractable"] = getattr(tractable, "__version__", "importable")
    res["tractable_file"] = tractable.__file__
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device cuda: CUDA is not available (torch {torch.__version__}, built with CUDA "
                             f"{torch.version.cuda}); run on a GPU machine or use --device cpu")
        res["cuda"] = _timing.cuda_info()
        res["gemm_check"] = _timing.cuda_gemm_check()
    missing = [m for m in ("yaml", "safetensors", "tqdm", "numpy") if res[m] is None]
    if missing:
        res["notes"] = [f"missing modules the runner needs: {', '.join(missing)}"]
    return res


def _sync(device):
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def float64_tract_grad(layer, x_in, g_out, lam=LAMBDA):
    """``Gᵀ X (XᵀX/b + λI)⁻¹`` and ``Gᵀ X`` in float64, X the layer's rows (``F.unfold``), G its output gradient."""
    import torch
    import torch.nn.functional as F

    w = layer.weight
    m = w.shape[0]
    if isinstance(layer, torch.nn.Linear):
        X = x_in.double().reshape(-1, w.shape[1])
        G = g_out.double().reshape(-1, m)
    else:
        if layer.padding_mode != "zeros" or layer.groups != 1:
            raise ValueError("float64_tract_grad: only zero padding and groups=1")
        cols = F.unfold(x_in.double(), layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                        stride=layer.stride)  # (B, n, L)
        X = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        G = g_out.double().flatten(2).transpose(1, 2).reshape(-1, m)
    b, n = X.shape
    M = G.T @ X
    K = X.T @ X / b + lam * torch.eye(n, dtype=torch.float64, device=X.device)
    return torch.linalg.solve(K, M.T).T.reshape(w.shape), M.reshape(w.shape)


def _layer_repr(layer) -> str:
    """``Conv2d(3, 384, k=16×16, s=16×16)``-style short description of a conv or linear layer."""
    if hasattr(layer, "kernel_size"):
        return (f"Conv({layer.in_channels}→{layer.out_channels}, k{'×'.join(map(str, layer.kernel_size))}"
                f"/s{'×'.join(map(str, layer.stride))})")
    return f"Linear({layer.in_features}→{layer.out_features})"


def _e2e_models(args, notes):
    """(name, source, builder, expected layer path, input shape, num_classes) for the e2e stage."""
    import torch.nn as nn

    from tractable.models import create_model

    quick_cpu = args.device == "cpu" and args.quick
    batch = 4 if quick_cpu else (8 if args.quick else 32)
    models = []
    try:
        import timm

        models.append(("timm vit_small_patch16_224", f"timm {timm.__version__}",
                       lambda: timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=1000),
                       "patch_embed.proj", (batch, 3, 224, 224), 1000))
    except ImportError:
        notes.append("timm is not installed: ran our vit_small_open with a 16×16/384 patch embedding at 224 "
                     "(the first layer of timm's vit_small_patch16_224) instead")
        models.append(("vit_small_open (stand-in for timm vit_small_patch16_224)", "tractable registry",
                       lambda: create_model("vit_small_open", num_classes=1000, image_size=224, patch_size=16,
                                            hidden=384, heads=6, depth=1 if quick_cpu else 12, head_hidden=0),
                       "patch_embed.proj", (batch, 3, 224, 224), 1000))
    size = 64 if quick_cpu else 224
    try:
        import torchvision

        models.append(("torchvision resnet50", f"torchvision {torchvision.__version__}",
                       lambda: torchvision.models.resnet50(weights=None), "conv1", (batch, 3, size, size), 1000))
    except ImportError:
        notes.append("torchvision is not installed: ran our resnet50_tract_cifar with its stem replaced by "
                     "torchvision resnet50's conv1 (Conv2d(3,64,7,stride=2,padding=3,bias=False)) instead")

        def build():
            net = create_model("resnet50_tract_cifar", num_classes=1000)
            net.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            return net

        models.append(("resnet50_tract_cifar + 7×7/2 stem (stand-in for torchvision resnet50)", "tractable registry",
                       build, "conv1", (batch, 3, size, size), 1000))
    if quick_cpu:
        notes.append(f"--quick on the CPU: batch {batch}, ResNet input {size}×{size}, 2 steps"
                     + (", stand-in ViT depth 1" if not any(m[1].startswith("timm") for m in models) else ""))
    return models


def stage_e2e(args) -> dict:
    import torch
    import torch.nn.functional as F

    import tractable
    from tractable.models import first_layer

    device = args.device
    sync = _sync(device)
    notes = []
    res = {"device": device, "amp": "bf16", "lambda": LAMBDA, "notes": notes, "models": []}
    steps = 2 if (args.quick and device == "cpu") else 5
    tol = 2e-2
    res["tolerance"] = tol
    for name, source, builder, expected, shape, classes in _e2e_models(args, notes):
        entry = {"name": name, "source": source}
        res["models"].append(entry)
        try:
            torch.manual_seed(0)
            model = builder()
            path, layer = first_layer(model)
            if path != expected:
                raise RuntimeError(f"first_layer found {path!r}, expected {expected!r}")
            tractable.TrAct(layer, l=LAMBDA)
            model.to(device).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            g = torch.Generator().manual_seed(1)
            x = torch.randn(shape, generator=g).to(device)
            y = torch.randint(0, classes, (shape[0],), generator=g).to(device)
            losses, times = [], []
            for _ in range(steps):
                sync()
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device, dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                sync()
                times.append(time.perf_counter() - t0)
                losses.append(loss.item())
            # one more batch: record the layer's input and output gradient, compare with the float64 formula
            rec = {}

            def fwd_hook(mod, inp, out):
                rec["x"] = inp[0].detach()
                out.register_hook(lambda grad: rec.__setitem__("g", grad.detach()))

            h = layer.register_forward_hook(fwd_hook)
            opt.zero_grad(set_to_none=True)
            x2 = torch.randn(shape, generator=g).to(device)
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x2), y)
            loss.backward()
            h.remove()
            ref, plain = float64_tract_grad(layer, rec["x"], rec["g"])
            got = layer.weight.grad.double()
            rel = float((got - ref).norm() / ref.norm())
            plain_rel = float((plain - ref).norm() / ref.norm())
            finite = bool(all(torch.isfinite(p).all() for p in model.parameters()))
            entry.update({
                "layer": path, "layer_repr": _layer_repr(layer), "input_shape": "×".join(map(str, shape)), "steps": steps,
                "losses": losses, "ms_per_step": 1e3 * sorted(times)[len(times) // 2],
                "step_times_s": times, "rel_err": rel, "plain_rel_diff": plain_rel, "finite": finite,
                "grad_dtype": str(layer.weight.grad.dtype), "x_dtype": str(rec["x"].dtype),
                "g_dtype": str(rec["g"].dtype), "rows_b": int(rec["g"].numel() // layer.weight.shape[0]),
                "ok": bool(rel < tol and finite and all(map(lambda v: v == v, losses))),
            })
            print(f"{name}: layer {path}, {steps} bf16 steps, loss {losses[0]:.3f} → {losses[-1]:.3f}, "
                  f"{entry['ms_per_step']:.1f} ms/step, TrAct grad vs float64 rel {rel:.2e} (plain formula "
                  f"differs by {plain_rel:.2f}) -> {'ok' if entry['ok'] else 'FAILED'}", flush=True)
            del model, opt
        except Exception as e:
            import traceback

            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()[-3000:]
            entry["ok"] = False
            print(f"{name}: ERROR {entry['error']}", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    res["check_failed"] = not all(m.get("ok") for m in res["models"])
    return res


def _runner_settings(args):
    quick_cpu = args.device == "cpu" and args.quick
    if quick_cpu:
        return {"train_samples": 16, "batch_size": 8, "epochs": 2, "reps": 1, "compile": [False],
                "model_kwargs": {"resnet18_tract_cifar": {}, "vit_cifar": {"depth": 1}}}
    if args.quick:
        return {"train_samples": 2048, "batch_size": 128, "epochs": 2, "reps": 1, "compile": [False, True],
                "model_kwargs": {"resnet18_tract_cifar": {}, "vit_cifar": {}}}
    # compiled runs: one repetition each (every run compiles its own model; inductor's cache makes repeats cheaper)
    return {"train_samples": 10240, "batch_size": 128, "epochs": 3, "reps": 2, "compile_reps": 1,
            "compile": [False, True],
            "model_kwargs": {"resnet18_tract_cifar": {}, "vit_cifar": {}}}


def bare_run_device(model_name, model_kwargs, X, Y, batch, epochs, device, compile_, tract, sync):
    """``runner_overhead.bare_run``'s loop on ``device`` with bf16 autocast, optional TrAct and torch.compile.

    Returns (per-epoch synchronised seconds from the first step's start to the last step's end, images per
    epoch, model).
    """
    import torch
    import torch.nn.functional as F

    import runner_overhead as ro
    import tractable
    from tractable.data.seeding import make_generator
    from tractable.models import create_model, first_layer

    torch.manual_seed(ro.SEED)
    model = create_model(model_name, num_classes=10, in_channels=3, image_size=32, **model_kwargs)
    if tract:
        tractable.TrAct(first_layer(model)[1], l=LAMBDA)
    model.to(device)
    fwd = torch.compile(model) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=ro.LR, momentum=ro.MOMENTUM)
    model.train()
    n = len(X)
    epoch_s, seen = [], 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=make_generator(ro.SEED, "perm", epoch)).to(device)
        seen = 0
        sync()
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            x, y = X[idx], Y[idx]
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = F.cross_entropy(fwd(x), y)
            loss.backward()
            opt.step()
            seen += y.shape[0]
        sync()
        epoch_s.append(time.perf_counter() - t0)
    return epoch_s, seen, model


def runner_run_device(model_name, model_kwargs, train_data, test_data, batch, epochs, device, compile_, tract, sync,
                      out_dir, name):
    """One ``tractable.train.train`` call timed like :func:`bare_run_device` (a hook with synchronised clocks)."""
    import contextlib

    import runner_overhead as ro
    from tractable.train import train
    from tractable.train.hooks import Hook

    class Clock(Hook):
        def __init__(self):
            self.epoch_s, self.t0, self.images = [], 0.0, 0

        def before_step(self, trainer):
            if trainer.batch_index == 0:
                sync()
                self.t0 = time.perf_counter()
                self.images = trainer.images_seen

        def after_step(self, trainer):
            if trainer.batch_index == trainer.steps_per_epoch - 1:
                sync()
                self.epoch_s.append(time.perf_counter() - self.t0)
                self.images = trainer.images_seen - self.images

    cfg = {
        "data": {"name": "synthetic", "batch_size": batch, "eval_batch_size": 512},
        "model": {"name": model_name, "kwargs": dict(model_kwargs)},
        "optim": {"name": "sgd", "lr": ro.LR, "momentum": ro.MOMENTUM},
        "method": {"name": "tract" if tract else "normal"},
        "train": {"epochs": epochs, "seed": ro.SEED, "device": device, "amp": "bf16", "compile": compile_,
                  "eval_every": 0, "save_every": 0, "progress": False, "plots": False, "tensorboard": False},
        "out_dir": out_dir, "name": name,
    }
    clock = Clock()
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        result = train(cfg, train_data=train_data, test_data=test_data, hooks=[clock])
    shutil.rmtree(result.run_dir, ignore_errors=True)
    return clock.epoch_s, clock.images, result.summary, result.model


def stage_runner(args, out_path: Path) -> dict:
    import torch

    import runner_overhead as ro
    from tractable.data import load_dataset

    device = args.device
    sync = _sync(device)
    s = _runner_settings(args)
    notes = []
    if device == "cpu":
        notes.append("torch.compile is not measured on the CPU (inductor's C++ build takes minutes)")
    if device == "cpu" and args.quick:
        notes.append(f"--quick on the CPU: {s['train_samples']} images, batch {s['batch_size']}, vit_cifar depth 1: "
                     "a smoke run, not a measurement")
    res = {"device": device, "amp": "bf16", "partial": True, "notes": notes, "rows": [], **{k: s[k] for k in (
        "train_samples", "batch_size", "epochs", "reps")}, "compile_reps": s.get("compile_reps", s["reps"]),
           "model_kwargs": s["model_kwargs"],
           "timing": "per epoch, torch.cuda.synchronize() at the first step's start and the last step's end; "
                     "the first epoch is not counted"}
    train_data = load_dataset("synthetic", split="train", num_samples=s["train_samples"])
    test_data = load_dataset("synthetic", split="test", num_samples=min(512, s["train_samples"]))
    X, Y = ro.normalised(train_data)
    X, Y = X.to(device), Y.to(device)
    tmp = tempfile.mkdtemp(prefix="gpu_check_runner-")

    def save():
        out_path.write_text(json.dumps(res, indent=1) + "\n")

    try:
        for compile_ in s["compile"]:
            for model_name, kw in s["model_kwargs"].items():
                for tract in (False, True):
                    t_set = time.perf_counter()
                    try:
                        row = runner_row(model_name, kw, s, compile_, tract, X, Y, train_data, test_data, device,
                                         sync, tmp)
                    except Exception as e:  # recorded; the other rows still run
                        import traceback

                        row = {"model": model_name, "method": "tract" if tract else "normal", "compile": compile_,
                               "error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-3000:],
                               "wall_s": time.perf_counter() - t_set}
                        print(f"{model_name:22s} {row['method']:6s} compile={str(compile_):5s}  ERROR {row['error'][:300]}",
                              flush=True)
                    else:
                        print(f"{model_name:22s} {row['method']:6s} compile={str(compile_):5s}  "
                              f"bare {row['bare_images_per_s']:.0f}  runner {row['runner_images_per_s']:.0f} img/s  "
                              f"({row['ratio']:.3f}×)  max|Δw| {row['max_abs_weight_diff']:.1e}  ({row['wall_s']:.1f} s)",
                              flush=True)
                    if device == "cuda":
                        torch.cuda.empty_cache()
                    res["rows"].append(row)
                    save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["partial"] = False
    ok = [r for r in res["rows"] if "error" not in r]
    res["runner_target_met"] = bool(ok) and all(r["ratio"] >= 0.95 for r in ok)
    res["check_failed"] = len(ok) < len(res["rows"])
    return res


def runner_row(model_name, kw, s, compile_, tract, X, Y, train_data, test_data, device, sync, tmp) -> dict:
    """One (model, method, compile) setting: bare loop and runner interleaved, ``reps`` times each."""
    import statistics

    import runner_overhead as ro

    t_set = time.perf_counter()
    ips = {"bare": [], "runner": []}
    diffs, summary_ips = [], []
    reps = s.get("compile_reps", s["reps"]) if compile_ else s["reps"]
    for r in range(reps):
        order = ("bare", "runner") if r % 2 == 0 else ("runner", "bare")
        models = {}
        for v in order:
            if v == "bare":
                ep, seen, models[v] = bare_run_device(model_name, kw, X, Y, s["batch_size"], s["epochs"], device,
                                                      compile_, tract, sync)
            else:
                ep, seen, summ, models[v] = runner_run_device(
                    model_name, kw, train_data, test_data, s["batch_size"], s["epochs"], device, compile_, tract,
                    sync, tmp, f"{model_name}-{'tract' if tract else 'normal'}-{int(compile_)}-{r}")
                summary_ips.append(summ["images_per_s"])
            timed = ep[1:] if len(ep) > 1 else ep
            ips[v].append(seen * len(timed) / sum(timed))
        diffs.append(ro.max_weight_diff(models["bare"], models["runner"]))
        del models
    med = {v: statistics.median(x) for v, x in ips.items()}
    return {"model": model_name, "method": "tract" if tract else "normal", "compile": compile_,
            "bare_images_per_s": med["bare"], "runner_images_per_s": med["runner"],
            "ratio": med["runner"] / med["bare"], "reps": reps, "images_per_s": ips,
            "runner_summary_images_per_s": summary_ips, "max_abs_weight_diff": max(diffs),
            "wall_s": time.perf_counter() - t_set}


def run_stage(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.stage}.json"
    if path.exists():
        path.unlink()
    if args.device == "cpu":
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.stage == "env":
        res = stage_env(args)
    elif args.stage == "e2e":
        res = stage_e2e(args)
    elif args.stage == "runner":
        res = stage_runner(args, path)
    else:
        raise SystemExit(f"unknown stage {args.stage}")
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")
    return 1 if res.get("check_failed") else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="smoke run: smaller batches, fewer steps (CPU: ~1 min)")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/results/gpu_check_<device>"
                    "[_quick])")
    ap.add_argument("--torch-tract-wheel", default=None, metavar="PATH",
                    help="torch_tract wheel to install with --no-deps into a temporary folder\n"
                         "(default: the newest benchmarks/wheels/torch_tract-*.whl, if any)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="total seconds for all stages (default 450 on cuda, 300 on cpu)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)} (default all)")
    ap.add_argument("--stage", choices=("env", "e2e", "runner"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(HERE / "results" / f"gpu_check_{args.device}{'_quick' if args.quick else ''}")
    if args.stage:
        return run_stage(args)
    if args.budget_s is None:
        args.budget_s = 450.0 if args.device == "cuda" else 300.0
    if args.budget_s <= 0:
        ap.error("--budget-s must be positive")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
