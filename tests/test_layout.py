"""The layout's rules, kept by a test: no import cycles (lazy imports inside functions count too, they
only hide a cycle), and components never import a recipe."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mathtune"
# Front ends and recipes may import anything below them; nothing below may import them.
TOP = ("mathtune.recipes", "mathtune.cli", "mathtune.app", "mathtune.__main__")


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the mathtune modules it imports anywhere in its file."""
    modules = {_module(path): path for path in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mathtune"):
                candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names if alias.name.startswith("mathtune")]
            else:
                continue
            for candidate in candidates:
                while candidate and candidate not in modules:  # `from pkg import name`: the package
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name and candidate != "mathtune":
                    targets.add(candidate)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycles_between_packages():
    graph = import_graph()
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = ".".join(module.split(".")[:2])
        packages.setdefault(source, set()).update(".".join(t.split(".")[:2]) for t in targets)
    for package in packages:
        packages[package].discard(package)
    assert cycles(packages) == []


def test_components_never_import_a_recipe_or_a_front_end():
    offenders = {module: sorted(t for t in targets if t.startswith(TOP))
                 for module, targets in import_graph().items() if not module.startswith(TOP)}
    assert {module: targets for module, targets in offenders.items() if targets} == {}


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# The layers docs/architecture.md states, below the recipes: what each may import (its own package
# always). Base modules import only base modules; config.py reads the registries it validates against;
# fingerprint.py hashes what models/, methods/ and evaluate/ say a result depends on; compare.py and
# report/ render results and never load a model or train.
BASE = ("mathtune.answers", "mathtune.arithmetic", "mathtune.sandbox", "mathtune.sandbox_child",
        "mathtune.interrupts", "mathtune.io", "mathtune.errors", "mathtune.runcard")
MAY_IMPORT = {
    **{module: BASE for module in BASE},
    "mathtune.config": (*BASE, "mathtune.data", "mathtune.methods", "mathtune.prompts"),
    "mathtune.fingerprint": (*BASE, "mathtune.models", "mathtune.methods", "mathtune.evaluate"),
    "mathtune.compare": (*BASE, "mathtune.evaluate"),
    "mathtune.report": (*BASE, "mathtune.evaluate", "mathtune.compare"),
}


def layer_violations(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    found = {}
    for module, targets in graph.items():
        layer = next((name for name in MAY_IMPORT if module == name or module.startswith(name + ".")), None)
        if layer is None:
            continue
        bad = sorted(t for t in targets if not t.startswith(layer) and not t.startswith(MAY_IMPORT[layer]))
        if bad:
            found[module] = bad
    return found


def test_base_config_fingerprint_compare_and_report_import_only_their_layers():
    assert layer_violations(import_graph()) == {}


def test_the_layer_checker_finds_a_base_module_importing_a_component():
    graph = {"mathtune.io": {"mathtune.errors", "mathtune.models.loading"}, "mathtune.cli": {"mathtune.recipes"}}
    assert layer_violations(graph) == {"mathtune.io": ["mathtune.models.loading"]}


def test_the_code_under_test_is_this_checkouts_in_process_and_in_subprocesses(tmp_path):
    """An installed mathtune (another checkout's editable install, a wheel) must never be what the
    tests run: in-process imports come from `pythonpath` (pyproject.toml), subprocesses from the
    PYTHONPATH tests/conftest.py sets."""
    import subprocess
    import sys

    import mathtune

    assert Path(mathtune.__file__).resolve().is_relative_to(SRC)
    done = subprocess.run([sys.executable, "-c", "import mathtune; print(mathtune.__file__)"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=True)
    assert Path(done.stdout.strip()).resolve().is_relative_to(SRC), done.stdout
