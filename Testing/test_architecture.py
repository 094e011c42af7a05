"""The layers of ``ppir`` (docs/architecture.md): import contracts, no cycles, a light settings contract."""
from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
from ppir.protocols import registry

LOGIC = Path(__file__).resolve().parents[1] / "PPIRLogic"
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache", "pyproject.toml"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)})


def test_import_contracts_are_kept():
    result = _lint(LOGIC)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contracts(tmp_path):
    """The same check on a copy where the engine imports the application: it must fail."""
    copy = tmp_path / "logic"
    shutil.copytree(LOGIC, copy, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    joint = copy / "ppir" / "engine" / "joint.py"
    joint.write_text(joint.read_text() + "\nfrom ppir.app import report  # noqa: E402,F401\n")
    result = _lint(copy)
    assert result.returncode != 0
    assert "ppir.engine.joint -> ppir.app.report" in result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_anywhere():
    graph = grimp.build_graph("ppir", "ppir_bench", cache_dir=None)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_settings_contract_needs_only_the_standard_library():
    """The Slicer module imports ``ppir.app.contract`` in Slicer's own Python."""
    code = ("import sys; before = set(sys.modules); import ppir.app.contract; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names) - {'ppir'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_private_protocol_provides_its_entry_points():
    for name in registry.names(private=True):
        protocol = registry.get(name)
        module = registry.load(name)
        assert callable(module.moving_backend) and callable(module.FixedHandler), name
        assert hasattr(module, "serve_dealer_session") == protocol.needs_dealer, name
        if protocol.preflight:
            module_name, function = protocol.preflight.split(":")
            assert callable(getattr(importlib.import_module(module_name), function)), name
