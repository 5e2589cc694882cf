"""`pip install .` (not editable) gives a working cascade.

The wheel is built from a copy of the sources (so no `build/` directory in the checkout can feed
it), installed with `pip install --target` into a temporary directory, and run from another
temporary directory with only that directory on `PYTHONPATH` (its dependencies come from this
interpreter's environment). The served process is run with `PYTHONVERBOSE`, so its log names the
file of every module it loaded: none may come from the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import app
from tests.redis_server import RedisServer
from tests.servers import serve_in_subprocess
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import running_simulator

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("app", "tools", "workers", "templates")
SOURCES = ("app", "tools", "workers", "templates", "pyproject.toml", "README.md")
TEMPLATES = (
    "templates/qwen3_6_chat.jinja",
    "templates/prompts/describe.jinja",
    "templates/prompts/inventory.jinja",
    "templates/batch_report.html.jinja",
    "templates/status.html.jinja",
    "templates/approval.jinja",
)

FIND_APP = "import importlib.util as u; s = u.find_spec('app'); print(s and s.origin or '')"
PROBE = """
import importlib.metadata, json
import app, templates
from app.batches.config import REPO_TEMPLATES
print(json.dumps({
    "app": app.__file__,
    "templates": str(REPO_TEMPLATES),
    "found": sorted(
        str(p.relative_to(REPO_TEMPLATES.parent)) for p in REPO_TEMPLATES.rglob("*.jinja")
    ),
    "version": importlib.metadata.version("cascade"),
}))
"""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    site: Path
    cwd: Path

    def env(self) -> dict[str, str]:
        """The child's environment: this one without `CASCADE_*`, `PYTHONPATH` = the install."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
        return env | {"PYTHONPATH": str(self.site)}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(src), "-w", root],
        cwd=root,
        check=True,
        capture_output=True,
    )
    (wheel,) = root.glob("*.whl")
    site = root / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        cwd=root,
        check=True,
        capture_output=True,
    )
    cwd = root / "run"
    cwd.mkdir()
    return Installed(wheel=wheel, site=site, cwd=cwd)


def test_the_wheel_carries_the_version_from_app_and_the_templates(installed: Installed) -> None:
    assert installed.wheel.name == f"cascade-{app.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    assert set(TEMPLATES) <= names
    assert {"app/cli/__main__.py", "app/api/files_api.py", "templates/__init__.py"} <= names


def test_the_installed_package_finds_its_templates_inside_the_install(
    installed: Installed,
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=installed.env(),
        cwd=installed.cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    probe = json.loads(out)
    assert Path(probe["app"]) == installed.site / "app" / "__init__.py"
    assert Path(probe["templates"]) == installed.site / "templates"
    assert set(probe["found"]) == set(TEMPLATES)
    assert probe["version"] == app.__version__


def first_party_roots() -> set[Path]:
    """The directories holding cascade's packages other than the install: this checkout, and
    wherever this interpreter's environment finds `app` without `PYTHONPATH` (an editable
    install)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run(
        [sys.executable, "-c", FIND_APP],
        env=env,
        cwd="/",
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    roots = {REPO, Path(app.__file__).resolve().parents[1]}
    if found:
        roots.add(Path(found).resolve().parents[1])
    return roots


def loaded_files(log: str) -> set[Path]:
    """The source and bytecode files `PYTHONVERBOSE` reports as loaded."""
    return {Path(path) for path in re.findall(r"(/[^\s']+\.pyc?)\b", log)}


def test_cascade_serve_from_the_install_answers_a_chat_turn(
    installed: Installed, redis_server: RedisServer, tmp_path: Path
) -> None:
    log_path = tmp_path / "serve.log"
    with running_simulator() as sim:
        sim.sim.add_rule(Rule(match="packaged", output="Served from the wheel."))
        env = installed.env() | {
            "CASCADE_RUNTIME_URL": sim.url,
            "CASCADE_REDIS_URL": redis_server.url,
            "CASCADE_STATE_DIR": str(tmp_path / "state"),
            "PYTHONVERBOSE": "1",
        }
        with serve_in_subprocess(log_path, env, cwd=installed.cwd) as (url, _):
            response = httpx.post(
                url + "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "packaged?"}]},
                timeout=30,
            )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "Served from the wheel."
        assert "packaged?" in json.dumps(sim.sim.requests[-1].body)
    loaded = loaded_files(log_path.read_text())
    site = installed.site.resolve()
    for module in ("app/__init__.py", "app/api/app.py", "app/cli/main.py", "templates/__init__.py"):
        assert site / module in loaded, module
    packages = [root / name for root in first_party_roots() for name in FIRST_PARTY]
    from_checkout = sorted(str(p) for p in loaded if any(p.is_relative_to(d) for d in packages))
    assert from_checkout == []
