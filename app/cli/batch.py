"""`cascade batch …`: submit, watch, download and report batches over cascade's HTTP API.

- `run PATH --question Q [--question …] --out results.jsonl`: PATH is a folder of images
  (uploaded, or named on the server with `--server-folder`), an image, a `.txt` list of image
  references (URLs, file ids, server paths), or a batch input `.jsonl`; then `watch`.
- `watch ID`: a live progress line (done / failed / rate / ETA) until the batch is final;
  Ctrl-C leaves the batch running (re-attach with `watch ID`); downloads with `--out`.
- `status ID`, `cancel ID`, `download ID --out FILE`, `list`, `report ID --html FILE`.

The API is `--url` (or `CASCADE_URL`, default http://127.0.0.1:8080) with `--api-key` (or
`CASCADE_API_KEY`). Exit status: 0 done, 1 the batch did not complete or a request failed,
2 usage errors, 130 interrupted (the batch keeps running).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from app.batches.jobs import IMAGE_SUFFIXES
from app.batches.report import collect_results, render_report, report_data

FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
DEFAULT_URL = "http://127.0.0.1:8080"


class CliError(Exception):
    """A failure to report in one line (exit status 1)."""


# ----------------------------------------------------------------------------- HTTP


class Api:
    """The few calls the CLI makes, with errors turned into `CliError`s."""

    def __init__(self, url: str, api_key: str | None, *, timeout: float = 60.0) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            message = f"HTTP {response.status_code}"
            with contextlib.suppress(ValueError, KeyError, TypeError):
                message = response.json()["error"]["message"]
            raise CliError(message)
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._check(self.http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach cascade at {self.url} ({type(exc).__name__})") from None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self._send("GET", path, **kwargs).json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._send("POST", path, json=body or {}).json()

    def upload(self, path: Path, purpose: str) -> str:
        with path.open("rb") as fh:
            response = self._send(
                "POST", "/v1/files", files={"file": (path.name, fh)}, data={"purpose": purpose}
            )
        file_id: str = response.json()["id"]
        return file_id

    def download(self, file_id: str, out: IO[bytes]) -> int:
        size = 0
        try:
            with self.http.stream("GET", f"/v1/files/{file_id}/content") as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    size += len(chunk)
        except httpx.TransportError as exc:
            raise CliError(f"download of {file_id} failed ({type(exc).__name__})") from None
        return size

    def results_csv(self, batch_id: str, out: IO[bytes]) -> None:
        """The batch's results as CSV (one column per schema field) to `out`."""
        try:
            response = self.http.get(f"/v1/batches/{batch_id}/results", params={"format": "csv"})
        except httpx.TransportError as exc:
            raise CliError(f"download of results failed ({type(exc).__name__})") from None
        out.write(self._check(response).content)

    def lines(self, file_id: str | None) -> Iterator[dict[str, Any]]:
        if not file_id:
            return
        try:
            with self.http.stream("GET", f"/v1/files/{file_id}/content") as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise CliError(f"download of {file_id} failed ({type(exc).__name__})") from None


# ----------------------------------------------------------------------------- progress


@dataclass
class RateMeter:
    """Items per second over the last `window` seconds of samples."""

    window: float = 15.0
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, when: float, finished: int) -> float | None:
        """Record a sample; the rate, or None until samples span half a second."""
        self.samples.append((when, finished))
        while len(self.samples) > 2 and when - self.samples[1][0] >= self.window:
            self.samples.popleft()
        first_time, first_count = self.samples[0]
        if when - first_time < 0.5:
            return None
        return max(0, finished - first_count) / (when - first_time)


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render_progress(
    status: str,
    total: int,
    completed: int,
    failed: int,
    rate: float | None,
    *,
    width: int = 28,
) -> str:
    """One progress line: bar, done/total, failed, rate, ETA, status."""
    finished = completed + failed
    fraction = finished / total if total else 0.0
    filled = int(fraction * width)
    bar = "#" * filled + "." * (width - filled)
    parts = [f"[{bar}] {finished}/{total} done" if total else f"[{bar}] -/- done"]
    parts.append(f"{failed} failed")
    if rate is None:
        parts.append("-/s")
    else:
        parts.append(f"{rate:.1f}/s")
    remaining = total - finished
    if status in FINAL:
        parts.append("ETA -")
    elif rate and remaining > 0:
        parts.append(f"ETA {_clock(remaining / rate)}")
    else:
        parts.append("ETA ?")
    parts.append(status)
    return "  ".join(parts)


