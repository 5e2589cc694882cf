"""Built-in tools that need no server: calculator, clock, HTML → text; run through a registry."""

from __future__ import annotations

import datetime as dt
import math
import time

import pytest

from tools.builtin.calculator import calculator
from tools.builtin.clock import make_clock_tool
from tools.builtin.html_text import html_to_text
from tools.registry import ToolContext, ToolPolicy, ToolRegistry, ToolResult

CTX = ToolContext(owner="o", call_id="call_1")
POLICY = ToolPolicy()


async def calc(expression: str) -> ToolResult:
    registry = ToolRegistry([calculator])
    return await registry.execute("calculator", _json({"expression": expression}), CTX, POLICY)


def _json(data: object) -> str:
    import json

    return json.dumps(data)


# --- calculator ---


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("2 ** 10", "1024"),
        ("2 ^ 10", "1024"),
        ("-2 ** 2", "-4"),  # Python precedence: -(2**2)
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("0.1 + 0.2", "0.3"),
        ("2 ** -2", "0.25"),
        ("sqrt(16)", "4"),
        ("log(8, 2)", "3"),
        ("log(e)", "1"),
        ("floor(2.7) + ceil(2.1)", "5"),
        ("round(2.567, 2)", "2.57"),
        ("abs(-3) + min(4, 2, 9) + max(1, 5)", "10"),
        ("cos(0) + sin(0)", "1"),
        ("2 ** 100", str(2**100)),
        ("10 ** 999", "1" + "0" * 999),
    ],
)
async def test_calculator_values(expression: str, value: str) -> None:
    result = await calc(expression)
    assert not result.is_error, result.text
    assert result.text == f"{expression} = {value}"


async def test_calculator_pi() -> None:
    result = await calc("pi")
    assert float(result.text.split(" = ")[1]) == pytest.approx(math.pi, rel=1e-14)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("9 ** 9 ** 9", "more than 1000 digits"),
        ("10 ** 1000", "more than 1000 digits"),
        ("(10 ** 600) * (10 ** 600)", "more than 1000 digits"),
        ("2.0 ** 10000", "too large"),
        ("1e308 * 10", "not a finite number"),
        ("sqrt(-1)", "math error"),
        ("log(0)", "math error"),
        ("(-8) ** (1/3)", "not a real number"),
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('true')", "only plain function names"),
        ("(1).real", "Attribute is not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("'a' * 3", "only numbers are allowed"),
        ("True + 1", "only numbers are allowed"),
        ("1 < 2", "Compare is not allowed"),
        ("[1, 2]", "List is not allowed"),
        ("1 << 100", "LShift"),
        ("max(1)", "max takes 2..50 arguments"),
        ("round(1.5, ndigits=1)", "positional arguments only"),
        ("1 +", "not valid arithmetic syntax"),
        ("lambda: 1", "Lambda is not allowed"),
    ],
)
async def test_calculator_errors(expression: str, message: str) -> None:
    result = await calc(expression)
    assert result.is_error
    assert result.text.startswith("Tool 'calculator' failed: ")
    assert message in result.text


async def test_calculator_huge_power_fails_fast() -> None:
    start = time.perf_counter()
    result = await calc("9**9**9**9")
    assert result.is_error
    assert time.perf_counter() - start < 0.5


async def test_calculator_rejects_overlong_expressions_by_schema() -> None:
    result = await calc("1+" * 300 + "1")
    assert result.is_error
    assert "expression: String should have at most 500 characters" in result.text


# --- clock ---

FIXED = dt.datetime(2025, 3, 29, 23, 30, tzinfo=dt.UTC)  # a Saturday, UTC


async def clock(timezone: str, **args: object) -> ToolResult:
    registry = ToolRegistry([make_clock_tool(timezone, now=lambda: FIXED)])
    return await registry.execute("clock", _json(args), CTX, POLICY)


