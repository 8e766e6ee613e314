"""The diffusion study's machinery on a tiny synthetic setting (the real one needs Fashion-MNIST): paired runs,
the report's paired t-intervals against scipy written out here, the FID floor, files written."""
import json
import math
from dataclasses import asdict

import pytest
import torch

from tractable.experiments.diffusion import study


def test_train_and_report_on_a_tiny_setting(tmp_path):
    sc = study.StudyScale(hidden=16, depth=1, heads=2, batch_size=8, steps=4, eval_every=2, fid_steps=(2, 4),
                          n_fid=12, sampler_steps=2, seeds={"adamw": 3}, n_eval=16, bootstrap=20)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 32, 32, generator=g) * 2 - 1
    held = (x[:16], torch.randint(0, 1000, (16,), generator=g), torch.randn(16, 1, 32, 32, generator=g))
    features = lambda im: im.reshape(len(im), -1)[:, :3].double() + 0.01 * torch.arange(3.0)  # noqa: E731
    (tmp_path / "runs").mkdir()
    runs = {}
    for seed in range(3):
        for method in study.METHODS:
            r = study.train_one("adamw", method, seed, sc, x, held, features)
            r["scale"] = asdict(sc)
            runs[(method, seed)] = r
            torch.save(r, tmp_path / "runs" / f"adamw-{method}-s{seed}.pt")
    assert runs[("plain", 0)]["curve"]["step"] == [2, 4]
    assert set(runs[("plain", 0)]["fid_features"]) == {2, 4}
    # same seed, other rule: different training; same rule, same seed: identical (paired and deterministic)
    again = study.train_one("adamw", "plain", 0, sc, x, held, features)
    assert again["curve"]["loss"] == runs[("plain", 0)]["curve"]["loss"]
    assert runs[("tract", 0)]["curve"]["loss"] != runs[("plain", 0)]["curve"]["loss"]
    torch.save({"test": features(x), "train_sample": features(x[:12])}, tmp_path / "reference.pt")
    res = study.report(tmp_path, echo=lambda s: None)
    a = res["arms"]["adamw"]
    assert a["seeds"] == [0, 1, 2] and a["steps"] == [2, 4]
    from scipy import stats

    d = [runs[("tract", s)]["curve"]["loss"][1] - runs[("plain", s)]["curve"]["loss"][1] for s in range(3)]
    m = sum(d) / 3
    h = stats.t.ppf(0.975, 2) * math.sqrt(sum((v - m) ** 2 for v in d) / 2) / math.sqrt(3)
    row = a["loss"]["loss"][1]
    assert row["diff"] == pytest.approx(m) and row["ci"] == pytest.approx([m - h, m + h])
    fid4 = a["fid"][4]
    assert len(fid4["plain"]) == 3 and fid4["boot_ci"][0] <= fid4["boot_ci"][1]
    assert res["fid_floor"]["value"] >= 0
    for name in ("results.json", "results.md", "loss.png", "fid.png"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "results.json").read_text())["arms"]["adamw"]["seeds"] == [0, 1, 2]
