"""The package's shape, checked from its imports: arrows only point down the layers, no
import cycles, no private name imported across modules, pure cores import no Dask, no
SQLAlchemy and do no I/O, the worker side never imports the store or the scheduler, and no
module is long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "balsam_dask"
#: Layers, bottom first: a module may import its own layer and those below, never above.
# fmt: off
LAYERS: list[tuple[str, ...]] = [
    ("errors", "private", "daskconfig"),
    ("validate",),
    ("spec",),
    ("protocol", "template", "apps", "function", "payload", "network", "mpi_tasks", "packing", "taskdb", "reports"),
    ("store",),
    ("worker", "scheduler"),
    ("client",),
    ("deploy",),
    ("__init__", "cli", "commands", "serve", "demo", "worker_setup", "node_worker"),
]
# fmt: on
#: Siblings that must not import each other.
APART = [("worker", "scheduler"), ("worker", "store"), ("scheduler", "client"), ("scheduler", "worker")]
#: Pure cores: no Dask, no database, no processes, no files.
PURE = ("spec", "validate", "protocol", "template", "packing", "mpi_tasks.launchers", "deploy.jobs", "deploy.systems",
        "taskdb.fields", "taskdb.apps", "taskdb.rows", "taskdb.job", "taskdb.site", "taskdb.sitetemplate",
        "scheduler.snapshot",
        "reports.records", "reports.window", "reports.timeline", "reports.capacity", "reports.stats",
        "reports.frames")  # fmt: skip
IMPURE_IMPORTS = ("dask", "distributed", "sqlalchemy", "subprocess", "asyncio", "socket", "threading")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(module imported, names, under TYPE_CHECKING) for each balsam_dask import."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for b in node.body for n in ast.walk(b))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "balsam_dask":
            out.append((node.module, [a.name for a in node.names], id(node) in typing_only))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "balsam_dask":
                    out.append((a.name, [], id(node) in typing_only))
    return out


def _target(module: str, name: str) -> str:
    """The module an import reaches: ``from balsam_dask.x import y`` reaches x.y if y is a module."""
    short = module.removeprefix("balsam_dask").lstrip(".")
    joined = f"{short}.{name}" if short else name
    return joined if joined in MODULES else short or "__init__"


def _edges(typing_too: bool = False) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for module, names, typing_only in _imports(path):
            if typing_only and not typing_too:
                continue
            for name in names or [""]:
                target = _target(module, name) if name else module.removeprefix("balsam_dask.")
                if target != mod:
                    edges[mod].add(target)
    return edges


def _layer(mod: str) -> int:
    head = mod.split(".")[0]
    for i, names in enumerate(LAYERS):
        if mod in names or head in names:
            return i
    raise AssertionError(f"module {mod} is in no layer of tests/test_layout.py")


def _part(mod: str) -> str:
    return mod.split(".")[0]


def test_every_module_has_a_layer() -> None:
    for mod in MODULES:
        _layer(mod)


def test_imports_point_down() -> None:
    upward = [f"{m} -> {t}" for m, ts in _edges().items() for t in ts if _layer(t) > _layer(m)]
    assert upward == []


def test_sides_that_must_not_meet() -> None:
    bad = [f"{m} -> {t}" for m, ts in _edges(typing_too=True).items() for t in ts
           for a, b in APART if _part(m) == a and _part(t) == b]  # fmt: skip
    assert bad == []


def test_no_import_cycles() -> None:
    edges = _edges(typing_too=True)  # a cycle through TYPE_CHECKING imports is a cycle of concepts too
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append([*stack[stack.index(t) :], t])
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_private_names_across_modules() -> None:
    bad = [f"{mod}: {module}.{n}" for mod, path in MODULES.items() for module, names, _ in _imports(path)
           for n in names if n.startswith("_")]  # fmt: skip
    assert bad == []


@pytest.mark.parametrize("core", PURE)
def test_pure_cores_do_no_io(core: str) -> None:
    for mod, path in MODULES.items():
        if mod != core and not mod.startswith(core + "."):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in IMPURE_IMPORTS, f"{mod} imports {n}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "open", f"{mod} opens a file (line {node.lineno})"


def test_no_long_modules() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_plugin_is_a_thin_set_of_hooks() -> None:
    """BalsamPlugin's methods are Dask's hooks, its lifecycle and a few public calls."""
    tree = ast.parse((ROOT / "scheduler" / "plugin.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BalsamPlugin"]
    methods = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    hooks = {
        "__init__",
        "start",
        "close",
        "update_graph",
        "transition",
        "add_worker",
        "remove_worker",
        "log_event",
        "remove_client",
    }
    assert methods - hooks <= {"nodes", "placed", "_poll", "_adopt", "new_allocation", "update_allocation", "kill"}
    assert len(cls.body) < 25