async def test_clock_now_in_operator_time_zone() -> None:
    result = await clock("Europe/Paris")
    # 23:30 UTC on 29 March 2025 is 00:30 on Sunday 30 March in Paris (still CET, UTC+1).
    assert result.text == "Now: 2025-03-30T00:30+01:00 (Sunday) (time zone Europe/Paris)"
    utc = await clock("UTC", operation="now")
    assert utc.text == "Now: 2025-03-29T23:30+00:00 (Saturday) (time zone UTC)"


async def test_clock_weekday() -> None:
    result = await clock("UTC", operation="weekday", date="2024-02-29")
    assert result.text == "2024-02-29 is a Thursday"


async def test_clock_add_keeps_wall_clock_across_dst() -> None:
    # Paris switches to summer time at 02:00 on 30 March 2025.
    result = await clock("Europe/Paris", operation="add", date="2025-03-29T12:00", days=1)
    assert result.text.endswith("= 2025-03-30T12:00+02:00 (Sunday)")
    back = await clock("UTC", operation="add", date="2025-01-01", days=-1, hours=-1)
    assert back.text.endswith("= 2024-12-30T23:00+00:00 (Monday)")
    assert "-1 days 1 hours 0 minutes" in back.text


async def test_clock_diff() -> None:
    result = await clock(
        "Europe/Paris", operation="diff", date="2025-03-29T12:00", other_date="2025-03-30T12:00"
    )
    # One calendar day, but only 23 hours elapsed (the DST jump).
    assert "0 days 23 hours 0 minutes" in result.text
    assert "23.00 hours; 1 calendar days" in result.text
    utc = await clock("UTC", operation="diff", date="2025-01-01", other_date="2025-03-01")
    assert "59 days 0 hours 0 minutes" in utc.text
    explicit_offset = await clock(
        "UTC", operation="diff", date="2025-01-01T00:00+02:00", other_date="2025-01-01T00:00Z"
    )
    assert "0 days 2 hours 0 minutes" in explicit_offset.text


async def test_clock_errors() -> None:
    bad = await clock("UTC", operation="weekday", date="next tuesday")
    assert bad.is_error and "is not an ISO date" in bad.text
    overflow = await clock("UTC", operation="add", date="9999-12-31", days=10)
    assert overflow.is_error and "out of range" in overflow.text
    wrong_op = await clock("UTC", operation="yesterday")
    assert wrong_op.is_error and "operation: Input should be" in wrong_op.text


# --- HTML → text ---

PAGE = """<!doctype html>
<html><head><title>The  Title</title><style>p { color: red }</style>
<script>document.write("<p>injected</p>")</script></head>
<body>
<nav><a href="/">Home</a> <a href="/about">About</a></nav>
<h1>Main <em>heading</em></h1>
<p>First   paragraph with a <a href="/docs/x?y=1">relative link</a>
and a <a href="javascript:alert(1)">script link</a>.</p>
<h2>Lists</h2>
<ul><li>one</li><li>two</li></ul>
<pre>  keep   this
    indentation</pre>
<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>
<p>Fish &amp; chips<br>on two lines <img src="c.png" alt="a cat"></p>
<noscript>enable js</noscript><svg><title>icon</title><text>svg text</text></svg>
<footer>Footer text</footer>
</body></html>"""


def test_html_to_text() -> None:
    title, text = html_to_text(PAGE, "https://example.org/dir/page.html")
    assert title == "The Title"
    assert text == (
        "# Main heading\n\n"
        "First paragraph with a relative link (https://example.org/docs/x?y=1) and a script "
        "link.\n\n"
        "## Lists\n\n"
        "- one\n- two\n\n"
        "  keep   this\n    indentation\n\n"
        "a | b\n1 | 2\n\n"
        "Fish & chips\non two lines [image: a cat]\n\n"
        "Footer text"
    )
    for dropped in ("color: red", "injected", "Home", "About", "enable js", "svg text", "icon"):
        assert dropped not in text


def test_html_to_text_survives_broken_markup() -> None:
    title, text = html_to_text("<p>open <b>bold <script>never closed", "")
    assert title == ""
    assert text == "open bold"
    _, nested = html_to_text("<div><nav>x<nav>y</nav>z</nav>after</div>", "")
    assert nested == "after"
