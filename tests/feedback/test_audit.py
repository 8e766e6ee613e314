"""tractable fa-audit: end to end on the bundled digits (tiny), per-run JSON + checkpoint with B as each run ends,
resumability (a finished run is never redone, an interrupted one resumes), the penalty term, the fresh-B null,
bad inputs."""
import json

import pytest
import torch
from safetensors.torch import load_file

from tractable.cli.main import main as cli
from tractable.experiments.feedback import audit as A

TINY = dict(archs=["resmlp"], seeds=[42], epochs=1, penalty_epochs=1, null_redraws=2, diag_samples=64,
            model_kwargs={"resmlp": {"dim": 16, "depth": 2}}, subset=256, test_subset=128)


def tiny(out, **kw):
    args = dict(TINY, methods=["bp", "dfa_seed"], penalty_lambdas=[0.0, 0.01])
    args.update(kw)
    return A.quick_config(str(out), **args)


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    summary = A.run_audit(tiny(out), echo=lambda s: None)
    return out, summary


def test_outputs(audit):
    out, summary = audit
    ids = sorted(p.name for p in (out / "runs").iterdir())
    assert ids == sorted(["resmlp-bp-s42", "resmlp-dfa_seed-s42", "resmlp-frozen_seed-s42", "resmlp-shallow-s42",
                          "resmlp-head_only-s42", "resmlp-dfa_seed-frozen-s42", "resmlp-dfa_seed-lam0-s42",
                          "resmlp-dfa_seed-lam0.01-s42"])
    for name in ("summary.md", "summary.json", "audit.json", "cosine.png", "growth.png", "accuracy.png"):
        assert (out / name).is_file(), name
    r = json.loads((out / "runs" / "resmlp-dfa_seed-s42" / "result.json").read_text())
    assert r["rule"] == "dfa" and r["feedback_options"]["normalize"] == "rms_per_sample"
    assert r["protocol"]["diagnostics"]["D1_scale_growth"]["corrected"]["per_block_growth"]
    assert r["feedback"]["names"] and r["torch"] == torch.__version__
    ckpt = next((out / "runs" / "resmlp-dfa_seed-s42" / "checkpoints").glob("step_*/model.safetensors"))
    weights = load_file(str(ckpt))
    for name in r["feedback"]["names"]:  # the checkpoint carries B
        assert name in weights
    md = (out / "summary.md").read_text()
    assert "| resmlp | bp | bp |" in md and "| resmlp | dfa_seed | seed |" in md and "Penalty sweep" in md
    rows = {row["method"]: row for row in summary["rows"]}
    assert rows["dfa_seed"]["frozen_matched"] != rows["bp"]["frozen_matched"]  # method-matched baseline
    assert rows["bp"]["frozen_matched"] == rows["bp"]["frozen_seed"]
    for v in rows["bp"]["verdicts"].values():
        assert v[0] in ("INCONCLUSIVE", "PASS", "FAIL(D3)") or v[0].startswith("FAIL")
    pen = {p["lam"]: p for p in summary["penalty"]}
    assert set(pen) == {0.0, 0.01}
    null = pen[0.01]["null"][0]
    assert null["n"] == 2 and len(null["values"]) == 2 and null["values"][0] != null["values"][1]


def test_penalty_changes_training_and_lambda_zero_is_plain(audit):
    out, _ = audit
    load = lambda i: load_file(str(next((out / "runs" / i / "checkpoints").glob("step_*/model.safetensors"))))  # noqa
    plain, lam0 = load("resmlp-dfa_seed-s42"), load("resmlp-dfa_seed-lam0-s42")
    lam = load("resmlp-dfa_seed-lam0.01-s42")
    for k in plain:  # same epochs in TINY: λ = 0 is the plain method bitwise
        assert torch.equal(plain[k], lam0[k]), k
    assert not torch.equal(lam0["blocks.0.fc2.weight"], lam["blocks.0.fc2.weight"])


def test_finished_runs_are_not_redone(audit, monkeypatch):
    out, summary = audit
    import tractable.train as T

    def boom(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(T, "train", boom)
    again = A.run_audit(tiny(out), echo=lambda s: None)
    assert again["rows"] == summary["rows"]


def test_interrupted_run_resumes(tmp_path):
    cfg = tiny(tmp_path, methods=["bp"], baselines=False, penalty=False)
    first = A.run_audit(cfg, echo=lambda s: None)
    result = tmp_path / "runs" / "resmlp-bp-s42" / "result.json"
    before = json.loads(result.read_text())
    result.unlink()  # as if killed after training, before the result was written
    calls = []
    import tractable.train as T

    real = T.train

    def spy(cfg, **kw):
        calls.append(cfg.resume)
        return real(cfg, **kw)

    T.train = spy
    try:
        second = A.run_audit(cfg, echo=lambda s: None)
    finally:
        T.train = real
    after = json.loads(result.read_text())
    assert calls == [True] and after["resumed"]
    assert after["test_acc"] == before["test_acc"]
    assert second["rows"][0]["acc"] == first["rows"][0]["acc"]


def test_a_narrower_rerun_never_shrinks_the_summary(audit):
    out, summary = audit
    narrow = A.run_audit(tiny(out, methods=["bp"], baselines=False, penalty=False), echo=lambda s: None)
    assert narrow["rows"] == summary["rows"]  # the finished dfa_seed runs and the baselines stay in
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]


