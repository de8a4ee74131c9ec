"""The shape of the package: no import cycle anywhere in sslext/, no module over 500 lines,
and the library never imports the application (sslext.app).

Imports are read from the source (AST), function-level ones included, so a
lazy import that closes a cycle is caught as well as a top-level one.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "sslext"
MAX_LINES = 500
# Compiled by setup.py/CMake; a leaf that imports nothing from sslext.
EXTENSION_MODULES = {"sslext._C"}
APP = "sslext.app"
# The trainer's public entry module: application code kept at the top so that
# `python -m sslext.train` and `from sslext.train import Trainer` stay stable.
APP_ENTRY_MODULES = {"sslext.train"}


def _modules():
    """{dotted name: path} of every Python module of the package."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _known(modules):
    return set(modules) | EXTENSION_MODULES


def _imports(name, path, modules):
    """The sslext modules that ``name`` imports (a submodule when the imported name is one)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    known = _known(modules)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known:
                    found.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:
                    found.add(sub)
                elif base in modules:
                    found.add(base)
    found.discard(name)
    return found - EXTENSION_MODULES


def _graph():
    mods = _modules()
    return {n: _imports(n, p, mods) for n, p in mods.items()}


def _find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                return stack[stack.index(m) :] + [m]
            if m not in state:
                cyc = visit(m)
                if cyc:
                    return cyc
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            cyc = visit(n)
            if cyc:
                return cyc
    return None


def test_graph_reads_relative_and_absolute_imports():
    g = _graph()
    assert "sslext.app.training.trainer" in g["sslext.app.training"]  # from .trainer import ... (package)
    assert "sslext.app.training.checkpoint" in g["sslext.app.training.trainer"]  # from .checkpoint import ...
    assert "sslext.evaluate" in g["sslext.app.training.evaluation"]  # from ...evaluate import ...
    assert "sslext.app.train" in g["sslext.train"]  # from .app.train import ...
    assert "sslext" not in g["sslext.ops"]  # from . import _C: the extension


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_sslext():
    cyc = _find_cycle(_graph())
    assert cyc is None, "import cycle: " + " -> ".join(cyc)


def test_evaluate_does_not_import_the_trainer():
    g = _graph()
    assert not {m for m in g["sslext.evaluate"] if m.startswith(("sslext.train", "sslext.app.training"))}


def _is_app(name):
    return name == APP or name.startswith(APP + ".") or name in APP_ENTRY_MODULES


def test_library_does_not_import_the_application():
    """ops, losses, references, compat, distributed, models, data, evaluation: usable
    without configs or the trainer, so none of them imports sslext.app (lazy imports included)."""
    g = _graph()
    library = sorted(n for n in g if not _is_app(n))
    assert "sslext.losses" in library and "sslext.app.config" in g  # the split is where the docs say
    bad = {n: sorted(m for m in g[n] if _is_app(m)) for n in library}
    bad = {n: ms for n, ms in bad.items() if ms}
    assert not bad, f"library modules import the application: {bad}"


def test_library_rule_sees_a_lazy_import(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from .app.config import load_config\n")
    mods = _modules()
    assert "sslext.app.config" in _imports("sslext.m", src, mods)


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_size(name):
    n = len(_modules()[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{name} has {n} lines (at most {MAX_LINES}: split it by concern)"
