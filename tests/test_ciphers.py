import contextlib
import math
import os
import string

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from django_kms_fields import ciphers

KEY_ID = ciphers.encode_key_id(0x0123456789ABCDEF)
BASE64_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"


@pytest.fixture
def aead():
    return AESGCM(os.urandom(32))


def test_key_id_round_trip():
    for numeric in (0, 1, 2**63 - 1, 0x0123456789ABCDEF):
        text = ciphers.encode_key_id(numeric)
        assert len(text) == ciphers.KEY_ID_LENGTH
        assert ciphers.decode_key_id(text) == numeric


def test_key_id_rejects_bad_text():
    with pytest.raises(ciphers.InvalidToken):
        ciphers.decode_key_id("short")
    with pytest.raises(ciphers.InvalidToken):
        ciphers.decode_key_id("~~~~~~~~~~~")


def test_token_layout(aead):
    associated = ciphers.associated_data(KEY_ID, "global", "app.model.field")
    token = ciphers.seal(aead, KEY_ID, b"hello", associated)

    assert token.startswith("kf1." + KEY_ID)
    assert ciphers.token_key_id(token) == KEY_ID
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/.")
    assert ciphers.open_token(aead, token, associated) == b"hello"


@pytest.mark.parametrize("length", [0, 1, 2, 3, 100, 200, 1000, 4096])
def test_token_size_bound(aead, length):
    associated = ciphers.associated_data(KEY_ID, "global", "app.model.field")
    token = ciphers.seal(aead, KEY_ID, os.urandom(length), associated)

    assert len(token) == 15 + math.ceil(4 * (length + 28) / 3)
    assert len(token) <= 4 / 3 * (length + 40)


def test_random_nonces(aead):
    associated = ciphers.associated_data(KEY_ID, "global", "app.model.field")
    tokens = {ciphers.seal(aead, KEY_ID, b"same", associated) for _ in range(100)}
    assert len(tokens) == 100


@pytest.mark.parametrize(
    ("scope", "label"),
    [
        ("tenant:2", "app.model.field"),
        ("global", "app.model.other"),
        ("row:app.model:1", "app.model.field"),
    ],
)
def test_associated_data_binds_scope_and_label(aead, scope, label):
    token = ciphers.seal(
        aead, KEY_ID, b"x", ciphers.associated_data(KEY_ID, "tenant:1", "app.model.field")
    )
    with pytest.raises(ciphers.InvalidToken):
        ciphers.open_token(aead, token, ciphers.associated_data(KEY_ID, scope, label))


def test_associated_data_binds_key_id(aead):
    token = ciphers.seal(aead, KEY_ID, b"x", ciphers.associated_data(KEY_ID, "global", "a.b.c"))
    other_key_id = ciphers.encode_key_id(42)
    with pytest.raises(ciphers.InvalidToken):
        ciphers.open_token(aead, token, ciphers.associated_data(other_key_id, "global", "a.b.c"))


def test_associated_data_is_unambiguous():
    # Without the length prefix these two would give the same bytes.
    first = ciphers.associated_data(KEY_ID, "tenant:1", "2.a.b")
    second = ciphers.associated_data(KEY_ID, "tenant:12", ".a.b")
    assert first != second


def test_scope_length_limit():
    with pytest.raises(ValueError):
        ciphers.associated_data(KEY_ID, "tenant:" + "x" * 300, "a.b.c")


def test_tampered_tokens_fail(aead):
    associated = ciphers.associated_data(KEY_ID, "global", "a.b.c")
    token = ciphers.seal(aead, KEY_ID, b"secret value", associated)
    flipped = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    for bad in (
        flipped,
        token[:-1],
        token[: ciphers.MIN_TOKEN_LENGTH],
        token + "A",
        token[:20] + "~" + token[20:],
        token.replace("kf1.", "kf2."),
    ):
        with pytest.raises(ciphers.InvalidToken):
            ciphers.open_token(aead, bad, associated)


@pytest.mark.parametrize("length", [0, 1, 2])
def test_every_edited_payload_fails(aead, length):
    # The three lengths end the payload with each number of unused bits.
    associated = ciphers.associated_data(KEY_ID, "global", "a.b.c")
    token = ciphers.seal(aead, KEY_ID, os.urandom(length), associated)
    edits = [token + extra for extra in ("=", "==", "A", "\n")]
    for position in range(ciphers.HEADER_LENGTH, len(token)):
        edits.extend(
            token[:position] + character + token[position + 1 :]
            for character in BASE64_ALPHABET + "= \n"
            if character != token[position]
        )
        edits.append(token[:position] + "=" + token[position:])

    for edited in edits:
        with pytest.raises(ciphers.InvalidToken):
            ciphers.open_token(aead, edited, associated)


def test_every_edited_key_id_fails():
    for numeric in (1, 42, 0x0123456789ABCDEF):
        text = ciphers.encode_key_id(numeric)
        for position in range(len(text)):
            for character in BASE64_ALPHABET:
                if character == text[position]:
                    continue
                edited = text[:position] + character + text[position + 1 :]
                with contextlib.suppress(ciphers.InvalidToken):
                    assert ciphers.decode_key_id(edited) != numeric


def test_short_text_is_not_a_token():
    assert not ciphers.looks_like_token("kf1.short")
    assert not ciphers.looks_like_token("hello world" * 10)
    with pytest.raises(ciphers.InvalidToken):
        ciphers.token_key_id("plaintext")
