"""`cascade runtime` without `--print`: run SGLang in the foreground and wait for health.

Needs the `runtime` extra (`pip install 'cascade[runtime]'`) and a GPU. The child gets SIGTERM
when cascade does; its exit status becomes ours (so compose restarts it when it crashes).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import FrameType

from app.runtime.launch import parse_version


def resolve_api_key(argv: list[str], environ: dict[str, str]) -> list[str]:
    """Substitute `${VAR}` in `--api-key ${VAR}`; drop the flag when VAR is unset or empty."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--api-key" and i + 1 < len(argv) and argv[i + 1].startswith("${"):
            var = argv[i + 1][2:-1]
            value = environ.get(var, "")
            skip = True
            if value:
                out += ["--api-key", value]
            continue
        out.append(arg)
    return out


def preflight(sglang_version: str) -> str | None:
    """Why the runtime cannot be launched here for `sglang_version`, or None.

    The installed SGLang must be the version the command was written for: a flag it lacks makes
    it exit at once ("unrecognized arguments").
    """
    if importlib.util.find_spec("sglang") is None:
        return "SGLang is not installed: pip install 'cascade[runtime]' (needs a CUDA machine)"
    try:
        installed = importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None and parse_version(installed) != parse_version(sglang_version):
        return (
            f"SGLang {installed} is installed but the command is for {sglang_version}; pass "
            f"--sglang-version {installed} or install sglang=={sglang_version}"
        )
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU found (nvidia-smi missing); run the runtime on a GPU host"
    return None


def wait_healthy(port: int, timeout: float, child: subprocess.Popen[bytes]) -> bool:
    """Poll `/health` until 200, the child exits, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(2)
    return False


def launch_and_wait(
    argv: list[str], *, port: int, ready_timeout: float, sglang_version: str
) -> int:
    problem = preflight(sglang_version)
    if problem is not None:
        print(f"cascade runtime: {problem}", file=sys.stderr)
        return 2
    argv = [sys.executable, *argv[1:]] if argv and argv[0] == "python3" else argv
    child = subprocess.Popen(resolve_api_key(argv, dict(os.environ)))

    def forward(signum: int, _: FrameType | None) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if wait_healthy(port, ready_timeout, child):
        print(f"cascade runtime: SGLang is healthy on port {port}", file=sys.stderr)
    elif child.poll() is None:
        print("cascade runtime: SGLang is not healthy yet; still waiting on it", file=sys.stderr)
    return child.wait()
