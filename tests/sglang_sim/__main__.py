"""`python -m tests.sglang_sim --port N ...`: the simulator as a standalone server.

Prints one line on stdout once the socket is bound, `sglang-sim listening on http://HOST:PORT`
(so `--port 0` can be used), then serves until SIGINT/SIGTERM. Rules and config can be
changed at run time through `POST /sim/rules` and `POST /sim/config`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.sglang_sim.script import Rule, SimConfig
from tests.sglang_sim.server import Simulator
from tests.sglang_sim.testing import LISTENING_PREFIX, bind_socket, make_server


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.sglang_sim", description="Simulated SGLang 0.5.23 runtime."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000, help="0 = any free port")
    parser.add_argument("--model", help="served model name")
    parser.add_argument("--model-path")
    parser.add_argument("--ignore-thinking-budget", action="store_true")
    parser.add_argument("--ttft", type=float, help="seconds before the first token")
    parser.add_argument("--tpot", type=float, help="seconds between tokens")
    parser.add_argument("--max-running", type=int)
    parser.add_argument("--api-key")
    parser.add_argument("--context-length", type=int)
    parser.add_argument("--page-size", type=int, help="prefix-cache page size")
    parser.add_argument(
        "--mamba-radix-cache-strategy",
        choices=["extra_buffer"],
        help="model the hybrid model's prefix cache (reuse up to kept state snapshots only)",
    )
    parser.add_argument("--mamba-track-interval", type=int)
    parser.add_argument("--default-chat-template-kwargs", help="a JSON object")
    parser.add_argument("--healthy-after-first-generation", action="store_true")
    parser.add_argument("--disable-cache-report", action="store_true")
    parser.add_argument("--rules", type=Path, help="a JSON file holding a list of rules")
    parser.add_argument("--log-level", default="warning")
    return parser


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The SimConfig the command-line flags describe (unset flags keep the defaults)."""
    values: dict[str, Any] = {
        "model_name": args.model,
        "model_path": args.model_path,
        "ttft": args.ttft,
        "tpot": args.tpot,
        "max_running": args.max_running,
        "api_key": args.api_key,
        "context_length": args.context_length,
        "cache_page_size": args.page_size,
        "mamba_track_interval": args.mamba_track_interval,
    }
    if args.mamba_radix_cache_strategy == "extra_buffer":
        values["mamba_cache"] = True
    if args.default_chat_template_kwargs:
        values["default_template_kwargs"] = json.loads(args.default_chat_template_kwargs)
    if args.ignore_thinking_budget:
        values["ignore_thinking_budget"] = True
    if args.healthy_after_first_generation:
        values["healthy_after_first_generation"] = True
    if args.disable_cache_report:
        values["enable_cache_report"] = False
    return SimConfig.model_validate({k: v for k, v in values.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rules: list[Rule] = []
    if args.rules is not None:
        rules = [Rule.model_validate(item) for item in json.loads(args.rules.read_text())]
    sim = Simulator(config_from_args(args), rules)
    server = make_server(sim, log_level=args.log_level)
    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print(f"{LISTENING_PREFIX}http://{host}:{port}", flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
