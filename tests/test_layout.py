"""The package's import structure: no import cycles (counting imports inside functions), and the method packages
never import the runner (``train``) or the recipes (``experiments``)."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
METHOD_PACKAGES = ("tractable.tract", "tractable.feedback", "tractable.subspace", "tractable.whitebox",
                   "tractable.diffusion")


def _modules():
    mods = {}
    for p in (SRC / "tractable").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _graph():
    """module → the package modules it imports anywhere in its body (a submodule's import of its own parent
    package is left out: importing a submodule runs the parent's __init__ anyway)."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        is_pkg = p.name == "__init__.py"
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = m.split(".") if is_pkg else m.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            graph[m].update(n for n in names if n in mods and not m.startswith(n + "."))
    return graph


def _cycles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", METHOD_PACKAGES)
def test_method_packages_do_not_import_the_runner(package):
    graph = _graph()
    bad = {m: sorted(t for t in deps if t.startswith(("tractable.train", "tractable.experiments")))
           for m, deps in graph.items() if m == package or m.startswith(package + ".")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_each_family_has_its_runner_code_in_one_folder():
    from tractable.train.rules import RULE_MODULES

    assert all(m.startswith("tractable.experiments.") and m.endswith(".rules") for m in RULE_MODULES)
    for family in ("tract", "feedback", "subspace", "crate", "diffusion"):
        assert (SRC / "tractable" / "experiments" / family / "__init__.py").is_file()
    assert not any(p.suffix == ".py" and p.name not in ("__init__.py", "demo.py")
                   for p in (SRC / "tractable" / "experiments").iterdir())
