"""The house rules of the package layout, checked on the source: rooms import only rooms below them, no private
name crosses a module boundary, no import cycles, and raw llama.cpp calls live in llama/ alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "marco_gguf"
# room -> floor: a module may import its own room and any room on a lower floor (the pipeline read bottom-up)
FLOORS = {
    "base": 0,  # errors, progress, files, typed JSON, machine facts: imports nothing of ours
    "version": 0,
    "arch": 1,  # the qwen3moe spec and Marco's facts
    "hf": 2,  # checkpoints
    "gguf_io": 3,  # GGUF files (metadata is built from a checkpoint)
    "llama": 4,  # the only room that talks to llama.cpp
    "quant": 5,
    "synth": 5,
    "convert": 6,  # the conversion pass (convert.py) and convert --calibrate
    "calibrate": 7,
    "measure": 7,
    "experts": 7,
    "export": 8,
    "server": 8,
    "demo": 9,
    "api": 10,  # marco_gguf/__init__.py
    "cli": 11,
    "__main__": 12,
}


def room_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    if rel == Path("__init__.py"):
        return "api"
    return rel.parts[0].removesuffix(".py")


def module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> list[ast.ImportFrom | ast.Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    return [n for n in nodes if isinstance(n, ast.ImportFrom | ast.Import)]


def target_room(module: str) -> str:
    parts = module.split(".")
    return "api" if len(parts) == 1 else parts[1]


# marco_gguf/calibration/ is data (the calibration text) and the script that wrote part of it
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent.name != "calibration")


def test_every_room_has_a_floor():
    """Reason: a new room must say where it stands, or the rule below checks nothing for it."""
    assert {room_of(p) for p in SOURCES} <= set(FLOORS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_or_across(path):
    """Reason: a module never imports a room above its own job (arch and base import nothing of ours but
    each other), so each room can be read, tested and reused without the ones built on it."""
    own = room_of(path)
    for node in imports(path):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("marco_gguf"):
            room = target_room(node.module)
            if room == "api" and node.names[0].name in FLOORS:  # `from marco_gguf import calibrate` names a room
                room = node.names[0].name
            assert FLOORS[room] <= FLOORS[own], f"{path.name}:{node.lineno} imports {node.module} ({room} > {own})"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_crosses_a_module(path):
    """Reason: a `_name` is its module's own business; what another module needs is public and documented."""
    for node in imports(path):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("marco_gguf"):
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            assert not private, f"{path.name}:{node.lineno} imports {private} from {node.module}"


def test_no_import_cycles():
    """Reason: a cycle makes import order matter and hides which module depends on which (lazy imports in a
    function body do not count: they run after both modules exist)."""
    modules = {module_of(p) for p in SOURCES}
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        deps = set()
        for node in imports(path, top_level_only=True):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("marco_gguf"):
                # `from package import module` depends on that module, not on the package's __init__
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules
                deps |= subs or {node.module}
        graph[module_of(path)] = deps
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, "import cycle: " + " -> ".join(trail[trail.index(m) :] + [m])
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if d in graph and d != m:
                visit(d, trail + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


def test_llama_cpp_is_called_from_llama_only():
    """Reason: one layer talks to llama.cpp (llama_cpp and ggml through ctypes), so its API changes land in
    one place; everything else asks that layer."""
    offenders = []
    for path in SOURCES:
        if room_of(path) == "llama":
            continue
        for node in imports(path):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n == "ctypes" or n.split(".")[0] == "llama_cpp" for n in names):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders
