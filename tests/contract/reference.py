"""SGLang 0.5.23's own parsers, driven the way its `serving_chat.py` drives them.

Only the orchestration lives here (which parser runs, with which arguments, in which order);
every parsing decision is made by SGLang's classes: `ChatCompletionRequest` (request
normalisation), `normalize_json_schema_types` (what `_validate_request` does to tool schemas),
`detect_reasoning_pattern` (the template's reasoning toggle), `ReasoningParser("qwen3")` and
`FunctionCallParser(..., "qwen3_coder")`. The results come back in `tests.sglang_sim.parsing`'s
types so the tests can compare them with the simulator's parser.

SGLang is imported lazily, so this module imports without it (the contract conftest decides
whether the tests run).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from tests.sglang_sim.parsing import Delta, DeltaToolCall, ParsedToolCall, SplitResult

SGLANG_MODULES = (
    "sglang.srt.entrypoints.openai.protocol",
    "sglang.srt.parser.reasoning_parser",
    "sglang.srt.function_call.function_call_parser",
    "sglang.srt.function_call.qwen3_coder_detector",
    "sglang.srt.function_call.utils",
    "sglang.srt.entrypoints.openai.sse_utils",
    "sglang.srt.server_args",
)
REASONING_PARSER = "qwen3"
TOOL_CALL_PARSER = "qwen3_coder"
PROJECT_TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "qwen3_6_chat.jinja"


def _mod(name: str) -> Any:
    return importlib.import_module(name)


@cache
def template_detection() -> Any:
    """SGLang's `sglang/srt/parser/template_detection.py`, loaded on its own.

    A normal import pulls in every model config SGLang ships (through `muse_spark_hook`, which
    needs torchvision with its CUDA operators). `detect_reasoning_pattern` is plain regex and
    Jinja parsing, and that hook only serves server-argument resolution for another model
    family, so the module is executed (under a private name) with that one import replaced.
    """
    spec = importlib.util.find_spec("sglang.srt.parser.template_detection")
    assert spec is not None and spec.origin is not None
    hook_name = "sglang.srt.arg_groups.muse_spark_hook"
    stand_in = types.ModuleType(hook_name)
    stand_in.muse_spark_chat_template_default = None  # type: ignore[attr-defined]
    private = importlib.util.spec_from_file_location("_sglang_template_detection", spec.origin)
    assert private is not None and private.loader is not None
    module = importlib.util.module_from_spec(private)
    saved = sys.modules.get(hook_name)
    sys.modules[hook_name] = stand_in
    try:
        private.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules[hook_name]
        else:
            sys.modules[hook_name] = saved
    return module


@cache
def template_reasoning() -> tuple[bool, Any]:
    """(force_reasoning, reasoning_config) as SGLang's TemplateManager detects them for the
    chat template cascade uses (`detect_reasoning_pattern`)."""
    detection = template_detection()
    template = PROJECT_TEMPLATE.read_text(encoding="utf-8")
    force, config = detection.detect_reasoning_pattern(template)
    return bool(force), config


def prepared_request(body: Mapping[str, Any], defaults: Mapping[str, Any]) -> Any:
    """The `ChatCompletionRequest` as it stands when serving_chat builds the parsers.

    Steps, in serving_chat's order: pydantic validation (protocol.py's validators),
    `_validate_request` (tool schemas normalised in place, then checked),
    `_convert_to_internal_request` (`reasoning_effort` popped from chat_template_kwargs),
    `_process_messages` (server defaults fill unset chat_template_kwargs).
    """
    protocol = _mod("sglang.srt.entrypoints.openai.protocol")
    utils = _mod("sglang.srt.function_call.utils")
    request = protocol.ChatCompletionRequest.model_validate(dict(body))
    for tool in effective_tools(request):
        if tool.function.parameters is not None:
            utils.normalize_json_schema_types(tool.function.parameters)
            # SGLang answers 400 to a schema that is still invalid; the corpus has none.
            Draft202012Validator.check_schema(tool.function.parameters)
    if request.chat_template_kwargs:
        request.chat_template_kwargs.pop("reasoning_effort", None)
    if defaults:
        merged = dict(request.chat_template_kwargs or {})
        for key, value in defaults.items():
            merged.setdefault(key, value)
        request.chat_template_kwargs = merged
    return request


def effective_tools(request: Any) -> list[Any]:
    """serving_chat `_effective_tools`."""
    protocol = _mod("sglang.srt.entrypoints.openai.protocol")
    tools = list(request.tools or [])
    for message in request.messages:
        if (
            isinstance(message, protocol.ChatCompletionMessageGenericParam)
            and message.role in ("root", "system", "developer")
            and message.tools
        ):
            tools.extend(message.tools)
    return tools


def tool_parsing_active(request: Any) -> bool:
    """serving_chat `_tool_call_parsing_active` (no response template is in play here)."""
    parser_module = _mod("sglang.srt.function_call.function_call_parser")
    if not effective_tools(request):
        detector = parser_module.FunctionCallParser.ToolCallParserEnum[TOOL_CALL_PARSER]
        return bool(detector.parses_without_tools())
    return bool(request.tool_choice != "none")


def thinking_requested(request: Any) -> bool:
    """serving_chat `_get_reasoning_from_request` for the qwen3 parser: the template's toggle
    config when SGLang detects one, else the parser's own `reasoning_default`."""
    _, config = template_reasoning()
    kwargs = request.chat_template_kwargs
    if config is None:
        mode = _reasoning_parser(stream_reasoning=True).detector.reasoning_default
        if mode in ("thinking", "enable_thinking"):
            return not kwargs or kwargs.get(mode) is not False
        raise AssertionError(f"unexpected reasoning_default {mode!r} for {REASONING_PARSER}")
    if config.special_case == "always":
        return True
    if config.special_case is not None or config.toggle_param is None:
        raise AssertionError(f"unexpected template reasoning config {config!r}")
    if config.default_enabled is None:
        return False
    if config.default_enabled:
        return not kwargs or kwargs.get(config.toggle_param) is not False
    return kwargs is not None and kwargs.get(config.toggle_param) is True


