"""`make bench`: run every benchmark in turn; each prints its JSON summary as its last line."""

from __future__ import annotations

import importlib
import subprocess
import sys

BENCHMARKS = ["tests.bench.overhead", "tests.bench.doors", "tests.bench.batch"]


def main() -> int:
    failed = 0
    for name in BENCHMARKS:
        try:
            importlib.util.find_spec(name)
        except ModuleNotFoundError:
            continue
        if importlib.util.find_spec(name) is None:
            continue
        print(f"== {name}", flush=True)
        failed |= subprocess.call([sys.executable, "-m", name]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
