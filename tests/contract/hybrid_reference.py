"""SGLang 0.5.23's own hybrid-cache decisions, run on the CPU without a model.

The modules that hold them (managers/schedule_batch.py, mem_cache/unified_cache/components/
mamba.py, scheduler_components/batch_result_processor.py) do not import here (they pull in
torchvision and CUDA kernels), so each function's source text is read from the installed
wheel and compiled on its own, with the runtime context it reads (server args, exec config,
parallel config) supplied by the caller. The grid helpers (`mamba_cache_chunk_size`,
`mamba_checkpoint_grid`, `mamba_track_grid`) are SGLang's, imported from runtime_context.py
and arg_groups/overrides.py, fed a stand-in for the resolved server args.
"""

from __future__ import annotations
import __future__

import ast
import contextlib
import importlib
import importlib.util
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

__all__ = ["MatchResult", "sglang_function", "sglang_runtime"]


class MatchResult(NamedTuple):
    """The fields of `base_prefix_cache.MatchResult` the Mamba component reads or sets."""

    best_match_node: Any
    device_prefix_len: int
    host_hit_length: int
    full_kv_hit_length: int
    mamba_host_hit_length: int = 0
    mamba_branching_seqlen: int | None = None


def _wheel_file(relative: str) -> Path:
    spec = importlib.util.find_spec("sglang")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / relative


def sglang_function(
    relative: str, owner: str | None, name: str, namespace: dict[str, Any]
) -> Callable[..., Any]:
    """The function (or method of class `owner`) `name` of `sglang/<relative>`, compiled from
    the wheel's source in `namespace` (annotations left unevaluated, as the module does)."""
    path = _wheel_file(relative)
    source = path.read_text()
    tree = ast.parse(source)
    scope: list[ast.stmt] = tree.body
    if owner is not None:
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == owner)
        scope = cls.body
    node = next(
        n for n in scope if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == name
    )
    segment = ast.get_source_segment(source, node)
    assert segment is not None
    start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    lines = source.splitlines()[start - 1 : node.lineno - 1]
    text = textwrap.dedent("\n".join([*lines, " " * node.col_offset + segment]))
    code = compile(text, str(path), "exec", flags=__future__.annotations.compiler_flag)
    scope_vars = dict(namespace)
    exec(code, scope_vars)
    return scope_vars[name]  # type: ignore[no-any-return]


@contextlib.contextmanager
def sglang_runtime(page_size: int, track_interval: int) -> Iterator[SimpleNamespace]:
    """SGLang's runtime context for a launch with `--page-size page_size
    --mamba-track-interval track_interval --mamba-radix-cache-strategy extra_buffer` on a
    model without `mamba_chunk_size` (Qwen3.6), no DCP; yields the grid helpers."""
    with warnings.catch_warnings():
        # Where the FLA chunk size comes from; on a machine without Triton it warns at import.
        warnings.simplefilter("ignore")
        chunk = importlib.import_module("sglang.kernels.ops.attention.fla.chunk_delta_h")
    assert chunk.CHUNK_SIZE == 64
    context = importlib.import_module("sglang.srt.runtime_context")
    overrides = importlib.import_module("sglang.srt.arg_groups.overrides")
    args = SimpleNamespace(_resolution_finished=False)
    exec_config = SimpleNamespace(
        mamba=SimpleNamespace(
            mamba_track_interval=track_interval,
            enable_mamba_extra_buffer=True,
            enable_mamba_extra_buffer_lazy=False,
        )
    )
    patches = {
        (context, "get_server_args"): lambda: args,
        (context, "get_exec"): lambda: exec_config,
        (overrides, "model_config_of"): lambda _: SimpleNamespace(hf_config=SimpleNamespace()),
        (overrides, "resolved_view"): lambda _: SimpleNamespace(page_size=page_size),
    }
    saved = {key: getattr(*key) for key in patches}
    for (module, attr), value in patches.items():
        setattr(module, attr, value)
    try:
        yield SimpleNamespace(
            mamba_cache_chunk_size=context.mamba_cache_chunk_size,
            mamba_checkpoint_grid=context.mamba_checkpoint_grid,
            mamba_track_grid=context.mamba_track_grid,
            get_exec=lambda: exec_config,
            get_parallel=lambda: SimpleNamespace(dcp_enabled=False),
        )
    finally:
        for (module, attr), value in saved.items():
            setattr(module, attr, value)
