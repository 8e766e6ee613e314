"""The MNIST-1D label-noise study end to end at toy scale: runs, cache, paired tables, the report-only path."""
import json

import pytest
import torch

from tractable.experiments.subspace import mnist1d_noise as study


def _small_data(noise, noise_seed=0):
    """MNIST-1D-shaped stand-in (generating the real set takes ~8 CPU-s): 300 train / 100 test signals."""
    from tractable.data.label_noise import noisy_labels

    g = torch.Generator().manual_seed(0)
    y, yt = torch.randint(0, 10, (300,), generator=g), torch.randint(0, 10, (100,), generator=g)
    x = torch.randn(300, 1, 40, generator=g) + y[:, None, None] * 0.3
    xt = torch.randn(100, 1, 40, generator=g) + yt[:, None, None] * 0.3
    if noise > 0:
        y, _ = noisy_labels(y, noise, 10, noise_seed)
    return x, y, xt, yt


@pytest.mark.slow
def test_study_trains_caches_and_reports_paired_differences(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "_data", _small_data)
    lines = []
    res = study.run(tmp_path, seeds=2, budgets=(2,), noises=(0.3,), methods=("standard", "standard_b", "line"),
                    width=4, echo=lines.append)
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert {"standard|n0.3|e2|s1", "line|n0.3|e2|s0", "ensemble2|n0.3|e2|s1"} <= set(runs)
    line = runs["line|n0.3|e2|s0"]
    assert [p["alpha"] for p in line["points"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert line["midpoint"] == line["points"][2]
    rows = res["summary"]["noise0.3"]["e2"]
    mid, std = rows["line midpoint (BN recomputed)"], rows["standard training"]
    d = [runs[f"line|n0.3|e2|s{s}"]["midpoint"]["acc"] - runs[f"standard|n0.3|e2|s{s}"]["model"]["acc"]
         for s in range(2)]
    assert mid["d_acc"][0] == pytest.approx(sum(d) / 2)
    assert mid["d_acc"][1] == pytest.approx(12.706 * abs(d[0] - d[1]) / 2 ** 0.5 / 2 ** 0.5)  # t(1) interval
    assert std["n"] == 2 and "| line midpoint (BN recomputed) | 2 |" in (tmp_path / "results.md").read_text()
    # a second call trains nothing and gives the same tables; --report only reads the cache
    again = study.run(tmp_path, seeds=2, budgets=(2,), noises=(0.3,), methods=("standard", "standard_b", "line"),
                      width=4, report_only=True, echo=lines.append)
    assert json.dumps(again["summary"]) == json.dumps(res["summary"])


def test_study_command_checks_its_arguments(tmp_path, capsys):
    for argv, match in ((["--seeds", "0"], "--seeds"), (["--budgets", "1"], "--budgets"),
                        (["--noise", "1.0"], "--noise")):
        with pytest.raises(SystemExit) as e:
            study.main(["--out", str(tmp_path / "x"), *argv])
        assert e.value.code == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "results.json").write_text("{}")  # someone else's results: never written over
    with pytest.raises(SystemExit):
        study.main(["--out", str(tmp_path / "theirs")])
    assert "not this study's folder" in capsys.readouterr().err
    assert (tmp_path / "theirs" / "results.json").read_text() == "{}"
    with pytest.raises(SystemExit):
        study.main(["--out", str(tmp_path / "new"), "--report"])
    assert "no runs.json" in capsys.readouterr().err
