"""The project's metadata says each thing once: the version lives in `app/__init__.py` (and the
changelog has a section for it), and the pre-commit hooks run exactly `make lint`'s commands."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

import app

REPO = Path(__file__).resolve().parents[2]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def make_recipe(target: str, makefile: str | None = None) -> list[str]:
    """The commands of `target`'s recipe in `makefile` (default: the project's), with `$(VENV)`
    expanded to the Makefile's default."""
    makefile = (REPO / "Makefile").read_text() if makefile is None else makefile
    venv = re.search(r"^VENV \?= (\S+)$", makefile, re.MULTILINE)
    assert venv is not None
    recipe = re.search(rf"^{target}:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None, target
    return [line.strip().replace("$(VENV)", venv.group(1)) for line in recipe.group(1).splitlines()]


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


def test_pre_commit_runs_exactly_the_make_lint_commands() -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    assert [hook["entry"] for hook in hooks] == make_recipe("lint")
    for hook in hooks:
        assert hook["language"] == "system"
        assert hook["pass_filenames"] is False  # each command checks the whole tree, as make does


def test_make_recipe_reads_every_command_of_a_recipe_and_no_other() -> None:
    makefile = "VENV ?= env\n\nlint: setup\n\t$(VENV)/bin/a .\n\t$(VENV)/bin/b x\n\ntest:\n\tc\n"
    assert make_recipe("lint", makefile) == ["env/bin/a .", "env/bin/b x"]
    assert len(make_recipe("lint")) == 3
