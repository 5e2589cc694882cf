"""The batch CLI's progress line and HTML report, rendered without a server."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from app.cli.batch import ProgressView, RateMeter, _error_path, render_progress, render_report


def test_progress_line() -> None:
    line = render_progress("in_progress", 200, 90, 10, 4.0, width=10)
    assert line == "[#####.....] 100/200 done  10 failed  4.0/s  ETA 0:25  in_progress"


def test_progress_line_before_the_rate_is_known_and_at_the_end() -> None:
    assert render_progress("validating", 0, 0, 0, None, width=4) == (
        "[....] -/- done  0 failed  -/s  ETA ?  validating"
    )
    assert render_progress("completed", 3, 2, 1, 1.5, width=4).endswith("ETA -  completed")
    long = render_progress("in_progress", 100_000, 1, 0, 0.5, width=4)
    assert "ETA 55:33:18" in long


def test_rate_meter_uses_a_recent_window() -> None:
    meter = RateMeter(window=10)
    assert meter.add(0.0, 0) is None
    assert meter.add(0.2, 1) is None  # less than half a second of samples
    assert meter.add(2.0, 20) == 10.0
    for t in range(3, 30):
        rate = meter.add(float(t), 20 + (t - 2) * 2)
    assert rate is not None and abs(rate - 2.0) < 0.01  # the early burst has left the window


def batch(status: str, done: int, failed: int = 0, total: int = 10) -> dict[str, Any]:
    return {
        "status": status,
        "request_counts": {"total": total, "completed": done, "failed": failed},
    }


def test_terminal_view_redraws_one_line() -> None:
    out = io.StringIO()
    view = ProgressView(out, tty=True)
    view.update(batch("in_progress", 1), 0.0)
    view.update(batch("in_progress", 5), 1.0)
    view.update(batch("completed", 9, 1), 2.0)
    view.finish()
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 3
    assert all(f.startswith("[") and "\x1b[K" in f for f in frames)
    assert "4.0/s" in frames[1] and "ETA 0:01" in frames[1]
    assert "10/10 done  1 failed" in frames[2]
    assert text.endswith("\n") and text.count("\n") == 1


def test_plain_view_prints_lines_not_too_often() -> None:
    out = io.StringIO()
    view = ProgressView(out, tty=False)
    for t in range(10):
        view.update(batch("in_progress", t), float(t))
    view.update(batch("completed", 10), 10.5)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 3  # t=0, t=5, and the final state
    assert lines[-1].endswith("completed")


def test_error_file_name() -> None:
    assert _error_path(Path("/x/results.jsonl")) == Path("/x/results.errors.jsonl")
    assert _error_path(Path("out")) == Path("out.errors.jsonl")


class Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())


def test_report_one_image_one_answer_one_error() -> None:
    thumbnail = "data:image/jpeg;base64,/9j/AAAA"
    data = {
        "batch": {
            "id": "batch_" + "1" * 24,
            "status": "completed",
            "request_counts": {"total": 2, "completed": 1, "failed": 1},
            "job": {"images": 2},
        },
        "cards": [
            {
                "label": "cat.jpg",
                "thumbnail": thumbnail,
                "items": [
                    {
                        "custom_id": "img1-q1",
                        "question": "What animal?",
                        "answer": "A cat <script>alert(1)</script>",
                        "reasoning": "Whiskers, ears.",
                        "error": None,
                    }
                ],
            },
            {
                "label": "broken.png",
                "thumbnail": None,
                "items": [
                    {
                        "custom_id": "img2-q1",
                        "question": "What animal?",
                        "answer": None,
                        "reasoning": None,
                        "error": "image could not be decoded",
                    }
                ],
            },
        ],
        "loose_errors": [],
        "truncated": False,
        "fields": [],  # no schema: no table of fields
        "rows": [],
    }
    html = render_report(data)
    parsed = Collect()
    parsed.feed(html)
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert [i["src"] for i in images] == [thumbnail]
    errors = [a for t, a in parsed.tags if t == "div" and "error" in (a.get("class") or "")]
    assert len(errors) == 1
    assert "image could not be decoded" in parsed.text
    assert "A cat <script>alert(1)</script>" in parsed.text  # shown as text
    assert "<script>" not in html
    assert sum(1 for t, _ in parsed.tags if t == "details") == 1
    assert "Whiskers, ears." in parsed.text
    assert "2 images" in html and "1 failed" in html
