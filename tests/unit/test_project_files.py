"""The project's metadata says each thing once: the version lives in `app/__init__.py`, and the
changelog has a section for it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import app

REPO = Path(__file__).resolve().parents[2]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_version_is_read_from_app_and_written_nowhere_else() -> None:
    project = pyproject()
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "app.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", app.__version__)


def test_the_console_script_is_the_cli_package() -> None:
    assert pyproject()["project"]["scripts"] == {"cascade": "app.cli.main:main"}


def test_the_changelog_has_a_section_for_the_current_version() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert re.search(rf"^## \[{re.escape(app.__version__)}\]", changelog, re.MULTILINE)
