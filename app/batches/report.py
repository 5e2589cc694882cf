"""A batch's HTML report (`templates/batch_report.html.jinja`): one card per image, each with
its questions and their answers or errors, and for a structured batch (answers with a schema)
a table of the answers' fields, one row per result, with the image's thumbnail.

The data is built from the batch object and the lines of its three files, wherever they are
read from: `cascade batch report` reads them over the HTTP API, the status page
(`app.api.status`) from the file store. Rendering autoescapes: answers and errors are text,
never markup.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jinja2

from app.batches.config import REPO_TEMPLATES
from app.batches.lines import line_error_text
from app.batches.tabular import build_table

REPORT_TEMPLATE = "batch_report.html.jinja"


def request_view(line: dict[str, Any]) -> tuple[str, str | None]:
    """(question text, image reference) of a request line."""
    body = line.get("body") or {}
    question = ""
    image: str | None = None
    for message in body.get("messages") or []:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            question = content
        elif isinstance(content, list):
            texts = [p.get("text", "") for p in content if p.get("type") == "text"]
            question = " ".join(t for t in texts if t) or question
            for part in content:
                if part.get("type") == "image_url" and image is None:
                    ref = part.get("image_url")
                    image = ref.get("url") if isinstance(ref, dict) else ref
    return question, image


def image_label(ref: str | None) -> str:
    if ref is None:
        return "(no image)"
    if ref.startswith("data:"):
        return "inline image"
    return ref.rsplit("/", 1)[-1] or ref


def collect_results(
    outputs: Iterable[dict[str, Any]], errors: Iterable[dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """custom_id → its line (an answer wins over an error line), and the error lines that
    have no custom_id (input lines that could not be read)."""
    results: dict[str, dict[str, Any]] = {}
    for line in outputs:
        results[str(line.get("custom_id"))] = line
    loose: list[dict[str, Any]] = []
    for line in errors:
        if line.get("custom_id") is None:
            loose.append(line)
        else:
            results.setdefault(str(line["custom_id"]), line)
    return results, loose


def report_data(
    batch: dict[str, Any],
    inputs: Iterable[dict[str, Any]],
    results: dict[str, dict[str, Any]],
    loose_errors: list[dict[str, Any]],
    *,
    limit: int,
    thumbnail: Callable[[str], str | None],
) -> dict[str, Any]:
    """The template's context: the batch (OpenAI shape), one card per image of the first
    `limit` input lines, the unreadable lines' errors, and whether `limit` cut the list.
    `thumbnail(sha256)` gives an image's data URI (or None); it is asked once per image."""
    cards: dict[str, dict[str, Any]] = {}
    thumbnails: dict[str, str | None] = {}
    count = 0
    requests: list[dict[str, Any]] = []
    for request in inputs:
        if count >= limit:
            break
        requests.append(request)
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str):
            continue
        count += 1
        question, image = request_view(request)
        result = results.get(custom_id) or {}
        error = line_error_text(result) if result else "no result"
        body = (result.get("response") or {}).get("body") or {}
        message = ((body.get("choices") or [{}])[0]).get("message") or {}
        shas = [i.get("sha256") for i in (body.get("cascade") or {}).get("images") or []]
        key = image or custom_id
        card = cards.setdefault(key, {"label": image_label(image), "thumbnail": None, "items": []})
        if shas and card["thumbnail"] is None:
            sha = shas[0]
            if sha not in thumbnails:
                thumbnails[sha] = thumbnail(sha)
            card["thumbnail"] = thumbnails[sha]
        card["items"].append(
            {
                "custom_id": custom_id,
                "question": question,
                "answer": None if error else message.get("content"),
                "reasoning": message.get("reasoning_content"),
                "error": error,
            }
        )
    table = build_table(requests, results)
    rows = [
        {
            "custom_id": row.custom_id,
            "image": row.image or "",
            "thumbnail": thumbnails.get(row.image_sha256 or "") if row.image_sha256 else None,
            "values": [_cell_text((row.answer or {}).get(name)) for name in table.fields],
            "error": row.error,
        }
        for row in table.rows
    ]
    return {
        "batch": batch,
        "fields": table.fields,
        "rows": rows if table.fields else [],
        "cards": list(cards.values()),
        "loose_errors": [line_error_text(e) for e in loose_errors],
        "truncated": count >= limit,
    }


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render_report(data: dict[str, Any], template_path: Path | None = None) -> str:
    """The HTML report (autoescaped: answers and errors are text, never markup)."""
    path = template_path or (REPO_TEMPLATES / REPORT_TEMPLATE)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(path.parent)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template(path.name).render(**data)
