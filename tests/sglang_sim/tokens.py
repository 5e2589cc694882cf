"""A stand-in for Qwen3.6's tokenizer and SGLang's prefix (radix) cache, for the simulator.

Tokenizer approximation (not the real byte-level BPE, which the tests do not ship):
- The special and added tokens of the chat format (`<|im_start|>`, `<|im_end|>`, `<think>`,
  `</think>`, `<tool_call>`, `<tool_response>`, the vision tokens, ...) are one token each,
  as in the real vocabulary.
- Other text is split by a regular expression into: a letter run with at most one leading
  space or tab (`" Paris"`), a group of up to three digits, a run of punctuation/symbols with
  at most one leading space, a run of newlines (with the spaces before them), or another
  blank run (whose last blank goes to a following word, as in GPT-style tokenizers). Each
  piece counts as one token.
So a word is one token however long (the real tokenizer splits rare long words), and digits go
in threes (the real one may split them one by one). Counts are in the right range for English
and code, exact for nothing. Concatenating the tokens always gives back the input text.

An image in a rendered prompt is a single `<|image_pad|>` here; the runtime expands it to one
token per 32x32 pixel patch, which the caller must add itself if it wants those in its counts.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["SPECIAL_TOKENS", "RadixCache", "count_tokens", "tokenize"]

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Longest special tokens first so none is cut short by a shorter one sharing its start.
_SPECIAL = "|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS, key=len, reverse=True))
_PIECE = re.compile(
    rf"""
    {_SPECIAL}
    | [ \t]?[^\W\d_]+          # a word, with one leading space or tab
    | \d{{1,3}}                # digits, in groups of up to three
    | [ ]?(?:(?!{_SPECIAL})[^\s\w]|_)+
                               # punctuation and symbols, with one leading space, stopping
                               # before a special token
    | [^\S\n]*\n+              # newlines, with the blanks before them
    | [^\S\n]+(?!\S)           # a blank run, leaving its last blank to a following word
    | [^\S\n]+                 # any other blank run
    | .                        # a safety net, so every character lands in some token
    """,
    re.VERBOSE | re.DOTALL,
)


def tokenize(text: str) -> list[str]:
    """Split `text` into approximate tokens; `"".join(tokenize(text)) == text` always holds."""
    return _PIECE.findall(text)


def count_tokens(text: str) -> int:
    """The number of approximate tokens in `text`."""
    return sum(1 for _ in _PIECE.finditer(text))


class _Node:
    __slots__ = ("children", "count")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        # How many stored prompts pass through this node.
        self.count = 0


class RadixCache:
    """Models SGLang's prefix cache well enough to report `cached_tokens`.

    `match_and_insert(tokens)` returns how many leading tokens of `tokens` were already cached
    (the longest common prefix with any stored prompt), then stores `tokens`. As in SGLang
    (`Req._compute_max_prefix_len`), at most `len(tokens) - 1` tokens count as cached, since
    the last prompt token is always computed; with `page_size > 1` the cached length is rounded
    down to a whole number of pages, as SGLang caches whole pages only.

    At most `max_prompts` prompts are kept, least recently inserted or re-inserted first out,
    so memory stays bounded. Not modelled: eviction by KV-pool size and sharing between
    different images with equal placeholder text. The hybrid model's coarser reuse (recurrent
    states kept only at a few points) is `tests.sglang_sim.hybrid_cache`. Thread-safe.
    """

    def __init__(self, page_size: int = 1, *, max_prompts: int = 1024) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if max_prompts < 1:
            raise ValueError("max_prompts must be at least 1")
        self.page_size = page_size
        self.max_prompts = max_prompts
        self._lock = threading.Lock()
        self._root = _Node()
        self._prompts: OrderedDict[tuple[str, ...], None] = OrderedDict()

    def __len__(self) -> int:
        """The number of stored prompts."""
        return len(self._prompts)

    def match_and_insert(self, tokens: Sequence[str]) -> int:
        """Cached prefix length of `tokens` (see the class docstring); then store `tokens`."""
        key = tuple(tokens)
        with self._lock:
            matched = self._match(key)
            self._insert(key)
        matched = min(matched, max(len(key) - 1, 0))
        return matched - matched % self.page_size

    def prefill(self, tokens: Sequence[str]) -> int:
        """Cached tokens of a prompt about to be prefilled; the prompt is stored."""
        return self.match_and_insert(tokens)

    def finish(self, prompt: Sequence[str], output: Sequence[str], fed: int) -> None:
        """A request ended: its prompt and every emitted token are stored (`fed`, the tokens
        whose KV was computed, matters to the hybrid cache only)."""
        self.match_and_insert([*prompt, *output])

    def reset(self) -> None:
        """Forget every stored prompt."""
        with self._lock:
            self._root = _Node()
            self._prompts.clear()

    def _match(self, key: tuple[str, ...]) -> int:
        node = self._root
        matched = 0
        for token in key:
            child = node.children.get(token)
            if child is None:
                break
            node = child
            matched += 1
        return matched

    def _insert(self, key: tuple[str, ...]) -> None:
        if key in self._prompts:
            self._prompts.move_to_end(key)
            return
        self._prompts[key] = None
        node = self._root
        for token in key:
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = _Node()
            child.count += 1
            node = child
        while len(self._prompts) > self.max_prompts:
            oldest, _ = self._prompts.popitem(last=False)
            self._remove(oldest)

    def _remove(self, key: tuple[str, ...]) -> None:
        node = self._root
        for token in key:
            child = node.children[token]
            child.count -= 1
            if child.count == 0:
                # No other stored prompt passes through here: drop the whole branch.
                del node.children[token]
                return
            node = child
