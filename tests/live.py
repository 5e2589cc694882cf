"""A short end-to-end run of cascade against a live runtime: `python -m tests.live` (`make live`).

The runtime is `CASCADE_LIVE_RUNTIME_URL` (its key, if any, `CASCADE_LIVE_RUNTIME_API_KEY`); the
run refuses to start without it. It starts `cascade up` (its own Redis, the API and one worker)
with a temporary state directory on a free loopback port, then through the API: a session turn
and its follow-up, a tool turn (the built-in calculator), an image turn (a small PNG) and a batch
of 10. Each step prints `PASS|FAIL  step  detail`; the session is deleted afterwards and
`cascade up` stopped, which takes its Redis (and so every trace of the run) with it.
Exit status: 1 when a step failed (or cascade did not come up), 2 when the URL is unset.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI
from PIL import Image

from tests.redis_server import free_port
from tests.servers import stop_child

REPO = Path(__file__).resolve().parents[1]
READY_SECONDS = 90.0
BATCH_SIZE = 10

SESSION_PROMPT = "cascade live check: my name is Ada. Reply briefly."
FOLLOW_UP_PROMPT = "cascade live check: what is my name? Reply with the name only."
TOOL_PROMPT = "cascade live check: use the calculator to compute 1234 * 5678, then say the result."
IMAGE_PROMPT = "cascade live check: what colour is this image? One word."
BATCH_PROMPT = "cascade live check, batch item {n}: reply with the word ok."


def _extra(obj: Any, name: str) -> Any:
    extra = getattr(obj, "model_extra", None) or {}
    return extra.get(name)


def _png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (30, 90, 200)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@contextmanager
def cascade_up(
    runtime_url: str, runtime_key: str | None, state_dir: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`cascade up` on a free loopback port with its own Redis under `state_dir`; yields the API
    base URL once `/readyz` answers 200. Stopped with SIGTERM (then SIGKILL) on exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env |= {
        "CASCADE_RUNTIME_URL": runtime_url,
        "CASCADE_STATE_DIR": str(state_dir),
        "CASCADE_HOST": "127.0.0.1",
        "CASCADE_PORT": str(port),
        "CASCADE_LOG_FORMAT": "json",
        "PYTHONPATH": str(REPO),
    }
    if runtime_key:
        env["CASCADE_RUNTIME_API_KEY"] = runtime_key
    log = (state_dir / "cascade.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up"], env=env, cwd=REPO, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"cascade up exited with status {proc.returncode}")
            try:
                if httpx.get(url + "/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"cascade was not ready within {READY_SECONDS:.0f} s")
            time.sleep(0.2)
        yield url, proc
    finally:
        stop_child(proc)
        log.close()


class Steps:
    """Runs named steps; one that raises or returns False is a FAIL with a short reason."""

    def __init__(self) -> None:
        self.failed = 0

    def run(self, name: str, step: Callable[[], str]) -> None:
        try:
            detail = step()
            status = "PASS"
        except Exception as exc:  # a step's failure is reported, and the run goes on
            detail = f"{type(exc).__name__}: {_short(exc)}"
            status = "FAIL"
            self.failed += 1
        print(f"{status:4s}  {name:8s}  {detail}", flush=True)


def _short(exc: Exception) -> str:
    # Assertion messages are this script's own text; other exceptions are named by type only
    # (an upstream message could carry anything).
    return str(exc)[:200] if isinstance(exc, AssertionError) else "see the cascade log"


def run_steps(client: OpenAI, api: str) -> int:
    steps = Steps()
    session: dict[str, str] = {}

    def session_turn() -> str:
        first = client.chat.completions.create(
            model="cascade",
            messages=[{"role": "user", "content": SESSION_PROMPT}],
            max_tokens=64,
            extra_body={"store": True},
        )
        session_id = _extra(first, "session_id")
        assert isinstance(session_id, str), "no session_id in the answer"
        session["id"] = session_id
        second = client.chat.completions.create(
            model="cascade",
            messages=[{"role": "user", "content": FOLLOW_UP_PROMPT}],
            max_tokens=64,
            extra_body={"session_id": session_id},
        )
        assert second.choices[0].message.content is not None, "no content in the follow-up"
        return f"{session_id}: two turns, {len(second.choices[0].message.content)} chars"

    def tool_turn() -> str:
        response = client.chat.completions.create(
            model="cascade",
            messages=[{"role": "user", "content": TOOL_PROMPT}],
            max_tokens=256,
            extra_body={"server_tools": ["calculator"]},
        )
        ext = _extra(response, "cascade") or {}
        steps_taken = ext.get("steps", 0)
        assert steps_taken >= 2, f"the model did not call the calculator ({steps_taken} step)"
        return f"{steps_taken} steps, outcome {ext.get('outcome')}"

    def image_turn() -> str:
        response = client.chat.completions.create(
            model="cascade",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": _png_data_uri()}},
                        {"type": "text", "text": IMAGE_PROMPT},
                    ],
                }
            ],
            max_tokens=32,
        )
        usage = response.usage
        assert usage is not None and usage.prompt_tokens > 0, "no usage"
        return f"accepted, {usage.prompt_tokens} prompt tokens"

    def batch() -> str:
        lines = [
            {
                "custom_id": f"live-{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "cascade",
                    "messages": [{"role": "user", "content": BATCH_PROMPT.format(n=n)}],
                    "max_tokens": 16,
                },
            }
            for n in range(BATCH_SIZE)
        ]
        text = "".join(json.dumps(line) + "\n" for line in lines)
        uploaded = client.files.create(
            file=("live.jsonl", io.BytesIO(text.encode())), purpose="batch"
        )
        created = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 300
        while True:
            current = client.batches.retrieve(created.id)
            if current.status in ("completed", "failed", "cancelled", "expired"):
                break
            assert time.monotonic() < deadline, f"batch still {current.status} after 300 s"
            time.sleep(0.5)
        counts = current.request_counts
        assert current.status == "completed", f"batch {current.status}"
        assert counts is not None and counts.completed == BATCH_SIZE, f"counts {counts}"
        return f"{created.id}: {counts.completed}/{counts.total} completed"

    steps.run("session", session_turn)
    steps.run("tools", tool_turn)
    steps.run("image", image_turn)
    steps.run("batch", batch)
    if "id" in session:
        httpx.delete(f"{api}/v1/sessions/{session['id']}", timeout=10.0)
    return 1 if steps.failed else 0


def main() -> int:
    runtime_url = os.environ.get("CASCADE_LIVE_RUNTIME_URL", "").strip()
    if not runtime_url:
        print(
            "tests.live: set CASCADE_LIVE_RUNTIME_URL to the SGLang runtime to run against "
            "(and CASCADE_LIVE_RUNTIME_API_KEY if it has a key)",
            file=sys.stderr,
        )
        return 2
    key = os.environ.get("CASCADE_LIVE_RUNTIME_API_KEY") or None
    with tempfile.TemporaryDirectory(prefix="cascade-live-") as tmp:
        try:
            with (
                cascade_up(runtime_url, key, Path(tmp)) as (api, _),
                OpenAI(base_url=api + "/v1", api_key="live", max_retries=0, timeout=300) as client,
            ):
                return run_steps(client, api)
        except RuntimeError as exc:
            print(f"FAIL  up        {exc}", flush=True)
            return 1


if __name__ == "__main__":
    sys.exit(main())
