"""The stored token format and AES-256-GCM encryption of field values.

A stored value is an ASCII token of this form::

    kf1.<key id><payload>

``kf1.``
    Format version 1: AES-256-GCM with a random 96-bit nonce and a 128-bit tag.
``<key id>``
    The data key's id (``DataKey.id``, 8 bytes big-endian) in base64 without
    padding: always 11 characters.
``<payload>``
    ``nonce (12 bytes) || ciphertext || tag (16 bytes)`` in base64 (RFC 4648,
    section 4) without padding.

The token of an n-byte plaintext therefore has 15 + ceil(4 * (n + 28) / 3)
characters, at most 4/3 * (n + 40). Both base64 parts must be canonical (the
unused low bits of their last character zero), so that a token has exactly
one text form and any changed character fails to decrypt. The alphabet is
``A-Z a-z 0-9 + / .``, which no SQL ``LIKE`` pattern treats as a wildcard.

The associated data authenticated with every value is::

    b"kf1" || key id (8 bytes) || len(scope) (2 bytes, big-endian) || scope || label

where ``scope`` is the data key's scope (``global``, ``tenant:<id>`` or
``row:<app>.<model>:<pk>``) and ``label`` identifies the field
(``<app>.<model>.<field>``), both UTF-8. A token moved to another tenant, row
or field therefore fails the tag check.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"kf1"
PREFIX = "kf1."
KEY_ID_LENGTH = 11
HEADER_LENGTH = len(PREFIX) + KEY_ID_LENGTH
NONCE_LENGTH = 12
TAG_LENGTH = 16
MIN_TOKEN_LENGTH = HEADER_LENGTH + 38  # base64 of an empty plaintext's nonce and tag
MAX_SCOPE_LENGTH = 255
_PADDING = ("", "===", "==", "=")  # indexed by len(payload) % 4
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# The characters that may end a payload, indexed by len(payload) % 4: a last
# character that carries unused bits must have them all zero. With padding
# and unused bits rejected, each token has a single text form.
_LAST_CHARACTERS: tuple[frozenset[str], ...] = (
    frozenset(_ALPHABET),
    frozenset(),
    frozenset(_ALPHABET[::16]),
    frozenset(_ALPHABET[::4]),
)


class InvalidToken(Exception):
    """A token is malformed or fails authentication. Carries no detail."""


if sys.version_info >= (3, 11):
    # Strict mode rejects characters outside the alphabet instead of skipping
    # them. A partial of the C function saves a Python call per value.
    _b64decode = functools.partial(binascii.a2b_base64, strict_mode=True)

else:

    def _b64decode(text: str) -> bytes:
        return base64.b64decode(text, validate=True)


def encode_key_id(key_id: int) -> str:
    """Return the 11-character text form of a data key id."""
    return binascii.b2a_base64(key_id.to_bytes(8, "big"), newline=False).decode("ascii")[:-1]


def decode_key_id(text: str) -> int:
    """Return the integer data key id of an 11-character key id."""
    # 11 characters: 11 % 4 == 3, so the last one carries two unused bits.
    if len(text) != KEY_ID_LENGTH or text[-1] not in _LAST_CHARACTERS[3]:
        raise InvalidToken
    try:
        return int.from_bytes(_b64decode(text + "="), "big")
    except binascii.Error:
        raise InvalidToken from None


def token_key_id(token: str) -> str:
    """Return the text key id of a token, or raise ``InvalidToken``."""
    if len(token) < MIN_TOKEN_LENGTH or not token.startswith(PREFIX):
        raise InvalidToken
    return token[len(PREFIX) : HEADER_LENGTH]


def looks_like_token(value: str) -> bool:
    """Return whether ``value`` has the shape of a token (without checking its tag)."""
    return len(value) >= MIN_TOKEN_LENGTH and value.startswith(PREFIX)


def associated_data(key_id: str, scope: str, label: str) -> bytes:
    """Build the associated data that binds a value to its data key, scope and field."""
    scope_bytes = scope.encode()
    if len(scope_bytes) > MAX_SCOPE_LENGTH:
        raise ValueError(f"scope is longer than {MAX_SCOPE_LENGTH} bytes")
    return (
        VERSION
        + _b64decode(key_id + "=")
        + len(scope_bytes).to_bytes(2, "big")
        + scope_bytes
        + label.encode()
    )


def seal(aead: AESGCM, key_id: str, plaintext: bytes, associated: bytes) -> str:
    """Encrypt ``plaintext`` and return its token."""
    nonce = os.urandom(NONCE_LENGTH)
    payload = binascii.b2a_base64(nonce + aead.encrypt(nonce, plaintext, associated), newline=False)
    return PREFIX + key_id + payload.decode("ascii").rstrip("=")


def open_token(aead: AESGCM, token: str, associated: bytes) -> bytes:
    """Decrypt a token and return its plaintext, or raise ``InvalidToken``."""
    remainder = (len(token) - HEADER_LENGTH) % 4
    if not token.startswith(PREFIX) or token[-1] not in _LAST_CHARACTERS[remainder]:
        raise InvalidToken
    try:
        blob = _b64decode(token[HEADER_LENGTH:] + _PADDING[remainder])
        return aead.decrypt(blob[:NONCE_LENGTH], blob[NONCE_LENGTH:], associated)
    except (binascii.Error, InvalidTag, ValueError):
        raise InvalidToken from None