class ProgressView:
    """Draws progress on a terminal (one line, redrawn) or as plain lines (not a TTY)."""

    def __init__(self, out: IO[str], *, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.meter = RateMeter()
        self.last_plain = ""
        self.last_plain_at = float("-inf")

    def update(self, batch: dict[str, Any], now: float) -> None:
        counts = batch.get("request_counts") or {}
        total, completed, failed = (
            int(counts.get("total", 0)),
            int(counts.get("completed", 0)),
            int(counts.get("failed", 0)),
        )
        rate = self.meter.add(now, completed + failed)
        line = render_progress(batch["status"], total, completed, failed, rate)
        if self.tty:
            self.out.write("\r" + line + "\x1b[K")
            self.out.flush()
        elif line != self.last_plain and (
            now - self.last_plain_at >= 5 or batch["status"] in FINAL
        ):
            self.out.write(line + "\n")
            self.out.flush()
            self.last_plain, self.last_plain_at = line, now

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


# ----------------------------------------------------------------------------- commands


def _api(args: argparse.Namespace) -> Api:
    return Api(args.url, args.api_key)


def _error_path(out: Path) -> Path:
    return out.with_name(out.stem + ".errors" + (out.suffix or ".jsonl"))


def download_results(api: Api, batch: dict[str, Any], out: Path) -> tuple[Path | None, Path | None]:
    """The output file to `out`, the error file (if any) next to it as `<stem>.errors.jsonl`."""
    written_out: Path | None = None
    written_err: Path | None = None
    if batch.get("output_file_id"):
        with out.open("wb") as fh:
            api.download(batch["output_file_id"], fh)
        written_out = out
    else:
        out.write_bytes(b"")
        written_out = out
    if batch.get("error_file_id"):
        err = _error_path(out)
        with err.open("wb") as fh:
            api.download(batch["error_file_id"], fh)
        written_err = err
    return written_out, written_err


def watch(
    api: Api,
    batch_id: str,
    *,
    out: Path | None,
    interval: float,
    stream: IO[str],
    tty: bool | None = None,
    csv_out: Path | None = None,
) -> int:
    view = ProgressView(stream, tty=tty)
    try:
        while True:
            batch = api.get(f"/v1/batches/{batch_id}")
            view.update(batch, time.monotonic())
            if batch["status"] in FINAL:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        view.finish()
        print(
            f"stopped watching; batch {batch_id} keeps running. "
            f"Re-attach with: cascade batch watch {batch_id}",
            file=stream,
        )
        return 130
    view.finish()
    counts = batch.get("request_counts") or {}
    print(
        f"batch {batch_id} {batch['status']}: {counts.get('completed', 0)} completed, "
        f"{counts.get('failed', 0)} failed of {counts.get('total', 0)}",
        file=stream,
    )
    for error in ((batch.get("errors") or {}).get("data") or [])[:5]:
        print(f"  {error.get('message')}", file=stream)
    if out is not None and batch["status"] != "failed":
        written, errors = download_results(api, batch, out)
        print(f"results: {written}" + (f", errors: {errors}" if errors else ""), file=stream)
    if csv_out is not None and batch["status"] != "failed":
        with csv_out.open("wb") as fh:
            api.results_csv(batch_id, fh)
        print(f"results table: {csv_out}", file=stream)
    return 0 if batch["status"] == "completed" else 1


def _image_sources(path: Path, args: argparse.Namespace, api: Api) -> dict[str, Any]:
    """The job fields naming the images under `path`."""
    if path.is_dir():
        if args.server_folder:
            return {"folder": str(path.resolve()), "recursive": args.recursive}
        pattern = "**/*" if args.recursive else "*"
        files = sorted(
            p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise CliError(f"no images in {path}")
        ids = []
        for index, file in enumerate(files, start=1):
            ids.append(api.upload(file, "vision"))
            print(f"\ruploaded {index}/{len(files)} images", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        return {"images": ids}
    if path.suffix.lower() == ".txt":
        refs = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return {"images": refs}
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return {"images": [api.upload(path, "vision")]}
    raise CliError(f"{path}: not a folder, an image, a .txt list or a .jsonl batch input")


def cmd_run(args: argparse.Namespace) -> int:
    api = _api(args)
    try:
        target = args.path
        path = Path(target)
        if path.suffix.lower() == ".jsonl" and path.is_file():
            if args.question:
                raise CliError("--question applies to images; a .jsonl holds whole requests")
            file_id = api.upload(path, "batch")
            batch = api.post(
                "/v1/batches",
                {
                    "input_file_id": file_id,
                    "endpoint": "/v1/chat/completions",
                    "completion_window": args.window,
                },
            )
        else:
            if not path.exists() and not args.server_folder:
                raise CliError(f"{target}: no such file or folder")
            if not args.question and not args.template:
                raise CliError("ask at least one --question (or give --template)")
            job: dict[str, Any] = (
                {"folder": target, "recursive": args.recursive}
                if args.server_folder and not path.exists()
                else _image_sources(path, args, api)
            )
            job["questions"] = args.question or []
            job["completion_window"] = args.window
            if args.template:
                job["template"] = args.template
            if args.var:
                job["variables"] = dict(_pair(v) for v in args.var)
            if args.thinking_budget is not None:
                job["thinking_budget"] = args.thinking_budget
            if args.schema:
                job["response_schema"] = json.loads(Path(args.schema).read_text())
            if args.system:
                job["system"] = args.system
            batch = api.post("/v1/jobs/image-questions", job)
        print(f"batch {batch['id']} submitted", file=sys.stderr)
        if args.no_wait:
            print(batch["id"])
            return 0
        out = Path(args.out) if args.out else None
        csv_out = Path(args.csv) if args.csv else None
        return watch(
            api, batch["id"], out=out, interval=args.interval, stream=sys.stderr, csv_out=csv_out
        )
    finally:
        api.close()


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CliError(f"--var takes KEY=VALUE, not {text!r}")
    return key, value


def cmd_watch(args: argparse.Namespace) -> int:
    api = _api(args)
    try:
        out = Path(args.out) if args.out else None
        return watch(api, args.batch_id, out=out, interval=args.interval, stream=sys.stderr)
    finally:
        api.close()


def cmd_status(args: argparse.Namespace) -> int:
    api = _api(args)
    try:
        batch = api.get(f"/v1/batches/{args.batch_id}")
    finally:
        api.close()
    if args.json:
        print(json.dumps(batch, indent=2))
        return 0
    counts = batch.get("request_counts") or {}
    print(
        render_progress(
            batch["status"],
            int(counts.get("total", 0)),
            int(counts.get("completed", 0)),
            int(counts.get("failed", 0)),
            None,
        )
    )
    for name in ("output_file_id", "error_file_id"):
        if batch.get(name):
            print(f"{name}: {batch[name]}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    api = _api(args)
    try:
        batch = api.post(f"/v1/batches/{args.batch_id}/cancel")
    finally:
        api.close()
    print(f"batch {batch['id']} {batch['status']}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    api = _api(args)
    try:
        batch = api.get(f"/v1/batches/{args.batch_id}")
        if batch["status"] not in FINAL:
            raise CliError(f"batch {args.batch_id} is {batch['status']}; results come at the end")
        written, errors = download_results(api, batch, Path(args.out))
    finally:
        api.close()
    print(f"results: {written}" + (f", errors: {errors}" if errors else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    api = _api(args)
    try:
        page = api.get("/v1/batches", params={"limit": args.limit})
    finally:
        api.close()
    for batch in page["data"]:
        counts = batch.get("request_counts") or {}
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(batch["created_at"]))
        print(
            f"{batch['id']}  {created}  {batch['status']:<11} "
            f"{counts.get('completed', 0)}/{counts.get('total', 0)} done  "
            f"{counts.get('failed', 0)} failed"
        )
    return 0


# ----------------------------------------------------------------------------- report


def build_report(api: Api, batch_id: str, *, limit: int) -> dict[str, Any]:
    """The report's data (`app.batches.report.report_data`) over the HTTP API."""
    batch = api.get(f"/v1/batches/{batch_id}")
    results, loose_errors = collect_results(
        api.lines(batch.get("output_file_id")), api.lines(batch.get("error_file_id"))
    )
    return report_data(
        batch,
        api.lines(batch["input_file_id"]),
        results,
        loose_errors,
        limit=limit,
        thumbnail=lambda sha: _thumbnail(api, batch_id, sha),
    )


def _thumbnail(api: Api, batch_id: str, sha: str) -> str | None:
    try:
        response = api.http.get(f"/v1/batches/{batch_id}/images/{sha}")
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(response.content).decode()


def cmd_report(args: argparse.Namespace) -> int:
    api = _api(args)
    try:
        data = build_report(api, args.batch_id, limit=args.limit)
    finally:
        api.close()
    template = Path(args.template) if args.template else None
    Path(args.html).write_text(render_report(data, template), encoding="utf-8")
    items = sum(len(card["items"]) for card in data["cards"])
    print(f"report: {args.html} ({len(data['cards'])} images, {items} answers)")
    return 0


# ----------------------------------------------------------------------------- parser


def add_batch_parser(sub: Any) -> None:
    """Register `cascade batch …` on the main parser's subparsers."""
    batch = sub.add_parser("batch", help="submit, watch and download batches")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=os.environ.get("CASCADE_URL", DEFAULT_URL), help="cascade's API URL"
    )
    common.add_argument(
        "--api-key", default=os.environ.get("CASCADE_API_KEY"), help="API key (CASCADE_API_KEY)"
    )
    commands = batch.add_subparsers(dest="batch_command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", parents=[common], help="submit images + questions (or a .jsonl) and watch"
    )
    run.add_argument("path", help="folder of images, image, .txt of image refs, or .jsonl")
    run.add_argument("--question", "-q", action="append", help="a question (repeatable)")
    run.add_argument("--template", help="prompt template in templates/prompts/ (server side)")
    run.add_argument("--var", action="append", help="template variable KEY=VALUE")
    run.add_argument("--thinking-budget", type=int, help="reasoning tokens per answer")
    run.add_argument("--schema", help="JSON schema file the answers must follow")
    run.add_argument("--system", help="system prompt")
    run.add_argument("--server-folder", action="store_true", help="PATH is a folder on the server")
    run.add_argument("--recursive", "-r", action="store_true", help="include sub-folders")
    run.add_argument("--window", default="24h", help="completion window (default 24h)")
    run.add_argument("--out", "-o", help="write results here when done")
    run.add_argument("--csv", help="write the results as a table (CSV) here when done")
    run.add_argument("--no-wait", action="store_true", help="print the batch id and exit")
    run.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    run.set_defaults(func=_command(cmd_run))

    watch_cmd = commands.add_parser(
        "watch", parents=[common], help="show progress until done (Ctrl-C detaches)"
    )
    watch_cmd.add_argument("batch_id")
    watch_cmd.add_argument("--out", "-o", help="write results here when done")
    watch_cmd.add_argument("--interval", type=float, default=1.0)
    watch_cmd.set_defaults(func=_command(cmd_watch))

    status = commands.add_parser("status", parents=[common], help="one line of progress")
    status.add_argument("batch_id")
    status.add_argument("--json", action="store_true", help="the whole batch object")
    status.set_defaults(func=_command(cmd_status))

    cancel = commands.add_parser("cancel", parents=[common], help="cancel (running items finish)")
    cancel.add_argument("batch_id")
    cancel.set_defaults(func=_command(cmd_cancel))

    download = commands.add_parser(
        "download", parents=[common], help="download results of a finished batch"
    )
    download.add_argument("batch_id")
    download.add_argument("--out", "-o", required=True)
    download.set_defaults(func=_command(cmd_download))

    listing = commands.add_parser("list", parents=[common], help="recent batches")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=_command(cmd_list))

    report = commands.add_parser(
        "report", parents=[common], help="an HTML report: thumbnails, answers, errors"
    )
    report.add_argument("batch_id")
    report.add_argument("--html", required=True, help="output file")
    report.add_argument("--limit", type=int, default=5000, help="items at most")
    report.add_argument("--template", help="a report template file (default the built-in)")
    report.set_defaults(func=_command(cmd_report))


def _command(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command that reports `CliError`s in one line (status 1); Ctrl-C is status 130."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CliError as exc:
            print(f"cascade batch: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    return run
