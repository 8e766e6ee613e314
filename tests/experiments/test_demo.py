"""The demo runs end to end through the runner, prints the table and the verdict, and writes its plot."""
from tractable.experiments.demo import ROWS, _slug, format_table, run_demo, verdict


def test_demo_small(tmp_path):
    lines = []
    # the families' sections have tests of their own (tests/subspace, tests/experiments/test_crate.py, ...)
    curves = run_demo(seeds=2, epochs=2, out_dir=str(tmp_path), echo=lines.append, sections=False)
    text = "\n".join(lines)
    assert set(curves) == {r.label for r in ROWS}
    assert all(len(c) == 2 and len(c[0]) == 2 for c in curves.values())
    assert "| method | ep 1 | ep 2 |" in text and "What this shows:" in text
    (demo_dir,) = list(tmp_path.iterdir())
    assert (demo_dir / "demo.png").is_file() and (demo_dir / "demo.md").is_file()
    # every row and seed has its own run directory (sections add directories of their own)
    assert all((demo_dir / f"{_slug(r.label)}-s{s}").is_dir() for r in ROWS for s in range(2))


def _fake_section(seeds, root, echo):
    (root / "fake-section").mkdir()
    echo(f"fake section, {seeds} seeds")
    return "| fake | section |"


def test_sections_run_after_the_table_and_join_demo_md(tmp_path, monkeypatch):
    import tractable.experiments.demo as demo

    monkeypatch.setattr(demo, "SECTIONS", [f"{__name__}:_fake_section"])
    lines = []
    run_demo(seeds=1, epochs=1, out_dir=str(tmp_path), rows=ROWS[:1], plot=False, echo=lines.append)
    (demo_dir,) = list(tmp_path.iterdir())
    assert "fake section, 1 seeds" in lines and (demo_dir / "fake-section").is_dir()
    assert lines.index("fake section, 1 seeds") > next(i for i, l in enumerate(lines) if "| method |" in l)
    assert (demo_dir / "demo.md").read_text().rstrip().endswith("| fake | section |")
    lines.clear()
    run_demo(seeds=1, epochs=1, out_dir=str(tmp_path / "off"), rows=ROWS[:1], plot=False, echo=lines.append,
             sections=False)
    assert "fake section, 1 seeds" not in lines


def test_table_and_verdict_arithmetic():
    curves = {"a": [[50.0, 60.0], [52.0, 62.0]], "b": [[55.0, 70.0], [57.0, 72.0]]}
    table = format_table(curves, 2)
    assert "| a | 51.0 ± 1.4 | 61.0 ± 1.4 |" in table
    line = verdict(curves)
    assert "+5.00 pp after epoch 1" in line and "+10.00 pp at the end" in line


def test_run_directory_names_are_ascii():
    assert _slug("TrAct λ=0.1") == "tract-lambda-0-1"
    assert all(_slug(r.label).isascii() and "--" not in _slug(r.label) for r in ROWS)


def test_bad_seeds_and_overrides_are_refused_before_any_training(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="--seeds"):
        run_demo(seeds=0, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="optim.lr"):
        run_demo(seeds=1, epochs=1, out_dir=str(tmp_path), extra=["optim.lr=-1"])
    assert list(tmp_path.iterdir()) == []
