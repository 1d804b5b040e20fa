"""The package's shape, checked: stages stand apart around a core, with no import cycles and small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "shared" / "parascribe"
STAGES = ("router", "asr", "deepgram", "merger", "api", "ingest")
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``parascribe`` module that ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("parascribe"):
                # ``from parascribe import names`` imports the module names, not the package's __init__.
                if node.module != "parascribe":
                    found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("parascribe"))
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {i for i in _imports(path) if i in MODULES and i != name} for name, path in MODULES.items()}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in STAGES else None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _stage(m)))
def test_a_stage_imports_only_the_core_the_adapters_and_the_engines(module: str) -> None:
    stage = _stage(module)
    crossing = sorted(i for i in GRAPH[module] if _stage(i) not in (None, stage))
    assert crossing == [], f"{module} imports another stage: {crossing}; move what they share into the core"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not _stage(m) and m.split(".")[1:2] != ["local"]
                                           and m not in ("parascribe.cli",)))
def test_the_core_adapters_and_engines_import_no_stage(module: str) -> None:
    assert sorted(i for i in GRAPH[module] if _stage(i)) == []


def test_audio_has_no_storage_and_no_engine_code() -> None:
    assert sorted(GRAPH["parascribe.audio"]) == ["parascribe.errors"]


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert cycles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by concern"


def test_the_test_only_architecture_is_not_shipped() -> None:
    assert not any("parakeet_arch" in m or "tiny" in m for m in MODULES)
