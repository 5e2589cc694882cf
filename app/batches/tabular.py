"""A batch's results as data: one row per input line, one column per schema field.

The columns are `custom_id`, `image`, then the top-level properties of the JSON schemas the
batch's request lines asked for (`response_format` json_schema; in first-seen order, so a job
with a schema per question gets the union), then `error`. Lines that asked for `json_object`
add the keys their answers have. A row's fields come from its answer parsed as JSON; a failed
item has its error (code and message; the raw answer stays in the error file's line) and empty
fields. Rows follow the input file's order, so every input line has exactly one row.

Served as CSV (values of nested fields as JSON text) or JSONL (values as JSON) by
`GET /v1/batches/{id}/results`; the CLI's report and `--csv` use the same rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from app.batches.lines import line_error_text

ResultFormat = Literal["jsonl", "csv"]
FIXED_COLUMNS = ("custom_id", "image")


@dataclass
class ResultRow:
    """One input line's result; `answer` is the parsed JSON object (None when there is none)."""

    custom_id: str
    image: str | None
    answer: dict[str, Any] | None
    error: str | None
    image_sha256: str | None = None
    text: str | None = None  # the answer as the model wrote it


@dataclass
class ResultTable:
    fields: list[str] = field(default_factory=list)
    rows: list[ResultRow] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [*FIXED_COLUMNS, *self.fields, "error"]


def schema_fields(body: dict[str, Any]) -> list[str]:
    """The top-level properties of a request body's json_schema response format."""
    fmt = body.get("response_format") or {}
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return []
    schema = (fmt.get("json_schema") or {}).get("schema") or {}
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return [str(name) for name in properties] if isinstance(properties, dict) else []


def request_image(body: dict[str, Any]) -> str | None:
    """The first image a request line names (a data URI reads as `inline image`)."""
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if isinstance(url, str):
                return "inline image" if url.startswith("data:") else url
    return None


def _error(line: dict[str, Any]) -> str | None:
    text = line_error_text(line)
    if text is None:
        return None
    inner = ((line.get("response") or {}).get("body") or {}).get("error")
    code = inner.get("code") if isinstance(inner, dict) else (line.get("error") or {}).get("code")
    return f"{code}: {text}" if code else text


def result_row(request: dict[str, Any], result: dict[str, Any] | None) -> ResultRow:
    """The row of one request line, given its output or error line (None: no result)."""
    custom_id = str(request.get("custom_id"))
    body = request.get("body") if isinstance(request.get("body"), dict) else {}
    image = request_image(body or {})
    if result is None:
        return ResultRow(custom_id, image, None, "no result")
    error = _error(result)
    response = (result.get("response") or {}).get("body") or {}
    images = (response.get("cascade") or {}).get("images") or []
    sha = images[0].get("sha256") if images else None
    if error is not None:
        return ResultRow(custom_id, image, None, error, sha)
    message = ((response.get("choices") or [{}])[0]).get("message") or {}
    text = message.get("content") or ""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    answer = value if isinstance(value, dict) else None
    return ResultRow(custom_id, image, answer, None, sha, text)


def build_table(
    requests: Iterable[dict[str, Any]], results: dict[str, dict[str, Any]]
) -> ResultTable:
    """The table of a batch: `requests` are its input lines in order, `results` its output
    and error lines by custom_id. Input lines without a usable custom_id have no row."""
    table = ResultTable()
    seen: set[str] = set()
    loose: list[str] = []  # keys of json_object answers, after the schemas' fields
    for request in requests:
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str):
            continue
        body = request.get("body") if isinstance(request.get("body"), dict) else {}
        for name in schema_fields(body or {}):
            if name not in seen:
                seen.add(name)
                table.fields.append(name)
        row = result_row(request, results.get(custom_id))
        table.rows.append(row)
        fmt = (body or {}).get("response_format") or {}
        if row.answer is not None and isinstance(fmt, dict) and fmt.get("type") == "json_object":
            loose.extend(name for name in row.answer if name not in loose)
    table.fields.extend(name for name in loose if name not in seen)
    return table


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def csv_rows(table: ResultTable) -> Iterator[str]:
    """The table as CSV text, a header line then one line per row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.columns)
    yield out.getvalue()
    for row in table.rows:
        out.seek(0)
        out.truncate()
        answer = row.answer or {}
        fields = [_cell(answer.get(name)) for name in table.fields]
        writer.writerow([row.custom_id, row.image or "", *fields, row.error or ""])
        yield out.getvalue()


def jsonl_rows(table: ResultTable) -> Iterator[bytes]:
    """The table as JSONL: one object per row with the table's columns as keys."""
    for row in table.rows:
        answer = row.answer or {}
        record: dict[str, Any] = {"custom_id": row.custom_id, "image": row.image}
        record |= {name: answer.get(name) for name in table.fields}
        record["error"] = row.error
        yield orjson.dumps(record) + b"\n"


def parse_lines(data: bytes) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file (blank and unreadable lines skipped)."""
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            yield value
