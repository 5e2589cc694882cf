"""Import direction, read from the source (ast), not from what happens to be imported at run time.

The picture in docs/architecture.md: doors (`app.api`, and the CLI `app.cli`) → turn engine
(`app.agent`) → runtime/sessions/media/tools. Every import statement counts, including ones
inside functions and under `TYPE_CHECKING`, so a lazy import cannot hide a wrong-way dependency."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("app", "tools", "workers")
DOORS = ("app.api", "app.cli")
SUBPACKAGES = (
    "app.api",
    "app.cli",
    "app.agent",
    "app.runtime",
    "app.sessions",
    "app.media",
    "app.batches",
    "tools",
    "workers",
)
BELOW_THE_ENGINE = ("app.runtime", "app.sessions", "app.media", "tools")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module name an import statement in `source` may refer to. `from a import b` gives
    both `a` and `a.b` (b may be a submodule); relative imports are resolved against `module`."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def subpackage_of(name: str) -> str | None:
    return next((pkg for pkg in SUBPACKAGES if within(name, pkg)), None)


def source_modules() -> Iterator[tuple[str, set[str]]]:
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            name = module_name(path)
            yield (
                name,
                imported_names(path.read_text(), name, is_package=path.name == "__init__.py"),
            )


def door_violations(modules: Iterable[tuple[str, set[str]]]) -> list[str]:
    """`importer -> imported` for each module outside the doors that imports a door, and for each
    import of the CLI from outside it (the API does not call the command line either)."""

    def allowed(importer: str, imported: str) -> bool:
        if within(imported, "app.cli"):
            return within(importer, "app.cli")
        if within(imported, "app.api"):
            return any(within(importer, door) for door in DOORS)
        return True

    return [
        f"{name} -> {imported}"
        for name, imports in modules
        for imported in sorted(imports)
        if not allowed(name, imported)
    ]


def subpackage_graph(modules: Iterable[tuple[str, set[str]]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {pkg: set() for pkg in SUBPACKAGES}
    for name, imports in modules:
        source = subpackage_of(name)
        if source is None:
            continue
        for imported in imports:
            target = subpackage_of(imported)
            if target is not None and target != source:
                graph[source].add(target)
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle as a path `[a, b, …, a]`, or None when the graph is acyclic."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


@pytest.fixture(scope="module")
def modules() -> list[tuple[str, set[str]]]:
    found = list(source_modules())
    assert len(found) > 50, "the source tree was not found"
    return found


def test_only_the_doors_import_the_api_and_only_the_cli_imports_itself(
    modules: list[tuple[str, set[str]]],
) -> None:
    assert door_violations(modules) == []


def test_runtime_sessions_media_and_tools_never_import_the_agent(
    modules: list[tuple[str, set[str]]],
) -> None:
    graph = subpackage_graph(modules)
    assert {pkg: graph[pkg] & {"app.agent"} for pkg in BELOW_THE_ENGINE} == {
        pkg: set() for pkg in BELOW_THE_ENGINE
    }


def test_subpackages_import_each_other_without_cycles(
    modules: list[tuple[str, set[str]]],
) -> None:
    graph = subpackage_graph(modules)
    assert find_cycle(graph) is None
    assert "app.agent" in graph["app.api"], "the graph was not read"


def test_the_door_check_catches_a_store_importing_the_api() -> None:
    absolute = imported_names("from app.api.auth import authenticate\n", "app.media.files")
    relative = imported_names("def f():\n    from ..api import auth\n", "app.media.files")
    lazy_cli = imported_names("import app.cli.main\n", "app.api.chat")
    assert door_violations([("app.media.files", absolute)]) == [
        "app.media.files -> app.api.auth",
        "app.media.files -> app.api.auth.authenticate",
    ]
    assert door_violations([("app.media.files", relative)]) == [
        "app.media.files -> app.api",
        "app.media.files -> app.api.auth",
    ]
    assert door_violations([("app.api.chat", lazy_cli)]) == ["app.api.chat -> app.cli.main"]
    assert door_violations([("app.cli.main", {"app.api.app"})]) == []


def test_the_cycle_check_catches_a_cycle_between_subpackages() -> None:
    graph = subpackage_graph(
        [
            ("app.agent.loop", {"tools.registry"}),
            ("tools.builtin.fetch_url", {"app.media.fetch"}),
            (
                "app.media.intake",
                imported_names("from app.agent import loop\n", "app.media.intake"),
            ),
        ]
    )
    assert find_cycle(graph) == ["app.agent", "tools", "app.media", "app.agent"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
