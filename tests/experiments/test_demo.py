"""The demo runs end to end through the runner, prints the table and the verdict, and writes its plot."""
from tractable.experiments.demo import ROWS, _slug, format_table, run_demo, verdict


def test_demo_small(tmp_path):
    lines = []
    curves = run_demo(seeds=2, epochs=2, out_dir=str(tmp_path), echo=lines.append)
    text = "\n".join(lines)
    assert set(curves) == {r.label for r in ROWS}
    assert all(len(c) == 2 and len(c[0]) == 2 for c in curves.values())
    assert "| method | ep 1 | ep 2 |" in text and "What this shows:" in text
    (demo_dir,) = list(tmp_path.iterdir())
    assert (demo_dir / "demo.png").is_file() and (demo_dir / "demo.md").is_file()
    # every row and seed has its own run directory (sections add directories of their own)
    assert all((demo_dir / f"{_slug(r.label)}-s{s}").is_dir() for r in ROWS for s in range(2))


def test_table_and_verdict_arithmetic():
    curves = {"a": [[50.0, 60.0], [52.0, 62.0]], "b": [[55.0, 70.0], [57.0, 72.0]]}
    table = format_table(curves, 2)
    assert "| a | 51.0 ± 1.4 | 61.0 ± 1.4 |" in table
    line = verdict(curves)
    assert "+5.00 pp after epoch 1" in line and "+10.00 pp at the end" in line
