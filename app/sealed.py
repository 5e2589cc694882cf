"""Sealed blobs: data cascade hands to a client and takes back, that nobody else can read or
forge (the Responses API's `encrypted_content` on reasoning items).

A blob is AES-256-GCM over the JSON payload, with a fresh 96-bit nonce each time, under a key
derived (HKDF-SHA256) from `CASCADE_SECRET_KEY`, and bound to its owner and purpose as
associated data: a blob sealed for one API key, or for another purpose, does not open for
another. Text form: `cas1.` + base64url(nonce ‖ ciphertext ‖ tag), no padding.

Contracts: `seal` never repeats a nonce (random, 2^-32 collision bound far past any realistic
count per key); `open` either returns exactly what was sealed or raises `InvalidRequestError`
(400) without saying why, for a tampered, truncated, foreign or malformed blob alike.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.errors import InvalidRequestError

PREFIX = "cas1."
_NONCE = 12


def derive_key(secret: str) -> bytes:
    """The 256-bit sealing key for an operator secret (any length, used as HKDF input)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"cascade sealed blobs", info=b"v1"
    ).derive(secret.encode())


class SealedBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a sealing key is 32 bytes")
        self._aead = AESGCM(key)

    @staticmethod
    def _context(owner: str, purpose: str) -> bytes:
        return orjson.dumps([purpose, owner])

    def seal(self, payload: Any, *, owner: str, purpose: str) -> str:
        nonce = os.urandom(_NONCE)
        data = self._aead.encrypt(nonce, orjson.dumps(payload), self._context(owner, purpose))
        return PREFIX + base64.urlsafe_b64encode(nonce + data).rstrip(b"=").decode()

    def open(self, blob: str, *, owner: str, purpose: str, param: str | None = None) -> Any:
        invalid = InvalidRequestError(
            "encrypted_content is not a blob this server sealed for you", param=param
        )
        if not isinstance(blob, str) or not blob.startswith(PREFIX):
            raise invalid
        text = blob[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise invalid from None
        if len(raw) < _NONCE + 16:
            raise invalid
        try:
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._context(owner, purpose))
        except InvalidTag:
            raise invalid from None
        return orjson.loads(plain)
