"""docs/architecture.md matches the code: its import list is the source's subpackage graph,
and every module it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.unit.test_layout import REPO, source_modules, subpackage_graph

DOC = REPO / "docs" / "architecture.md"


def documented_graph(text: str) -> dict[str, set[str]]:
    block = re.search(r"```imports\n(.*?)```", text, re.S)
    assert block is not None, "the ```imports block is missing"
    graph: dict[str, set[str]] = {}
    for line in block.group(1).strip().splitlines():
        source, _, targets = line.partition("->")
        graph[source.strip()] = {t.strip() for t in targets.split(",") if t.strip()}
    return graph


def test_the_documented_import_direction_is_the_codes() -> None:
    assert documented_graph(DOC.read_text()) == subpackage_graph(list(source_modules()))


def test_every_module_the_document_names_exists() -> None:
    named = set(re.findall(r"\b((?:app|tools|workers|templates)/[\w/]+\.py)\b", DOC.read_text()))
    assert len(named) > 20
    missing = sorted(path for path in named if not (REPO / path).is_file())
    assert missing == []


def test_a_wrong_edge_in_the_document_is_caught() -> None:
    text = DOC.read_text().replace("tools -> app.media", "tools -> app.media, app.api")
    assert documented_graph(text) != subpackage_graph(list(source_modules()))
    assert Path(DOC).is_file()