def test_changed_settings_on_the_same_out_are_refused(audit):
    out, _ = audit
    with pytest.raises(ValueError, match="different settings"):
        A.run_audit(tiny(out, lr=0.1), echo=lambda s: None)


def test_branch_penalty_term():
    from tractable.models import create_model

    model = create_model("resmlp", in_features=5, dim=6, depth=2, w2_std=0.5)
    pen = A.BranchPenalty(0.3)
    pen._attach(type("T", (), {"model": model})())
    x = torch.randn(4, 5)
    model.train()
    model(x)
    got = pen._loss()
    h = model.embed(x)
    want = 0
    for blk in model.blocks:
        f = blk(h)
        want = want + (f ** 2).sum(1).mean()
        h = h + f
    torch.testing.assert_close(got, 0.3 * want)
    pen._outs = []  # drop what the hand computation itself captured
    with torch.no_grad():
        model(x)
    assert pen._loss() is None  # eval / no-grad forwards are not penalised
    pen._detach()


def test_cli_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli(["fa-audit", "--quick", "--archs", "resmlp", "--methods", "bp", "--seeds", "42", "--epochs", "1",
              "--no-penalty", "--test-subset", "100", "--subset", "200", "--diag-samples", "50", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| resmlp | bp | bp |" in text and (out / "summary.md").is_file()


@pytest.mark.parametrize("argv,match", [
    (["--archs", "lenet"], "unknown architecture 'lenet'"),
    (["--methods", "sgd"], "unknown method 'sgd'"),
    (["--null-redraws", "1"], "null_redraws"),
    (["--seeds", "1", "1"], "distinct"),
])
def test_cli_bad_inputs(tmp_path, capsys, argv, match):
    rc = cli(["fa-audit", "--quick", "--out", str(tmp_path / "x"), *argv])
    assert rc == 2 and match in capsys.readouterr().err


def test_missing_gpu_is_an_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    rc = cli(["fa-audit", "--quick", "--gpu", "0", "--out", str(tmp_path / "g")])
    assert rc == 2 and "--gpu 0: no such CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_unavailable_method_requested_explicitly(tmp_path, monkeypatch):
    monkeypatch.setattr(A, "available_methods", lambda: {m: (None if m == "bp" else "rule missing")
                                                         for m in A.METHODS})
    with pytest.raises(ValueError, match="method 'dfa': rule missing"):
        A.plan(tiny(tmp_path, methods=["bp", "dfa"], strict_methods=True))
    runs, skipped = A.plan(tiny(tmp_path, methods=["bp", "dfa"]))
    assert {r.method for r in runs} == {"bp"} and "dfa" in skipped


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        cli(["fa-audit", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--quick" in text and "fa-audit --out" in text


def test_fresh_b_null_is_deterministic_and_planned_for_every_seed(tmp_path):
    from tractable.data import load_dataset
    from tractable.feedback import convert
    from tractable.feedback.protocol import FAProtocol
    from tractable.models import create_model

    cfg = tiny(tmp_path, seeds=[1, 2, 3], null_redraws=3)
    runs, _ = A.plan(cfg)
    assert sorted((r.seed, r.lam) for r in runs if r.kind == "penalty") == \
        [(s, lam) for s in (1, 2, 3) for lam in (0.0, 0.01)]
    test = load_dataset("digits", "test").subset(64)
    torch.manual_seed(0)
    model = create_model("resmlp", num_classes=10, in_channels=1, image_size=8, dim=16, depth=2)
    convert(model, "dfa", seed=1, compat="seed")
    spec = A.RunSpec("penalty", "resmlp", "dfa_seed", 1, 0.0)
    report = FAProtocol(model, test, diag_samples=64, rho_directions=0).measure()
    a = A._fresh_b_null(cfg, spec, model, test, report)
    b = A._fresh_b_null(cfg, spec, model, test, report)
    assert a == b and a["n"] == 3 and len(set(a["values"])) == 3
    assert a["train"] == pytest.approx(A.deep_cosine(report))
