"""`calculator`: arithmetic by walking a parsed expression tree (never `eval`).

Accepted: numbers, + - * / // % **, unary + -, parentheses, the constants pi, e, tau and the
functions below. Everything else (names, attributes, strings, comparisons, calls with keywords,
…) is refused. Big numbers fail fast: an integer result may have at most `MAX_INT_DIGITS`
digits, and a power is checked *before* it is computed, so `9**9**9` is an error in
microseconds rather than a hung worker.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

from pydantic import Field

from tools.registry import ToolArgs, ToolContext, ToolError, tool

MAX_EXPRESSION_CHARS = 500
MAX_NODES = 200
MAX_INT_DIGITS = 1000
# An integer of MAX_INT_DIGITS digits has at most this many bits; checked exactly near the edge.
_MAX_INT_BITS = math.ceil(MAX_INT_DIGITS * math.log2(10))

Number = int | float

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _round(x: Number, ndigits: Number = 0) -> Number:
    if not isinstance(ndigits, int) or not -50 <= ndigits <= 50:
        raise ToolError("round's second argument must be a whole number from -50 to 50")
    return round(x, ndigits) if ndigits else round(x)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    # name: (function, min args, max args)
    "sqrt": (math.sqrt, 1, 1),
    "log": (_log, 1, 2),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 2, 50),
    "max": (max, 2, 50),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}


class CalculatorArgs(ToolArgs):
    expression: str = Field(
        min_length=1,
        max_length=MAX_EXPRESSION_CHARS,
        description="An arithmetic expression, e.g. `(2**10 - 24) / 7` or `sqrt(2) * pi`.",
    )


def evaluate(expression: str) -> Number:
    """Evaluate `expression`; raise `ToolError` with a clear message on anything not allowed."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    # `^` is exponentiation to most people; Python spells it `**`.
    text = expression.replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ToolError("the expression is not valid arithmetic syntax") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ToolError(f"the expression is too long (more than {MAX_NODES} parts)")
    try:
        value = _eval(tree.body)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the result is too large to represent") from None
    except ValueError as exc:  # math domain errors: sqrt(-1), log(0), …
        raise ToolError(f"math error: {exc}") from None
    except TypeError:
        raise ToolError("a function was given arguments it cannot take") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    return value


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolError(f"only numbers are allowed, not {type(value).__name__}")
        return _check_int(value)
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        operand = _eval(node.operand)
        return operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.BinOp):
        return _binop(node.op, _eval(node.left), _eval(node.right))
    if isinstance(node, ast.Call):
        return _call(node)
    raise ToolError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def _binop(op: ast.operator, left: Number, right: Number) -> Number:
    if isinstance(op, ast.Add):
        result: Number = left + right
    elif isinstance(op, ast.Sub):
        result = left - right
    elif isinstance(op, ast.Mult):
        # Both operands are already within the digit limit, so the product is cheap to compute.
        result = left * right
    elif isinstance(op, ast.Div):
        result = left / right
    elif isinstance(op, ast.FloorDiv):
        result = left // right
    elif isinstance(op, ast.Mod):
        result = left % right
    elif isinstance(op, ast.Pow):
        result = _pow(left, right)
    else:
        raise ToolError(f"operator {type(op).__name__} is not allowed")
    return _check_int(result)


def _pow(base: Number, exponent: Number) -> Number:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        # bits(base**exp) ≈ exp * log2|base|: refuse before computing it.
        if exponent * math.log2(abs(base)) > _MAX_INT_BITS + 1:
            raise ToolError(f"the result would have more than {MAX_INT_DIGITS} digits")
        power: int = base**exponent
        return power
    if isinstance(base, int) and isinstance(exponent, int) and exponent < 0 and base == 0:
        raise ZeroDivisionError
    if isinstance(base, float) or isinstance(exponent, float):
        if base < 0 and not float(exponent).is_integer():
            raise ToolError("a negative number to a fractional power is not a real number")
        return math.pow(base, exponent)
    result: Number = base**exponent
    return result


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name):
        raise ToolError("only plain function names can be called, e.g. sqrt(2)")
    if node.func.id not in _FUNCTIONS:
        allowed = ", ".join(sorted(_FUNCTIONS))
        raise ToolError(f"unknown function {node.func.id!r}; available: {allowed}")
    if node.keywords:
        raise ToolError("functions take positional arguments only")
    fn, lo, hi = _FUNCTIONS[node.func.id]
    if not lo <= len(node.args) <= hi:
        raise ToolError(f"{node.func.id} takes {lo}..{hi} arguments, got {len(node.args)}")
    args: list[Any] = [_eval(a) for a in node.args]
    return _check_int(fn(*args))


def _check_int(value: Number) -> Number:
    if isinstance(value, int):
        bits = value.bit_length()
        if bits > _MAX_INT_BITS or (
            bits > _MAX_INT_BITS - 8 and len(str(abs(value))) > MAX_INT_DIGITS
        ):
            raise ToolError(f"the result would have more than {MAX_INT_DIGITS} digits")
    return value


def format_number(value: Number) -> str:
    """Integers exactly; floats to 15 significant digits (so 0.1+0.2 shows as 0.3)."""
    if isinstance(value, int):
        return str(value)
    return format(value, ".15g")


@tool(name="calculator", timeout=5.0)
async def calculator(args: CalculatorArgs, ctx: ToolContext) -> str:
    """Evaluate an arithmetic expression exactly. Supports + - * / // % ** (or ^), parentheses,
    pi, e, and sqrt, log(x[, base]), log10, log2, exp, sin, cos, tan, asin, acos, atan (radians),
    abs, round(x[, digits]), min, max, floor, ceil. Use it for any arithmetic instead of
    computing in your head."""
    value = evaluate(args.expression)
    return f"{args.expression.strip()} = {format_number(value)}"
