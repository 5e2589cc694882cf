"""The SGLang launch command for this model, per hardware profile and SGLang version.

`build_launch_command(profile)` is the single source of the flags: `cascade runtime --print`
prints it, `cascade runtime` runs it, and `compose.yaml` runs `cascade runtime` (so the three
cannot drift). The contract suite parses it with SGLang 0.5.23's own argument parser.

The command targets `PINNED_SGLANG_VERSION` (the compose image and the `runtime` extra). For an
older SGLang it adapts: `--default-chat-template-kwargs` was first seen in 0.5.23 (0.5.15 fails
to start with it: "unrecognized arguments"), so it is left out for anything older, which is
safe because cascade sends `chat_template_kwargs.enable_thinking` on every request
(`app.runtime.body`). Versions older than `OLDEST_SGLANG_VERSION`, the oldest one cascade has
run against, are refused; newer ones get the pinned command with a note that it is unverified.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

PINNED_SGLANG_VERSION = "0.5.23"
OLDEST_SGLANG_VERSION = "0.5.15"
# The first version known to accept --default-chat-template-kwargs; older ones are treated as
# lacking it (0.5.15 does; nothing between 0.5.15 and 0.5.23 was checked).
TEMPLATE_KWARGS_SINCE = "0.5.23"

MODEL_BF16 = "natfii/Qwen3.6-27B-VLM-Cascade"
MODEL_NVFP4 = "natfii/Qwen3.6-27B-VLM-Cascade-NVFP4-MTP"
SERVED_MODEL_NAME = "qwen3.6-27b-cascade"


@dataclass(frozen=True)
class Profile:
    """What differs between GPUs: checkpoint, quantisation, memory and context."""

    model_path: str
    quantization: str | None
    context_length: int
    mem_fraction_static: float
    description: str


PROFILES: dict[str, Profile] = {
    "h100-bf16": Profile(
        MODEL_BF16, None, 65536, 0.88, "H100 80 GB, BF16 weights (~54 GB): 64K context"
    ),
    "h100-fp8": Profile(MODEL_BF16, "fp8", 131072, 0.85, "H100 80 GB, FP8 weights: 128K context"),
    "h200-bf16": Profile(MODEL_BF16, None, 131072, 0.85, "H200 141 GB, BF16 weights"),
    "h200-fp8": Profile(MODEL_BF16, "fp8", 131072, 0.85, "H200 141 GB, FP8 weights"),
    "gb10-nvfp4": Profile(
        MODEL_NVFP4,
        None,  # the NVFP4 checkpoint carries its own quantisation config
        131072,
        0.70,  # unified memory is shared with the OS and cascade on a DGX Spark
        "GB10 / DGX Spark 128 GB unified memory, NVFP4 checkpoint with MTP head",
    ),
}


def parse_version(text: str) -> tuple[int, int, int]:
    """`X.Y.Z` (a suffix such as `.post1` or `rc1` is ignored) as a comparable tuple.

    Raises ValueError for anything else.
    """
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", text.strip())
    if match is None:
        raise ValueError(f"not an SGLang version (X.Y.Z): {text!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def version_notes(sglang_version: str) -> list[str]:
    """What differs from the pinned command for `sglang_version` (empty for the pinned one).

    Raises ValueError for a version cascade refuses to write a command for.
    """
    version = parse_version(sglang_version)
    if version < parse_version(OLDEST_SGLANG_VERSION):
        raise ValueError(
            f"SGLang {sglang_version} is older than {OLDEST_SGLANG_VERSION}, the oldest version "
            f"cascade has run against; use SGLang {PINNED_SGLANG_VERSION} (the pinned version)"
        )
    notes: list[str] = []
    if version < parse_version(TEMPLATE_KWARGS_SINCE):
        notes.append(
            f"--default-chat-template-kwargs left out: SGLang {sglang_version} does not have it "
            f"(first known in {TEMPLATE_KWARGS_SINCE}); thinking is then on by default for "
            "direct callers, while cascade sends enable_thinking explicitly on every request"
        )
    if version > parse_version(PINNED_SGLANG_VERSION):
        notes.append(
            f"SGLang {sglang_version} is newer than the pinned {PINNED_SGLANG_VERSION}; these "
            "flags were verified against the pinned version only"
        )
    return notes


def build_launch_command(
    profile: str,
    *,
    host: str = "0.0.0.0",
    port: int = 30000,
    api_key_env: str | None = "CASCADE_RUNTIME_API_KEY",
    python: str = "python3",
    sglang_version: str = PINNED_SGLANG_VERSION,
) -> list[str]:
    """The argv that starts SGLang `sglang_version` for `profile` (see `version_notes`).

    The API key is never written into the command: when `api_key_env` is set the command carries
    `--api-key ${VAR}` for a shell to expand (see `format_command`), or the caller substitutes it.
    Raises ValueError for an unknown profile or a refused version.
    """
    version_notes(sglang_version)
    try:
        spec = PROFILES[profile]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown profile {profile!r}; choose one of: {known}") from None
    argv = [
        python,
        "-m",
        "sglang.launch_server",
        "--model-path",
        spec.model_path,
        "--served-model-name",
        SERVED_MODEL_NAME,
        "--host",
        host,
        "--port",
        str(port),
        # qwen3 (not qwen3-thinking, which forces reasoning on); qwen3_coder reads the XML calls.
        "--reasoning-parser",
        "qwen3",
        "--tool-call-parser",
        "qwen3_coder",
        # NEXTN uses the MTP head inside the checkpoint as the draft model.
        "--speculative-algorithm",
        "NEXTN",
        "--speculative-num-steps",
        "3",
        "--speculative-eagle-topk",
        "1",
        "--speculative-num-draft-tokens",
        "4",
        # Logit processors are skipped under speculative decoding: budgets need the grammar path.
        "--enable-strict-thinking",
        "--default-chat-template-kwargs",
        json.dumps({"enable_thinking": False}, separators=(",", ":")),
        # extra_buffer keeps overlap scheduling and spec decoding on the hybrid cache; page 64.
        "--mamba-radix-cache-strategy",
        "extra_buffer",
        "--page-size",
        "64",
        "--context-length",
        str(spec.context_length),
        "--mem-fraction-static",
        str(spec.mem_fraction_static),
        "--enable-metrics",
        "--enable-cache-report",
        # Chat requests carry no priority and get this default; batch items go below it.
        "--enable-priority-scheduling",
        "--default-priority-value",
        "0",
    ]
    if parse_version(sglang_version) < parse_version(TEMPLATE_KWARGS_SINCE):
        at = argv.index("--default-chat-template-kwargs")
        del argv[at : at + 2]
    if spec.quantization is not None:
        argv += ["--quantization", spec.quantization]
    if api_key_env:
        argv += ["--api-key", "${" + api_key_env + "}"]
    return argv


def format_command(argv: list[str]) -> str:
    """A shell line for `argv`, leaving `${VAR}` references for the shell to expand."""
    parts = []
    for arg in argv:
        if arg.startswith("${") and arg.endswith("}"):
            parts.append(f'"{arg}"')
        else:
            parts.append(shlex.quote(arg))
    return " ".join(parts)
