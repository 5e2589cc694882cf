"""deploy/compose.scale.yaml: valid Compose, and wired as the scale-out needs: every runtime
behind the gateway, the gateway routing by cascade's routing key, every API replica and worker
talking to the gateway, nginx the one way in."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "compose.scale.yaml").read_text())
    return data


def test_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema_file = resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_every_runtime_is_behind_the_gateway_on_its_own_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    runtimes = sorted(name for name in services if name.startswith("sglang-"))
    assert len(runtimes) >= 2
    gpus = set()
    for name in runtimes:
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        gpus.update(device["device_ids"])
        assert "cascade runtime --profile" in " ".join(services[name]["command"])
    assert len(gpus) == len(runtimes)  # one GPU each
    command = " ".join(services["gateway"]["command"])
    assert "sglang_router.launch_router" in command
    assert all(f"http://{name}:30000" in command for name in runtimes)
    # `manual` keeps each x-smg-routing-key on one worker: cascade sends the session id there
    # (tests/integration/test_chat_api.py::test_a_session_turn_carries_its_routing_key).
    assert "--policy manual" in command


def test_api_replicas_and_workers_share_redis_and_the_gateway(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert service["deploy"]["replicas"] >= 2
        env = service["environment"]
        assert env["CASCADE_RUNTIME_URL"] == "http://gateway:30000"
        assert env["CASCADE_REDIS_URL"] == "redis://redis:6379/0"
        assert "cascade-state:/state" in service["volumes"]
    # Replicas publish no port (they would clash); nginx is the one way in.
    assert "ports" not in services["api"]
    assert services["front"]["ports"] == ["127.0.0.1:8080:8080"]
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server api:8080;" in conf and "proxy_buffering off;" in conf
