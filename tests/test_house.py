"""The house: one ``fedpriv`` import root, imports that run one way, light entry points.

* Every module's imports (module-level and lazy ones alike) are read from its
  source: ``shared_models`` imports none of the other packages; ``client`` and
  ``server`` import only ``shared_models`` (and themselves); nothing a deployed
  node or coordinator runs imports ``simulations``; there is no import cycle.
* The wheel holds every subpackage under ``fedpriv/`` and nothing top-level.
* ``fedpriv-server init``, ``fedpriv-client check-data`` and ``--help`` load no torch.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("client", "server", "shared_models", "simulations")
#: What each package may import (besides itself).
ALLOWED = {
    "shared_models": set(),
    "client": {"shared_models"},
    "server": {"shared_models"},
    "simulations": {"client", "server", "shared_models"},
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "fedpriv." + ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every fedpriv import of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            head = name.split(".")[0]
            if head in PACKAGES:
                found.append((name, node.lineno, True))  # a bare top-level import
            elif head == "fedpriv":
                found.append((name, node.lineno, id(node) in top_level))
    return found


def import_graph(root: Path = REPO) -> dict[str, list[tuple[str, int, bool]]]:
    """fedpriv module -> the fedpriv modules it imports (resolved to real modules)."""
    files = {_module_name(p, root): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    graph: dict[str, list[tuple[str, int, bool]]] = {}
    for module, path in files.items():
        edges = []
        for name, line, top in _imports(path):
            target = name
            while target and target not in files and "." in target:
                target = target.rsplit(".", 1)[0]
            edges.append((target if target in files else name, line, top))
        graph[module] = edges
    return graph


def direction_violations(graph: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    bad = []
    for module, edges in graph.items():
        source = module.split(".")[1]
        for target, line, _ in edges:
            if not target.startswith("fedpriv."):
                bad.append(f"{module}:{line} imports the bare top-level {target!r}")
                continue
            dest = target.split(".")[1]
            if dest != source and dest not in ALLOWED[source]:
                bad.append(f"{module}:{line} imports {target} ({source} -> {dest})")
    return bad


def cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """Import cycles among modules, over every import (a lazy one too)."""
    adjacency = defaultdict(set)
    for module, edges in graph.items():
        for target, _, _ in edges:
            if target in graph and target != module and not _is_package_of(target, module):
                adjacency[module].add(target)
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(adjacency[node]):
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def _is_package_of(package: str, module: str) -> bool:
    # a module's own package __init__ is imported on the way to it: not an arrow of ours
    return module.startswith(package + ".")


def test_imports_run_one_way():
    assert direction_violations(import_graph()) == []


def test_there_is_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_catch_a_reintroduced_arrow(tmp_path):
    """The same checks fail on a copy of the tree with one wrong arrow and one cycle added."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        for path in (REPO / pkg).rglob("*.py"):
            target = tmp_path / pkg / path.relative_to(REPO / pkg)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    round_py = tmp_path / "client" / "round.py"
    round_py.write_text(round_py.read_text() + "\nfrom fedpriv.simulations.apps import x\n")
    ledger = tmp_path / "shared_models" / "accounting.py"
    ledger.write_text(ledger.read_text() + "\nfrom fedpriv.shared_models.ledger import y\n")
    graph = import_graph(tmp_path)
    assert any("fedpriv.client.round" in v and "client -> simulations" in v for v in
               direction_violations(graph))  # fmt: skip
    assert any({"fedpriv.shared_models.accounting", "fedpriv.shared_models.ledger"} <= set(c)
               for c in cycles(graph))  # fmt: skip


def test_lint_is_clean_and_bans_bare_role_imports(tmp_path):
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run(
        [str(ruff), "check", "--no-cache", str(REPO)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bare = tmp_path / "bare.py"
    bare.write_text("import server\nfrom client.app import app\n")
    result = subprocess.run(
        [str(ruff), "check", "--no-cache", "--config", str(REPO / "pyproject.toml"),
         "--select", "TID251", str(bare)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout.count("TID251") == 2, result.stdout


def _torch_loaded(code: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": ""},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    modules = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    return "torch" in modules


@pytest.mark.parametrize(
    "code",
    [
        "import fedpriv.server.certs",
        "import fedpriv.shared_models, fedpriv.client, fedpriv.server, fedpriv.simulations",
        "import fedpriv.shared_models.data_folder, fedpriv.client.ledger_store",
        "from fedpriv.server.cli import main; main(['init', '--help'])",
        "from fedpriv.client.cli import main; main(['check-data', '--help'])",
        "from fedpriv.simulations.cli import main; main(['--help'])",
    ],
)
def test_light_entry_points_load_no_torch(code):
    wrapped = f"import sys\ntry:\n    {code}\nexcept SystemExit as e:\n    sys.exit(e.code)"
    assert not _torch_loaded(wrapped)


def test_init_and_check_data_themselves_load_no_torch(tmp_path):
    code = (
        "import sys\n"
        "from fedpriv.server.cli import main\n"
        f"main(['init', {str(tmp_path / 'dep')!r}, '--nodes', '1'])\n"
    )
    assert not _torch_loaded(code)
    assert (tmp_path / "dep" / "ca.crt").is_file()


@pytest.mark.slow
def test_the_wheel_holds_every_subpackage_under_fedpriv_and_nothing_else(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("fedpriv-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"fedpriv", next(t for t in top if t.endswith(".dist-info"))}
    packages = {str(p.parent.relative_to(REPO)) for pkg in PACKAGES
                for p in (REPO / pkg).rglob("__init__.py")}  # fmt: skip
    for package in packages:
        assert f"fedpriv/{package}/__init__.py" in names, package
    modules = {str(p.relative_to(REPO)) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    assert {f"fedpriv/{m}" for m in modules} <= set(names)
