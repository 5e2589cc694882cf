"""The simulator's approximate tokenizer and prefix-cache model (tests/sglang_sim/tokens.py)."""

from __future__ import annotations

import pytest

from tests.sglang_sim.template import render_chat_prompt
from tests.sglang_sim.tokens import SPECIAL_TOKENS, RadixCache, count_tokens, tokenize

# ---------------------------------------------------------------------------------------------
# tokenize / count_tokens


@pytest.mark.parametrize("special", SPECIAL_TOKENS)
def test_special_tokens_are_single_tokens(special: str) -> None:
    assert tokenize(special) == [special]
    assert tokenize(f"x.{special}y") == ["x", ".", special, "y"]


def test_words_keep_one_leading_space_and_punctuation_splits() -> None:
    assert tokenize("Hello, world!") == ["Hello", ",", " world", "!"]
    assert tokenize("a  b") == ["a", " ", " b"]


def test_digits_go_in_groups_of_three() -> None:
    assert tokenize("12345") == ["123", "45"]
    assert tokenize("days=3") == ["days", "=", "3"]


def test_newline_runs_and_other_whitespace() -> None:
    assert tokenize("a\n\nb") == ["a", "\n\n", "b"]
    assert tokenize("a  \n b\t\tc") == ["a", "  \n", " b", "\t", "\tc"]
    assert tokenize("a   ") == ["a", "   "]


def test_chat_markup_tokenizes_to_its_special_tokens() -> None:
    assert tokenize("<|im_start|>assistant\n<think>\n") == [
        "<|im_start|>",
        "assistant",
        "\n",
        "<think>",
        "\n",
    ]


def test_tool_call_xml_tags_that_are_not_special_split_as_text() -> None:
    assert tokenize("<function=get_weather>") == ["<", "function", "=", "get", "_", "weather", ">"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        "Ünïcödé 漢字 ✓✓ emoji 🙂",
        "tabs\tand\r\nCRLF\r\n",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        '{"city": "Paris", "days": 3}',
        "under_score __init__ x_1",
        "<<think>> </think</think>>",
    ],
)
def test_tokens_concatenate_back_to_the_text(text: str) -> None:
    tokens = tokenize(text)
    assert "".join(tokens) == text
    assert all(tokens)
    assert count_tokens(text) == len(tokens)


def test_count_tokens_of_a_rendered_prompt() -> None:
    prompt = render_chat_prompt([{"role": "user", "content": "Hi there"}], enable_thinking=False)
    # <|im_start|> user \n Hi " there" <|im_end|> \n <|im_start|> assistant \n <think> \n\n
    # </think> \n\n
    assert count_tokens(prompt) == 14


# ---------------------------------------------------------------------------------------------
# RadixCache


def toks(text: str) -> list[str]:
    return list(text)


def test_first_prompt_has_nothing_cached() -> None:
    cache = RadixCache()
    assert cache.match_and_insert(toks("abcdef")) == 0


def test_repeated_prompt_caches_all_but_the_last_token() -> None:
    cache = RadixCache()
    cache.match_and_insert(toks("abcdef"))
    assert cache.match_and_insert(toks("abcdef")) == 5


def test_longest_shared_prefix_with_any_earlier_prompt() -> None:
    cache = RadixCache()
    cache.match_and_insert(toks("abcXXXX"))
    cache.match_and_insert(toks("abcdeYY"))
    assert cache.match_and_insert(toks("abcdefg")) == 5
    assert cache.match_and_insert(toks("zzz")) == 0


def test_extension_of_an_earlier_prompt_reuses_all_of_it() -> None:
    cache = RadixCache()
    cache.match_and_insert(toks("history"))
    assert cache.match_and_insert(toks("history+new turn")) == len("history")


def test_page_size_rounds_down_to_whole_pages() -> None:
    cache = RadixCache(page_size=4)
    cache.match_and_insert(toks("abcdefghij"))
    assert cache.match_and_insert(toks("abcdefgXYZ")) == 4  # 7 shared -> one page
    assert cache.match_and_insert(toks("abcdefghij")) == 8  # 9 usable -> two pages
    assert cache.match_and_insert(toks("abcQ")) == 0  # 3 shared -> no whole page


def test_empty_and_single_token_prompts() -> None:
    cache = RadixCache()
    assert cache.match_and_insert([]) == 0
    assert cache.match_and_insert(["a"]) == 0
    assert cache.match_and_insert(["a"]) == 0


def test_lru_bound_evicts_the_oldest_prompt() -> None:
    cache = RadixCache(max_prompts=2)
    cache.match_and_insert(toks("aaaa"))
    cache.match_and_insert(toks("bbbb"))
    cache.match_and_insert(toks("cccc"))  # evicts "aaaa"
    assert len(cache) == 2
    assert cache.match_and_insert(toks("aaaX")) == 0


def test_reinserting_a_prompt_refreshes_it() -> None:
    cache = RadixCache(max_prompts=2)
    cache.match_and_insert(toks("aaaa"))
    cache.match_and_insert(toks("bbbb"))
    cache.match_and_insert(toks("aaaa"))  # "aaaa" is now the most recent
    cache.match_and_insert(toks("cccc"))  # evicts "bbbb"
    assert cache.match_and_insert(toks("aaaX")) == 3
    assert cache.match_and_insert(toks("bbbX")) == 0


def test_eviction_keeps_prefixes_shared_with_live_prompts() -> None:
    cache = RadixCache(max_prompts=2)
    cache.match_and_insert(toks("shared-one"))
    cache.match_and_insert(toks("shared-two"))
    cache.match_and_insert(toks("other"))  # evicts "shared-one", "shared-two" still holds "shared-"
    assert cache.match_and_insert(toks("shared-onX")) == len("shared-")


def test_memory_stays_bounded_under_many_distinct_prompts() -> None:
    cache = RadixCache(max_prompts=8)
    for i in range(500):
        cache.match_and_insert([f"p{i}", *toks("x" * 50)])
    assert len(cache) == 8
    # Only the live prompts' nodes remain under the root.
    assert len(cache._root.children) == 8


def test_reset_forgets_everything() -> None:
    cache = RadixCache()
    cache.match_and_insert(toks("abcdef"))
    cache.reset()
    assert len(cache) == 0
    assert cache.match_and_insert(toks("abcdef")) == 0


@pytest.mark.parametrize("kwargs", [{"page_size": 0}, {"max_prompts": 0}])
def test_invalid_sizes_are_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RadixCache(**kwargs)


def test_multi_turn_chat_reuses_the_earlier_prompt() -> None:
    cache = RadixCache()
    turn1 = render_chat_prompt([{"role": "user", "content": "Hi"}], enable_thinking=False)
    first = tokenize(turn1)
    assert cache.match_and_insert([*first, "Hello", "!", "<|im_end|>"]) == 0
    turn2 = render_chat_prompt(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
        ],
        enable_thinking=False,
    )
    second = tokenize(turn2)
    # Turn 1 rendered `<think>\n\n</think>\n\n` after `assistant\n`; the earlier reply in turn
    # 2 has no think block, so reuse stops right after `<|im_start|>assistant\n`.
    shared = tokenize("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert second[: len(shared)] == shared
    assert cache.match_and_insert(second) == len(shared)
