"""The dependency rule of DESIGN.md, enforced on the source (ast) and at run time.

experiments -> {sim, executor} -> traces -> policy, and:
- policy is pure Python: the stdlib (minus clocks) and xxhash, nothing of the project;
- sim never imports torch, triton or executor; executor never imports sim;
- traces never imports sim, executor, experiments or torch.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)
CLOCKS = {"time", "datetime"}

FORBIDDEN = {
    "sim": {"torch", "triton", "executor"},
    "executor": {"sim"},
    "traces": {"sim", "executor", "experiments", "torch", "triton"},
}


def imports_of(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, top-level module) for every import in the file, including imports inside
    functions and `importlib.import_module("...")` / `__import__("...")` with a constant name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, package if node.level else (node.module or "").split(".")[0]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                target = node.args[0].value
                found.append((node.lineno, package if target.startswith(".") else target.split(".")[0]))
    return found


def sources(package: str) -> list[Path]:
    root = REPO / package
    if not root.is_dir():
        pytest.skip(f"{package}/ does not exist yet")
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def violations(package: str, allowed) -> list[str]:
    bad = []
    for path in sources(package):
        for line, module in imports_of(path, package):
            why = allowed(module)
            if why:
                bad.append(f"{path.relative_to(REPO)}:{line}: imports {module!r} ({why})")
    return bad


def test_policy_imports_only_the_stdlib_xxhash_and_itself_and_no_clock():
    def allowed(module):
        if module in CLOCKS:
            return "policy code never reads a clock; time is injected by the engine"
        if module in STDLIB or module in ("policy", "xxhash", "__future__"):
            return None
        return "policy is pure Python: stdlib and xxhash only"

    assert violations("policy", allowed) == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_do_not_import_upward_or_across(package):
    forbidden = FORBIDDEN[package]
    assert violations(package, lambda m: "forbidden by the layering rule" if m in forbidden else None) == []


def test_the_checker_sees_every_kind_of_import(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os.path\nfrom torch import nn\nfrom . import sibling\n"
                   "def f():\n    import time\n    importlib.import_module('executor.engine')\n")
    assert sorted(m for _, m in imports_of(src, "pkg")) == ["executor", "os", "pkg", "time", "torch"]


def test_importing_policy_loads_neither_torch_nor_numpy():
    code = ("import sys, policy\n"
            "from policy import build_scheduler, SchedulerConfig\n"
            "build_scheduler(SchedulerConfig(num_blocks=4))\n"
            "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'triton') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    assert proc.stdout.strip() == "[]"


# -- no import cycles -----------------------------------------------------------------------
PACKAGES = ("policy", "traces", "sim", "executor", "experiments")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (at module level or inside functions)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        here = name if is_pkg else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for alias in node.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in files else base)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_module_that_imports_it_back():
    assert cycles(import_graph()) == []


def test_the_cycle_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
