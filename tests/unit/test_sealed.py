"""Sealed blobs open only for the key, owner and purpose they were sealed for, unchanged."""

from __future__ import annotations

import base64

import pytest

from app.errors import InvalidRequestError
from app.sealed import PREFIX, SealedBox, derive_key

BOX = SealedBox(derive_key("operator secret"))
PAYLOAD = {"reasoning": "The user wants the weather; call the tool.", "n": [1, 2, 3]}


def test_a_blob_round_trips_and_hides_its_payload() -> None:
    blob = BOX.seal(PAYLOAD, owner="key_a", purpose="reasoning")
    assert blob.startswith(PREFIX)
    assert "weather" not in blob
    raw = base64.urlsafe_b64decode(blob[len(PREFIX) :] + "==")
    assert b"weather" not in raw
    assert BOX.open(blob, owner="key_a", purpose="reasoning") == PAYLOAD


def test_two_seals_of_the_same_payload_differ() -> None:
    first = BOX.seal(PAYLOAD, owner="o", purpose="reasoning")
    assert first != BOX.seal(PAYLOAD, owner="o", purpose="reasoning")


def flip(blob: str, index: int) -> str:
    body = bytearray(base64.urlsafe_b64decode(blob[len(PREFIX) :] + "=="))
    body[index] ^= 0x01
    return PREFIX + base64.urlsafe_b64encode(bytes(body)).rstrip(b"=").decode()


@pytest.mark.parametrize("index", [0, 11, 12, 20, -1])
def test_a_tampered_blob_is_refused(index: int) -> None:
    blob = BOX.seal(PAYLOAD, owner="o", purpose="reasoning")
    with pytest.raises(InvalidRequestError) as refused:
        BOX.open(flip(blob, index), owner="o", purpose="reasoning", param="input[1]")
    assert refused.value.status == 400 and refused.value.param == "input[1]"


@pytest.mark.parametrize(
    ("owner", "purpose", "box"),
    [
        ("key_b", "reasoning", BOX),
        ("key_a", "other", BOX),
        ("key_a", "reasoning", SealedBox(derive_key("another secret"))),
    ],
)
def test_a_blob_does_not_open_for_another_owner_purpose_or_key(
    owner: str, purpose: str, box: SealedBox
) -> None:
    blob = BOX.seal(PAYLOAD, owner="key_a", purpose="reasoning")
    with pytest.raises(InvalidRequestError):
        box.open(blob, owner=owner, purpose=purpose)


@pytest.mark.parametrize("blob", ["", "cas1.", "cas1.!!!", "cas2.AAAA", PREFIX + "A" * 10, "x"])
def test_malformed_blobs_are_refused(blob: str) -> None:
    with pytest.raises(InvalidRequestError):
        BOX.open(blob, owner="o", purpose="reasoning")
