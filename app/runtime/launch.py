"""The SGLang launch command for this model, per hardware profile.

`build_launch_command(profile)` is the single source of the flags: `cascade runtime --print`
prints it, `cascade runtime` runs it, and `compose.yaml` runs `cascade runtime` (so the three
cannot drift). The contract suite parses it with SGLang 0.5.23's own argument parser.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

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


def build_launch_command(
    profile: str,
    *,
    host: str = "0.0.0.0",
    port: int = 30000,
    api_key_env: str | None = "CASCADE_RUNTIME_API_KEY",
    python: str = "python3",
) -> list[str]:
    """The argv that starts SGLang for `profile`.

    The API key is never written into the command: when `api_key_env` is set the command carries
    `--api-key ${VAR}` for a shell to expand (see `format_command`), or the caller substitutes it.
    """
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