def _reasoning_parser(
    *, stream_reasoning: bool, request: Any = None, force: bool | None = None
) -> Any:
    reasoning = _mod("sglang.srt.parser.reasoning_parser")
    return reasoning.ReasoningParser(
        model_type=REASONING_PARSER,
        stream_reasoning=stream_reasoning,
        force_reasoning=force,
        request=request,
        tool_call_parser_active=False if request is None else tool_parsing_active(request),
    )


def reasoning_parser_for(request: Any, *, stream: bool) -> Any | None:
    """The per-request ReasoningParser (None when `separate_reasoning` is off)."""
    if not request.separate_reasoning:
        return None
    force_template, _ = template_reasoning()
    return _reasoning_parser(
        stream_reasoning=request.stream_reasoning if stream else False,
        request=request,
        force=force_template or thinking_requested(request),
    )


def _is_required(tool_choice: Any) -> bool:
    protocol = _mod("sglang.srt.entrypoints.openai.protocol")
    return bool(tool_choice == "required" or isinstance(tool_choice, protocol.ToolChoice))


def split(body: Mapping[str, Any], defaults: Mapping[str, Any], text: str) -> SplitResult:
    """serving_chat `_build_chat_response` + `_process_tool_calls` for one choice."""
    request = prepared_request(body, defaults)
    reasoning_text: str | None = None
    parser = reasoning_parser_for(request, stream=False)
    if parser is not None:
        reasoning_text, text = parser.parse_non_stream(text)
    calls: list[ParsedToolCall] = []
    if tool_parsing_active(request):
        parser_module = _mod("sglang.srt.function_call.function_call_parser")
        tools = effective_tools(request)
        call_parser = parser_module.FunctionCallParser(
            tools, TOOL_CALL_PARSER, tool_choice=request.tool_choice
        )
        should_try = not _is_required(request.tool_choice) or call_parser.owns_tool_format()
        if should_try and call_parser.has_tool_call(text):
            try:
                text, items = call_parser.parse_non_stream(text)
            except Exception:
                items = []
            calls = [ParsedToolCall(name=item.name, arguments=item.parameters) for item in items]
    return SplitResult(
        reasoning_content=reasoning_text if reasoning_text else None,
        content=text if text else "",
        tool_calls=calls,
    )


def stream(
    body: Mapping[str, Any], defaults: Mapping[str, Any], pieces: Sequence[str]
) -> list[Delta]:
    """serving_chat `_generate_stream_content` over decode steps; the last piece carries the
    finish reason ("stop"), so both parsers are flushed on it."""
    request = prepared_request(body, defaults)
    reasoning = reasoning_parser_for(request, stream=True)
    call_parser = None
    if tool_parsing_active(request):
        parser_module = _mod("sglang.srt.function_call.function_call_parser")
        tools = effective_tools(request)
        if _is_required(request.tool_choice):
            # `_process_tool_call_stream`: the native parser when it owns the tool format.
            call_parser = parser_module.FunctionCallParser(
                tools, TOOL_CALL_PARSER, tool_choice=request.tool_choice
            )
            assert call_parser.owns_tool_format()
        else:
            call_parser = parser_module.FunctionCallParser(tools, TOOL_CALL_PARSER)
    deltas: list[Delta] = []
    for number, piece in enumerate(pieces):
        last = number == len(pieces) - 1
        delta = piece
        if reasoning is not None:
            reasoning_text, delta = reasoning.parse_stream_chunk(piece)
            if last:
                end_reasoning, end_normal = reasoning.parse_stream_end()
                if end_reasoning:
                    reasoning_text = (reasoning_text or "") + end_reasoning
                if end_normal:
                    delta = (delta or "") + end_normal
            if reasoning_text:
                deltas.append(Delta(reasoning_content=reasoning_text))
        if call_parser is None:
            if delta:
                deltas.append(Delta(content=delta))
            continue
        normal, items = call_parser.parse_stream_chunk(delta)
        if last:
            end_text, end_items = call_parser.parse_stream_end()
            normal = (normal or "") + end_text
            items = list(items) + list(end_items)
        if normal:
            deltas.append(Delta(content=normal))
        deltas.extend(
            Delta(
                tool_calls=[
                    DeltaToolCall(
                        index=item.tool_index, name=item.name or None, arguments=item.parameters
                    )
                ]
            )
            for item in items
        )
        if last:
            # `_check_for_unstreamed_tool_args` only acts on detectors that fill
            # `prev_tool_call_arr`; qwen3_coder never does, so nothing more is sent.
            assert not call_parser.detector.prev_tool_call_arr
    return deltas
