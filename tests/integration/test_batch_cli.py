"""`cascade batch …` against a live API: run, watch (in a pseudo-terminal), Ctrl-C, report."""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.integration.test_batch_jobs import png
from tests.integration.test_batch_support import (
    REPO,
    BatchApp,
    WorkerProcess,
    batch_api,
    batch_env,
    request_line,
    upload_jsonl,
    wait_final,
)
from tests.redis_server import RedisServer
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle


@pytest.fixture
def api(sim: SimHandle, redis_server: RedisServer, tmp_path: Path) -> BatchApp:
    with batch_api(sim, redis_server, tmp_path / "state") as app:
        yield app  # type: ignore[misc]


@pytest.fixture
def worker(api: BatchApp, tmp_path: Path) -> WorkerProcess:
    process = WorkerProcess(api.settings, batch_env(batch_inflight=4), tmp_path, name="cli-w")
    process.start()
    yield process  # type: ignore[misc]
    process.stop()


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    return env | {"PYTHONUNBUFFERED": "1"}


def cascade(api: BatchApp, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "batch", *args, "--url", api.url],
        env=cli_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def in_pty(api: BatchApp, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """`cascade batch ARGS` with its stdout and stderr on a pseudo-terminal."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "batch", *args, "--url", api.url],
        env=cli_env(),
        cwd=REPO,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    return proc, leader


def read_pty(leader: int, until: float, stop: re.Pattern[str] | None = None) -> str:
    out = b""
    while time.monotonic() < until:
        ready, _, _ = select.select([leader], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if stop is not None and stop.search(out.decode(errors="replace")):
                break
    return out.decode(errors="replace")


def test_run_a_folder_with_questions_downloads_results(
    api: BatchApp, worker: WorkerProcess, sim: SimHandle, tmp_path: Path
) -> None:
    sim.sim.add_rule(Rule(match=None, output="A flat colour."))
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, colour in (("one.png", (1, 1, 200)), ("two.jpg.png", (200, 1, 1))):
        (photos / name).write_bytes(png(colour))
    (photos / "readme.md").write_text("skip me")
    out = tmp_path / "results.jsonl"
    done = cascade(
        api,
        "run",
        str(photos),
        "-q",
        "What is it?",
        "-q",
        "Any text?",
        "--out",
        str(out),
        "--interval",
        "0.1",
    )
    assert done.returncode == 0, done.stderr
    assert "submitted" in done.stderr
    assert re.search(r"batch batch_\w+ completed: 4 completed, 0 failed of 4", done.stderr)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == ["img1-q1", "img1-q2", "img2-q1", "img2-q2"]
    assert not (tmp_path / "results.errors.jsonl").exists()
    batch_id = re.search(r"(batch_[0-9a-f]{24})", done.stderr).group(1)  # type: ignore[union-attr]
    status = cascade(api, "status", batch_id)
    assert status.returncode == 0
    assert "4/4 done" in status.stdout and "completed" in status.stdout
    listing = cascade(api, "list")
    assert batch_id in listing.stdout and "completed" in listing.stdout
    again = tmp_path / "again.jsonl"
    download = cascade(api, "download", batch_id, "--out", str(again))
    assert download.returncode == 0
    assert again.read_text() == out.read_text()


def test_jsonl_input_and_error_file(
    api: BatchApp, worker: WorkerProcess, sim: SimHandle, tmp_path: Path
) -> None:
    sim.sim.add_rule(Rule(match=None, output="fine"))
    source = tmp_path / "requests.jsonl"
    source.write_text(json.dumps(request_line("a", "hello")) + "\n" + "{broken\n")
    out = tmp_path / "out.jsonl"
    done = cascade(api, "run", str(source), "--out", str(out), "--interval", "0.1")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["custom_id"] for line in out.read_text().splitlines()] == ["a"]
    errors = (tmp_path / "out.errors.jsonl").read_text().splitlines()
    assert len(errors) == 1 and json.loads(errors[0])["error"]["code"] == "invalid_json"
    assert "line 2" in done.stderr  # the validation error is shown


def test_watch_draws_live_progress_on_a_terminal(
    api: BatchApp, worker: WorkerProcess, sim: SimHandle
) -> None:
    sim.sim.update_config(ttft=0.1, max_running=2)
    sim.sim.add_rule(Rule(match=None, output="ok"))
    client = api.client()
    file_id = upload_jsonl(client, [request_line(f"p{i}", f"q{i}") for i in range(24)])
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    proc, leader = in_pty(api, "watch", batch.id, "--interval", "0.05")
    try:
        text = read_pty(leader, time.monotonic() + 60, re.compile(r"completed: \d+ completed"))
        assert proc.wait(timeout=20) == 0
    finally:
        os.close(leader)
    frames = [f for f in text.split("\r") if f.startswith("[")]
    assert len(frames) >= 3  # the same line redrawn in place
    assert all("\x1b[K" in f for f in frames)
    done_counts = [int(m.group(1)) for f in frames if (m := re.search(r"\] (\d+)/24 done", f))]
    assert done_counts == sorted(done_counts) and done_counts[-1] == 24
    assert any(re.search(r"\d+\.\d/s", f) and re.search(r"ETA \d+:\d\d", f) for f in frames)
    assert "0 failed" in frames[-1] and "completed" in frames[-1]
    assert "24 completed, 0 failed of 24" in text


def test_ctrl_c_leaves_the_batch_running(
    api: BatchApp, worker: WorkerProcess, sim: SimHandle
) -> None:
    sim.sim.update_config(ttft=0.3, max_running=1)
    sim.sim.add_rule(Rule(match=None, output="slow"))
    client = api.client()
    file_id = upload_jsonl(client, [request_line(f"s{i}", f"q{i}") for i in range(8)])
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    proc, leader = in_pty(api, "watch", batch.id, "--interval", "0.05")
    try:
        read_pty(leader, time.monotonic() + 20, re.compile(r"/8 done"))
        os.killpg(proc.pid, signal.SIGINT)
        text = read_pty(leader, time.monotonic() + 10, re.compile(r"watch batch_\w+"))
        assert proc.wait(timeout=10) == 130
    finally:
        os.close(leader)
    assert "keeps running" in text
    assert f"cascade batch watch {batch.id}" in text
    assert client.batches.retrieve(batch.id).status == "in_progress"
    assert wait_final(client, batch.id, 30).status == "completed"


class _Report(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.errors: list[str] = []
        self.answers: list[str] = []
        self.details = 0
        self._capture: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        if tag == "details":
            self.details += 1
        if tag == "div" and "error" in classes:
            self._capture = self.errors
        elif tag == "div" and "answer" in classes:
            self._capture = self.answers

    def handle_data(self, data: str) -> None:
        if self._capture is not None and data.strip():
            self._capture.append(data.strip())
            self._capture = None


def test_report_shows_thumbnail_answer_reasoning_and_error(
    api: BatchApp, worker: WorkerProcess, sim: SimHandle, tmp_path: Path
) -> None:
    sim.sim.add_rule(
        Rule(match=None, output="Red pixels everywhere.\n</think>\n\nA <b>red</b> square.")
    )
    good = "data:image/png;base64," + base64.b64encode(png((220, 0, 0))).decode()
    bad = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()
    refs = tmp_path / "images.txt"
    refs.write_text(f"{good}\n{bad}\n")
    run = cascade(
        api,
        "run",
        str(refs),
        "-q",
        "What is it?",
        "--thinking-budget",
        "64",
        "--no-wait",
    )
    assert run.returncode == 0, run.stderr
    batch_id = run.stdout.strip()
    client = api.client()
    assert wait_final(client, batch_id, 30).status == "completed"
    html_path = tmp_path / "report.html"
    report = cascade(api, "report", batch_id, "--html", str(html_path))
    assert report.returncode == 0, report.stderr
    assert "2 images, 2 answers" in report.stdout
    html = html_path.read_text()
    parsed = _Report()
    parsed.feed(html)
    assert len(parsed.images) == 1
    assert parsed.images[0].startswith("data:image/jpeg;base64,")
    assert parsed.answers == ["A <b>red</b> square."]  # text, escaped in the HTML
    assert "A &lt;b&gt;red&lt;/b&gt; square." in html
    assert len(parsed.errors) == 1 and "image" in parsed.errors[0].lower()
    assert parsed.details == 1 and "Red pixels everywhere." in html
    assert "What is it?" in html


def test_cli_errors_are_one_line(api: BatchApp, tmp_path: Path) -> None:
    missing = cascade(api, "status", "batch_" + "0" * 24)
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("cascade batch: no batch with id")
    nothing = cascade(api, "run", str(tmp_path / "nope"), "-q", "x")
    assert nothing.returncode == 1 and "no such file" in nothing.stderr
    down = subprocess.run(
        [sys.executable, "-m", "app.cli", "batch", "list", "--url", "http://127.0.0.1:9"],
        env=cli_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1 and "cannot reach cascade" in down.stderr
