"""Structured batches: schemas per job and per question, answers checked like chat's, failed
items reported as `invalid_json_answer`, and results served as data (JSONL, CSV) and as the
report's table with thumbnails."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from app.cli.batch import Api, build_report, render_report
from tests.integration.test_batch_cli import cascade as cascade_cli
from tests.integration.test_batch_jobs import png
from tests.integration.test_batch_support import (
    BatchApp,
    WorkerProcess,
    await_final,
    batch_api,
    batch_env,
    read_lines,
    request_line,
    running_worker,
    upload_jsonl,
)
from tests.redis_server import RedisServer
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

COLOUR = {
    "type": "object",
    "properties": {"colour": {"type": "string"}, "count": {"type": "integer"}},
    "required": ["colour", "count"],
}
KIND = {
    "type": "object",
    "properties": {"kind": {"type": "string"}, "old": {"type": "boolean"}},
    "required": ["kind", "old"],
}


@pytest.fixture
def photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(200):
        (folder / f"p{n:03d}.png").write_bytes(png((n, 255 - n, (7 * n) % 256), (40, 32)))
    monkeypatch.setenv("CASCADE_LOCAL_IMAGE_DIRS", str(folder))
    return folder


@pytest.fixture
def api(sim: SimHandle, redis_server: RedisServer, tmp_path: Path, photos: Path) -> BatchApp:
    with batch_api(sim, redis_server, tmp_path / "state") as app:
        yield app  # type: ignore[misc]


def results(api: BatchApp, batch_id: str, fmt: str) -> httpx.Response:
    url = f"{api.url}/v1/batches/{batch_id}/results"
    return httpx.get(url, params={"format": fmt}, timeout=60)


class Tables(HTMLParser):
    """The report's results table: header cells, rows of cell texts, images per row."""

    def __init__(self) -> None:
        super().__init__()
        self.header: list[str] = []
        self.rows: list[list[str]] = []
        self.images: list[int] = []
        self._in_table = False
        self._cell: list[str] | None = None
        self._section = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("class", "results") in attrs:
            self._in_table = True
        elif self._in_table and tag in ("thead", "tbody"):
            self._section = tag
        elif self._in_table and tag == "tr" and self._section == "tbody":
            self.rows.append([])
            self.images.append(0)
        elif self._in_table and tag in ("th", "td"):
            self._cell = []
        elif self._in_table and tag == "img" and self._section == "tbody":
            src = dict(attrs).get("src") or ""
            if src.startswith("data:image/jpeg;base64,"):
                self.images[-1] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif self._in_table and tag in ("th", "td") and self._cell is not None:
            text = "".join(self._cell).strip()
            (self.header if self._section == "thead" else self.rows[-1]).append(text)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


