"""The ledger's keys and the plain-chat approval words, without Redis: what counts as the same
conversation, and what counts as a yes."""

from __future__ import annotations

import pytest

from app.agent.approval import approval_prompt, is_approval
from app.sessions.ledger import ClientHistory

ANSWER = {"role": "assistant", "content": "It is 42."}


def digest(owner: str, *messages: dict[str, object]) -> str:
    return ClientHistory(owner, list(messages)).digest("steps")


def test_the_same_conversation_resent_differently_has_the_same_digest() -> None:
    as_sent = digest("key_a", {"role": "user", "content": "6*7?"}, ANSWER)
    resent = digest(
        "key_a",
        {"role": "user", "content": [{"type": "text", "text": "6*7?"}]},
        {"role": "assistant", "content": "\n\nIt is 42.  ", "reasoning_content": "echoed"},
    )
    assert resent == as_sent


def test_another_owner_kind_or_history_has_another_digest() -> None:
    question = {"role": "user", "content": "6*7?"}
    base = digest("key_a", question, ANSWER)
    assert digest("key_b", question, ANSWER) != base
    assert digest("key_a", {"role": "user", "content": "6*8?"}, ANSWER) != base
    assert ClientHistory("key_a", [question, ANSWER]).digest("pause") != base
    with_image = {
        "role": "user",
        "content": [
            {"type": "text", "text": "6*7?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    }
    assert digest("key_a", with_image, ANSWER) != base


def test_then_extends_a_history_without_changing_it() -> None:
    question = {"role": "user", "content": "6*7?"}
    history = ClientHistory("key_a", [question])
    before = history.digest("steps")
    assert history.then(ANSWER).digest("steps") == digest("key_a", question, ANSWER)
    assert history.digest("steps") == before and len(history) == 1


@pytest.mark.parametrize(
    "text", ["yes", "Yes", " YES! ", "y", "ok.", "allow", "Approve", "confirm!!", "sure?"]
)
def test_approval_words(text: str) -> None:
    assert is_approval({"role": "user", "content": text})


@pytest.mark.parametrize("text", ["no", "yes please", "okay", "not yes", "", "yes, but no"])
def test_anything_else_is_not_an_approval(text: str) -> None:
    assert not is_approval({"role": "user", "content": text})


def test_the_question_names_the_calls_and_shortens_long_values() -> None:
    prompt = approval_prompt(
        [
            {"tool": "ha_call", "arguments": '{"service": "light.turn_on", "n": 2}'},
            {"tool": "note", "arguments": '{"text": "' + "x" * 200 + '"}'},
        ]
    )
    assert prompt.startswith("Run ha_call (service: light.turn_on, n: 2) and note (text: xxx")
    assert prompt.endswith("? Reply yes to allow; anything else declines.")
    assert len(prompt) < 200
