"""The console script: every command's --help, train with a preset, errors without tracebacks, compare, list."""
import json
import subprocess
import sys

import pytest

from tractable.cli.main import main

COMMANDS = ["demo", "train", "tract-cifar", "compare", "plot", "list"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: tractable" in capsys.readouterr().out


def test_list_commands(capsys):
    for what, expected in (("models", "resnet18_tract_cifar"), ("datasets", "digits"), ("presets", "smoke"),
                           ("rules", "tract:")):
        assert main(["list", what]) == 0
        assert expected in capsys.readouterr().out.split()
    main(["list", "rules"])
    assert "method.l: float = 0.1" in capsys.readouterr().out  # each rule with its typed options


def _smoke(tmp_path, name, *extra):
    return main(["train", "--preset", "smoke", f"out_dir={tmp_path}", f"name={name}", "train.epochs=1",
                 "data.subset=128", "data.test_subset=64", "train.progress=false", *extra])


def test_train_preset_then_compare_and_plot(tmp_path, capsys):
    assert _smoke(tmp_path, "a") == 0
    assert _smoke(tmp_path, "b", "method.name=normal") == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.rindex('{\n  "run_dir"'):])["method"] == "normal"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--plot", str(tmp_path / "cmp.png")]) == 0
    table = capsys.readouterr().out
    assert "a" in table and "b" in table and (tmp_path / "cmp.png").is_file()
    assert main(["plot", str(tmp_path / "a")]) == 0
    assert list((tmp_path / "a" / "plots").glob("*.png"))


@pytest.mark.parametrize("args,needle", [
    (["train", "--preset", "smoke", "optim.lrr=0.1"], "optim.lrr"),
    (["train", "--preset", "smoke", "optim.name=rmsprop"], "sgd"),
    (["train", "--preset", "nope"], "available"),
    (["train", "--preset", "smoke", "method.l=-1"], "method.l"),
    (["train", "/nonexistent.yaml"], "not found"),
])
def test_bad_configs_exit_2_with_a_message_naming_the_key(args, needle, tmp_path, capsys):
    assert main(args + [f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing was written


def test_existing_run_directory_is_never_overwritten(tmp_path, capsys):
    assert _smoke(tmp_path, "keep") == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "keep").rglob("*") if p.is_file()}
    assert _smoke(tmp_path, "keep") == 2
    assert "resume" in capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "keep").rglob("*") if p.is_file()}
    assert before == after


def test_python_dash_m_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tractable", "list", "presets"], capture_output=True, text=True,
                         check=True)
    assert "tract_cifar10_resnet18" in out.stdout


def test_console_entry_exits_normally_outside_torchrun(monkeypatch, capsys):
    """Only a successful run under torchrun (WORLD_SIZE > 1) skips the interpreter teardown; here the exit is a
    normal SystemExit with main()'s code."""
    from tractable.cli.main import entry

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["tractable", "list", "rules"])
    with pytest.raises(SystemExit) as e:
        entry()
    assert e.value.code == 0 and "tract" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["tractable", "train", "--preset", "no-such-preset"])
    monkeypatch.setenv("WORLD_SIZE", "2")  # a failed run keeps the normal exit even under torchrun
    with pytest.raises(SystemExit) as e:
        entry()
    assert e.value.code == 2