async def test_a_200_image_job_with_a_schema_per_question_downloads_as_data(
    api: BatchApp, sim: SimHandle, photos: Path
) -> None:
    sim.sim.add_rule(
        Rule(match="colour", output='Looks.\n</think>\n\n{"colour": "red", "count": 2}')
    )
    sim.sim.add_rule(Rule(match="kind", output='Hm.\n</think>\n\n{"kind": "photo", "old": false}'))
    job = {
        "folder": str(photos),
        "questions": [
            {"text": "Which colour, how many?", "response_schema": COLOUR},
            {"text": "What kind of picture, is it old?", "response_schema": KIND},
        ],
        "thinking_budget": 32,
    }
    response = await asyncio.to_thread(
        httpx.post, api.url + "/v1/jobs/image-questions", json=job, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["job"]["structured"] is True
    client = api.client()
    async with running_worker(api.settings, api.config):
        done = await await_final(client, response.json()["id"], seconds=240)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 400
    schemas = [r.body["response_format"]["json_schema"]["schema"] for r in sim.sim.requests]
    assert len(schemas) == 400
    assert schemas.count(COLOUR) == schemas.count(KIND) == 200

    as_csv = await asyncio.to_thread(results, api, done.id, "csv")
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    columns = ["custom_id", "image", "colour", "count", "kind", "old", "error"]
    assert rows[0] == columns
    assert len(rows) == 401
    first, second = rows[1], rows[2]
    assert first == ["img001-q1", str(photos / "p000.png"), "red", "2", "", "", ""]
    assert second == ["img001-q2", str(photos / "p000.png"), "", "", "photo", "false", ""]
    assert sum(1 for r in rows[1:] if r[2] == "red") == 200

    as_jsonl = await asyncio.to_thread(results, api, done.id, "jsonl")
    records = [json.loads(line) for line in as_jsonl.text.splitlines()]
    assert len(records) == 400
    assert all(list(r) == columns for r in records)
    assert records[1] == {
        "custom_id": "img001-q2",
        "image": str(photos / "p000.png"),
        "colour": None,
        "count": None,
        "kind": "photo",
        "old": False,
        "error": None,
    }

    def report() -> str:
        cli_api = Api(api.url, None)
        try:
            return render_report(build_report(cli_api, done.id, limit=5000))
        finally:
            cli_api.close()

    html = await asyncio.to_thread(report)
    table = Tables()
    table.feed(html)
    assert table.header == ["image", "custom_id", *columns[2:]]
    assert len(table.rows) == 400
    assert all(count == 1 for count in table.images)  # a thumbnail on every row
    assert table.rows[0][1:] == ["img001-q1", "red", "2", "", "", ""]


async def test_a_batch_line_whose_answer_fails_twice_is_an_invalid_json_answer_item(
    api: BatchApp, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="broken", output="{nope", ignore_response_format=True))
    sim.sim.add_rule(Rule(match="could not be used", output="{nope", ignore_response_format=True))
    sim.sim.add_rule(Rule(match="fine", output='{"colour": "blue", "count": 1}'))
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": COLOUR}}
    client = api.client()
    file_id = upload_jsonl(
        client,
        [
            request_line("ok", "a fine one", response_format=fmt, server_tools=[]),
            request_line("bad", "a broken one", response_format=fmt, server_tools=[]),
        ],
    )
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    async with running_worker(api.settings, api.config):
        done = await await_final(client, batch.id)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    [error] = read_lines(client, done.error_file_id)
    assert error["custom_id"] == "bad"
    body = error["response"]["body"]["error"]
    assert body["code"] == "invalid_json_answer"
    assert body["cascade"]["answer"] == "{nope"
    # Tried once and retried once with the reason; the item is not retried again.
    assert len([r for r in sim.sim.requests if "broken" in json.dumps(r.body)]) == 2
    rows = list(
        csv.reader(io.StringIO((await asyncio.to_thread(results, api, done.id, "csv")).text))
    )
    assert rows[0] == ["custom_id", "image", "colour", "count", "error"]
    assert rows[1] == ["ok", "", "blue", "1", ""]
    assert rows[2][:4] == ["bad", "", "", ""] and rows[2][4].startswith("invalid_json_answer:")


def test_results_of_a_running_batch_are_a_409(api: BatchApp) -> None:
    client = api.client()
    file_id = upload_jsonl(client, [request_line("a", "hello")])
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    response = results(api, batch.id, "csv")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "batch_not_done"


def test_cli_run_with_a_schema_writes_the_csv(
    api: BatchApp, sim: SimHandle, tmp_path: Path
) -> None:
    worker = WorkerProcess(api.settings, batch_env(batch_inflight=4), tmp_path, name="csv-w")
    worker.start()
    try:
        sim.sim.add_rule(Rule(output='{"total": 12.5, "shop": "Bakery"}'))
        receipts = tmp_path / "receipts"
        receipts.mkdir()
        for n in range(3):
            (receipts / f"r{n}.png").write_bytes(png((10 * n, 20, 30)))
        schema = tmp_path / "receipt.json"
        schema.write_text(
            json.dumps(
                {
                    "type": "object",
                    "properties": {"shop": {"type": "string"}, "total": {"type": "number"}},
                    "required": ["shop", "total"],
                }
            )
        )
        out = tmp_path / "out.csv"
        done = cascade_cli(
            api,
            "run",
            str(receipts),
            "-q",
            "Shop and total?",
            "--schema",
            str(schema),
            "--csv",
            str(out),
            "--interval",
            "0.2",
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        rows = list(csv.reader(io.StringIO(out.read_text())))
        assert rows[0] == ["custom_id", "image", "shop", "total", "error"]
        assert [r[2:] for r in rows[1:]] == [["Bakery", "12.5", ""]] * 3
    finally:
        worker.stop()
