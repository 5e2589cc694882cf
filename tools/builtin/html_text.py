"""HTML → readable text for the model (stdlib `html.parser`; nothing is executed or fetched).

Dropped: scripts, styles, `<noscript>`, templates, SVG, forms' controls, `<nav>`, `<aside>`,
`<iframe>`/`<object>`, and the whole `<head>` except its `<title>`. Kept as text: headings
(`#`-prefixed), paragraphs and blocks (blank-line separated), list items (`- `), table rows
(cells joined by ` | `), `<pre>` blocks verbatim, and links as `text (url)` with the URL made
absolute against the page's URL (only http/https links are shown; `javascript:` and the like
are dropped).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

_SKIP = frozenset(
    {
        "script",
        "style",
        "noscript",
        "template",
        "svg",
        "math",
        "nav",
        "aside",
        "iframe",
        "object",
        "embed",
        "canvas",
        "select",
        "button",
        "head",
    }
)
_VOID = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    }
)
_BLOCK = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "main",
        "header",
        "footer",
        "blockquote",
        "figure",
        "figcaption",
        "table",
        "ul",
        "ol",
        "dl",
        "dt",
        "dd",
        "form",
        "fieldset",
        "details",
        "summary",
        "address",
        "hr",
    }
)
# Whitespace inside <pre> travels as control characters through the folding in _tidy.
_PROTECT = str.maketrans({"\n": "\x00", " ": "\x01", "\t": "\x02", "\r": None})
_RESTORE = str.maketrans({"\x00": "\n", "\x01": " ", "\x02": "\t"})
_STRIP_SENTINELS = str.maketrans({"\x00": None, "\x01": None, "\x02": None})
_SPACES = re.compile(r"\s+")
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


class _Extractor(HTMLParser):
    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self.skip_stack: list[str] = []
        self.in_title = False
        self.pre_depth = 0
        self.links: list[str | None] = []
        self.cell_index: list[int] = []

    # --- helpers ---
    def _emit(self, text: str) -> None:
        self.parts.append(text)

    def _break(self, blank: bool = True) -> None:
        self.parts.append("\n\n" if blank else "\n")

    # --- parser callbacks ---
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title" and all(t == "head" for t in self.skip_stack):
            self.in_title = True
            return
        if self.skip_stack:
            if tag == self.skip_stack[-1] or (tag in _SKIP and tag not in _VOID):
                self.skip_stack.append(tag)
            return
        if tag in _SKIP:
            self.skip_stack.append(tag)
            return
        if tag in _HEADINGS:
            self._break()
            self._emit("#" * _HEADINGS[tag] + " ")
        elif tag in _BLOCK:
            self._break()
        elif tag == "br":
            self._break(blank=False)
        elif tag == "li":
            self._break(blank=False)
            self._emit("- ")
        elif tag == "tr":
            self._break(blank=False)
            self.cell_index.append(0)
        elif tag in ("td", "th"):
            if self.cell_index:
                if self.cell_index[-1]:
                    self._emit(" | ")
                self.cell_index[-1] += 1
        elif tag == "pre":
            self._break()
            self.pre_depth += 1
        elif tag == "a":
            href = dict(attrs).get("href")
            self.links.append(_absolute_link(self.base_url, href))
        elif tag == "img":
            alt = (dict(attrs).get("alt") or "").strip()
            if alt:
                self._emit(f"[image: {alt}]")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self.in_title:
            self.in_title = False
            return
        if self.skip_stack:
            if tag in self.skip_stack:
                while self.skip_stack and self.skip_stack.pop() != tag:
                    pass
            return
        if tag in _HEADINGS or tag in _BLOCK:
            self._break()
        elif tag == "tr":
            if self.cell_index:
                self.cell_index.pop()
        elif tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
            self._break()
        elif tag == "a" and self.links:
            href = self.links.pop()
            if href:
                self._emit(f" ({href})")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title_parts.append(data)
            return
        if self.skip_stack:
            return
        data = data.translate(_STRIP_SENTINELS)
        if self.pre_depth:
            self._emit(data.translate(_PROTECT))  # kept out of whitespace folding
        else:
            self._emit(_SPACES.sub(" ", data))  # source line breaks are just spaces in HTML


def _absolute_link(base_url: str, href: str | None) -> str | None:
    if not href or href.startswith("#"):
        return None
    try:
        url = urljoin(base_url, href.strip())
    except ValueError:
        return None
    return url if urlsplit(url).scheme in ("http", "https") else None


def html_to_text(html: str, base_url: str = "") -> tuple[str, str]:
    """(title, readable text) of an HTML document."""
    parser = _Extractor(base_url)
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # pathological markup: keep what was read so far
        pass
    title = " ".join("".join(parser.title_parts).split())
    return title, _tidy("".join(parser.parts))


def _tidy(text: str) -> str:
    out = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    out = re.sub(r"\n{3,}", "\n\n", out)
    return out.translate(_RESTORE).strip()
