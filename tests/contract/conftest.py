"""Contract tests run against SGLang 0.5.23's own code.

Every test in this directory is marked `contract`. Without SGLang (and the packages in
`tests/contract/requirements.txt`) the tests are skipped with the reason — except under
`CI=true`, where they fail instead, so CI can never pass by silently skipping them.
"""

from __future__ import annotations

import importlib
import os
import warnings
from functools import cache
from pathlib import Path

import pytest

from tests.contract.reference import SGLANG_MODULES

_HERE = Path(__file__).resolve().parent
_INSTALL_HINT = (
    "install them with: pip install --no-deps sglang==0.5.23 && "
    "pip install -r tests/contract/requirements.txt"
)


@cache
def sglang_import_error() -> str | None:
    """Why SGLang's modules can not be imported here, or None when they can (probed once, on
    the first contract test: importing SGLang pulls in torch, which takes seconds)."""
    try:
        with warnings.catch_warnings():
            # Import-time warnings of a third-party package are not what these tests check.
            warnings.simplefilter("ignore")
            import sglang  # type: ignore[import-untyped, import-not-found, unused-ignore]

            version = getattr(sglang, "__version__", "?")
            if version != "0.5.23":
                return f"SGLang {version} is installed; the contract is with SGLang 0.5.23"
            for name in SGLANG_MODULES:
                importlib.import_module(name)
    except Exception as exc:  # ImportError, or anything a half-installed stack raises
        return f"SGLang 0.5.23 modules can not be imported ({type(exc).__name__}: {exc})"
    return None


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.contract)


@pytest.fixture(autouse=True)
def _require_sglang() -> None:
    error = sglang_import_error()
    if error is None:
        return
    reason = f"{error}; {_INSTALL_HINT}"
    if _in_ci():
        pytest.fail(f"CI=true: contract tests must run, not skip. {reason}", pytrace=False)
    pytest.skip(reason)
