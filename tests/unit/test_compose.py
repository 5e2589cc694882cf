"""compose.yaml: valid against the Compose specification's JSON schema (shipped by the
check-jsonschema package), and structured as the deployment needs."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.runtime.launch import PROFILES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema_file = resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert errors == [], [f"{list(e.path)}: {e.message}" for e in errors]


def test_services_and_their_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"sglang", "redis", "api", "worker"}
    assert services["api"]["command"][:2] == ["cascade", "serve"]
    assert services["worker"]["command"] == ["cascade", "worker"]
    runtime_command = " ".join(services["sglang"]["command"])
    assert "cascade runtime --profile" in runtime_command  # the same command as `--print`
    assert (
        services["sglang"]["environment"]["CASCADE_PROFILE"].split(":-")[1].rstrip("}") in PROFILES
    )
    assert services["sglang"]["image"].startswith("lmsysorg/sglang:v0.5.23")


def test_healthchecks_volumes_and_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "/health" in " ".join(services["sglang"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--appendfsync") + 1] == "everysec"
    assert any(v.startswith("redis-data:") for v in services["redis"]["volumes"])
    assert any(v.startswith("hf-cache:") for v in services["sglang"]["volumes"])
    assert set(compose["volumes"]) == {"hf-cache", "redis-data", "cascade-state"}
    for name in ("api", "worker"):  # uploaded files are read by both
        assert "cascade-state:/state" in services[name]["volumes"]
        assert services[name]["environment"]["CASCADE_STATE_DIR"] == "/state"
    devices = services["sglang"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert "sglang" in depends
        assert services[name]["environment"]["CASCADE_RUNTIME_URL"] == "http://sglang:30000"
