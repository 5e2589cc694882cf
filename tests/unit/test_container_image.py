"""The Dockerfile and compose's use of it, read as files (no Docker daemon here).

What the image installs is the wheel built from exactly the sources the packaging test builds
its wheel from (`tests/integration/test_packaging.py`, which serves a chat turn from it), so
that test stands for the image's contents; this one holds the Dockerfile to its contract.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_packaging import SOURCES

ROOT = Path(__file__).resolve().parents[2]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for word, rest in instructions((ROOT / "Dockerfile").read_text()):
        if word == "FROM":
            found.append([])
        found[-1].append((word, rest))
    return found


def test_the_image_is_multi_stage_and_slim(stages: list[list[tuple[str, str]]]) -> None:
    assert len(stages) == 2
    assert all(stage[0][1].startswith("python:3.11-slim") for stage in stages)
    build, final = stages
    copied = {rest.split()[0] for word, rest in build if word == "COPY"}
    assert {source for c in copied for source in c.split()} | {"README.md"} >= set(SOURCES)
    # The final stage copies no source tree: it installs the wheels of the build stage only.
    assert not [rest for word, rest in final if word in ("COPY", "ADD")]
    (install,) = [rest for word, rest in final if word == "RUN" and "pip install" in rest]
    assert "from=build" in install and "--no-index" in install
    assert "[dev]" not in install and "-e " not in install


def test_the_image_runs_as_a_non_root_user_with_a_health_check(
    stages: list[list[tuple[str, str]]],
) -> None:
    final = stages[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    (health,) = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert "/healthz" in health
    (cmd,) = [rest for word, rest in final if word == "CMD"]
    assert json.loads(cmd)[:2] == ["cascade", "serve"]
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "CASCADE_STATE_DIR=/state" in env


def test_the_build_context_leaves_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "state"} <= ignored


def test_compose_builds_the_api_and_the_worker_from_the_dockerfile() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("api", "worker"):
        assert services[name]["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    # The image's check asks the API's /healthz; the worker serves no HTTP.
    assert "healthcheck" not in services["api"]
    assert services["worker"]["healthcheck"] == {"disable": True}


def test_a_production_install_carries_sniffio() -> None:
    # httpcore imports sniffio on every pooled request and retries the import when it is
    # missing, which costs a production install (no dev packages bring it) on every call.
    project = (ROOT / "pyproject.toml").read_text()
    start = project.index("\ndependencies = [")
    dependencies = project[start : project.index("\n]", start)]
    assert re.search(r'"sniffio\b', dependencies)
