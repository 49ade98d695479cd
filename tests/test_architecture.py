"""The layers hold: arrows point down only (api -> connectors -> dataflows), connectors use
only the core's one door (``dataflows.sdk``), the core has no import cycle, no module
outgrows one job, config loads without client libraries, and the README's "What runs"
table is the registry's."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from dataflows.registry import update_readme

REPO = Path(__file__).resolve().parents[1]
#: The core modules a connector may import: the SDK, which hands out everything else.
PUBLIC_SDK = {"dataflows.sdk"}
#: Lines a module may reach before it is split (one job per room: ``shared/STYLE.md``).
MODULE_LINES = 600
CLIENTS = ("sqlalchemy", "confluent_kafka", "httpx", "bson", "fsspec", "litestar", "uvicorn")


def imports(package: str) -> dict[str, set[str]]:
    """Per module of ``package``: the modules it imports (absolute), including lazy imports."""
    out: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.split(".")[0] in ("connectors", "api", "dataflows") \
                    and node.value.replace(".", "").replace("_", "").isalnum():
                found.add(node.value)  # a module named by string, e.g. for importlib
        out[module] = found
    return out


def test_the_core_imports_no_connector_and_no_api() -> None:
    upward = {m: sorted(i for i in found if i.split(".")[0] in ("connectors", "api"))
              for m, found in imports("dataflows").items()}
    assert {m: i for m, i in upward.items() if i} == {}


def test_connectors_import_only_the_public_sdk_of_the_core() -> None:
    wrong = {}
    for module, found in imports("connectors").items():
        bad = sorted(i for i in found if (i.startswith("dataflows") and i not in PUBLIC_SDK
                                          and i != "dataflows") or i.split(".")[0] == "api")
        if bad:
            wrong[module] = bad
    assert wrong == {}


def test_the_core_has_no_import_cycle() -> None:
    """Every import between core modules, lazy and ``TYPE_CHECKING`` ones included, points
    one way: the modules can be ordered so that each imports only earlier ones."""
    graph = {module: {i for i in found if i.startswith("dataflows.") and i != module}
             for module, found in imports("dataflows").items()}
    graph = {m: {i for i in deps if i in graph} for m, deps in graph.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_module_outgrows_one_job() -> None:
    sizes = {str(path.relative_to(REPO)): len(path.read_text().splitlines())
             for package in ("dataflows", "connectors", "api") for path in (REPO / package).rglob("*.py")}
    assert {path: lines for path, lines in sizes.items() if lines > MODULE_LINES} == {}


def test_the_api_names_no_connector() -> None:
    assert {m: sorted(i for i in f if i.startswith("connectors")) for m, f in imports("api").items()
            if any(i.startswith("connectors") for i in f)} == {}


def test_a_config_loads_without_client_libraries() -> None:
    code = ("import sys; from dataflows.registry import load_all; from dataflows.config import validate; "
            "load_all(); validate({'data_receiver': [], 'transforms': [], 'data_transmit': []}); "
            f"print(','.join(m for m in {CLIENTS!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == ""


def test_readme_what_runs_table_is_generated_from_the_registry() -> None:
    readme = (REPO / "README.md").read_text()
    assert update_readme(readme) == readme, "run: .venv/bin/python -m dataflows.registry --update README.md"


def test_the_suite_and_benchmarks_read_nothing_beside_the_repository() -> None:
    beside = "sha" + "red"  # ../shared, the developers' folder, absent from a user's clone
    offenders = []
    for path in [*REPO.glob("tests/**/*.py"), *REPO.glob("bench/*.py"), *REPO.glob("scripts/*")]:
        text = path.read_text()
        constants = {node.value for node in ast.walk(ast.parse(text)) if isinstance(node, ast.Constant)} \
            if path.suffix == ".py" else set()
        if beside in constants or f"../{beside}/" in text.replace("``", ""):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
    assert (REPO / "data" / "nab" / "LICENSE.txt").exists()
