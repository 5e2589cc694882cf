"""The runtime boundary: the only package that speaks to SGLang.

`build_runtime(settings)` gives the `Runtime` the rest of cascade uses: the SGLang HTTP client
wrapped in the thinking-budget guard.
"""

from app.config import Settings
from app.runtime.aggregate import collect
from app.runtime.client import SGLangClient
from app.runtime.guard import GuardedRuntime, Runtime
from app.runtime.models import (
    Chunk,
    Completion,
    RuntimeHealth,
    RuntimeRequest,
    ThinkingReport,
    ToolCall,
    ToolCallDelta,
    ToolCallFunction,
    Usage,
)

__all__ = [
    "Chunk",
    "Completion",
    "GuardedRuntime",
    "Runtime",
    "RuntimeHealth",
    "RuntimeRequest",
    "SGLangClient",
    "ThinkingReport",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallFunction",
    "Usage",
    "build_runtime",
    "collect",
]


def build_runtime(settings: Settings) -> tuple[SGLangClient, GuardedRuntime]:
    """The raw client (owns the connection pool; close it) and the guarded runtime over it."""
    client = SGLangClient(settings)
    return client, GuardedRuntime(client, settings)
