"""Envelope-encrypted Django model fields backed by AWS KMS or a local master key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "EncryptedCharField",
    "EncryptedDateField",
    "EncryptedDateTimeField",
    "EncryptedEmailField",
    "EncryptedField",
    "EncryptedIntegerField",
    "EncryptedJSONField",
    "EncryptedTextField",
    "clear_data_key_cache",
]

if TYPE_CHECKING:
    from .fields import (
        EncryptedCharField,
        EncryptedDateField,
        EncryptedDateTimeField,
        EncryptedEmailField,
        EncryptedField,
        EncryptedIntegerField,
        EncryptedJSONField,
        EncryptedTextField,
    )


def clear_data_key_cache() -> None:
    """Drop every plaintext data key from this process's memory.

    The next read or write unwraps the keys again with the key provider.
    """
    from .keyring import get_keyring

    get_keyring().clear()


def __getattr__(name: str) -> Any:
    # Fields are imported on first use, so that importing the package (as
    # INSTALLED_APPS does) does not import Django's ORM before settings load.
    if name in __all__:
        from . import fields

        return getattr(fields, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
