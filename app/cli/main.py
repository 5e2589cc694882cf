"""The `cascade` command.

Sub-commands: `serve` (the HTTP API), `worker` (a batch worker), `up` (Redis if needed + API +
one worker, supervised; `app.cli.up`), `runtime` (print or launch the SGLang command for a
hardware profile; `app.cli.runtime`), `batch` (submit, watch, download and report batches over
the API; `app.cli.batch`), `doctor` (check a live deployment; `app.cli.doctor`; exit 1 on FAIL).
Configuration errors exit with status 2 and a message naming each bad variable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.errors import ConfigError


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.api.app import create_app
    from app.api.config import HttpSettings
    from app.api.server import server_config
    from app.config import check_bind_auth, load_settings
    from app.logs import configure_logging
    from app.services import check_settings

    settings = load_settings()
    check_settings()
    http = HttpSettings.load()
    configure_logging(settings.log_format, settings.log_level)
    host = args.host or settings.host
    port = args.port or settings.port
    check_bind_auth(settings, host)
    config = server_config(create_app(settings), host=host, port=port, http=http)
    uvicorn.Server(config).run()
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    import asyncio

    from app.config import load_settings
    from app.logs import configure_logging
    from workers.main import run_worker

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    return asyncio.run(run_worker(settings, name=args.name))


def _cmd_up(args: argparse.Namespace) -> int:
    import asyncio

    from app.cli.up import run_up
    from app.config import check_bind_auth, load_settings
    from app.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    check_bind_auth(settings, settings.host)
    return asyncio.run(run_up(settings, workers=args.workers))


def _cmd_runtime(args: argparse.Namespace) -> int:
    from app.runtime.launch import (
        PINNED_SGLANG_VERSION,
        PROFILES,
        build_launch_command,
        format_command,
        version_notes,
    )

    if args.list_profiles:
        for name, spec in PROFILES.items():
            print(f"{name:12s} {spec.description}")
        return 0
    version = args.sglang_version or PINNED_SGLANG_VERSION
    argv = build_launch_command(
        args.profile,
        host=args.host,
        port=args.port,
        api_key_env=None if args.no_api_key else "CASCADE_RUNTIME_API_KEY",
        sglang_version=version,
    )
    header = [f"# SGLang {version} (cascade pins {PINNED_SGLANG_VERSION}), profile {args.profile}"]
    header += [f"# note: {note}" for note in version_notes(version)]
    if args.print:
        print("\n".join([*header, format_command(argv)]))
        return 0
    from app.cli.runtime import launch_and_wait

    for line in header:
        print(f"cascade runtime: {line[2:]}", file=sys.stderr)
    return launch_and_wait(
        argv, port=args.port, ready_timeout=args.ready_timeout, sglang_version=version
    )


def _cmd_doctor(args: argparse.Namespace) -> int:
    import asyncio

    from app.cli.doctor import exit_code, render_json, render_table, run_doctor
    from app.config import load_settings
    from app.logs import configure_logging
    from app.media.config import MediaSettings
    from tools.config import load_tool_settings

    settings = load_settings()
    tools = load_tool_settings()
    media = MediaSettings.load()
    # The report is the output: log lines would only interleave with it.
    configure_logging(settings.log_format, "error")
    checks = asyncio.run(run_doctor(settings, tools, media, call_timeout=args.timeout))
    print(render_json(checks) if args.json else render_table(checks))
    return exit_code(checks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade",
        description="cascade: an agentic assistant service in front of an SGLang runtime.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP API (OpenAI-compatible)")
    serve.add_argument("--host", help="bind address (default CASCADE_HOST)")
    serve.add_argument("--port", type=int, help="port (default CASCADE_PORT)")
    serve.set_defaults(func=_cmd_serve)

    worker = sub.add_parser("worker", help="run a batch worker")
    worker.add_argument("--name", help="consumer name (default: host and pid)")
    worker.set_defaults(func=_cmd_worker)

    up = sub.add_parser(
        "up", help="start Redis (when CASCADE_REDIS_URL is unset), the API and a worker"
    )
    up.add_argument("--workers", type=int, default=1, help="number of workers (default 1)")
    up.set_defaults(func=_cmd_up)

    runtime = sub.add_parser("runtime", help="print or launch the SGLang runtime for this model")
    runtime.add_argument("--profile", default="h100-fp8", help="hardware profile")
    runtime.add_argument("--print", action="store_true", help="print the command, do not run it")
    runtime.add_argument("--list-profiles", action="store_true", help="list the profiles")
    runtime.add_argument(
        "--sglang-version",
        metavar="X.Y.Z",
        help="SGLang version the command is for (default: the pinned one); older versions get "
        "the flags they support, or a refusal with the reason",
    )
    runtime.add_argument("--host", default="0.0.0.0")
    runtime.add_argument("--port", type=int, default=30000)
    runtime.add_argument(
        "--no-api-key", action="store_true", help="do not pass --api-key to the runtime"
    )
    runtime.add_argument(
        "--ready-timeout",
        type=float,
        default=1800.0,
        help="seconds to wait for the runtime to become healthy (first start compiles kernels)",
    )
    runtime.set_defaults(func=_cmd_runtime)

    doctor = sub.add_parser(
        "doctor",
        help="check the live runtime, Redis and tool backends: PASS / WARN / FAIL with fixes",
    )
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds each model call may take (a cold runtime's first one can take minutes)",
    )
    doctor.set_defaults(func=_cmd_doctor)

    from app.cli.batch import add_batch_parser

    add_batch_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"cascade: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"cascade: {exc}", file=sys.stderr)
        return 2
    return code
