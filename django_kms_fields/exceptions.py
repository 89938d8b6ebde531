"""Exceptions raised by django-kms-fields.

Messages name models, fields, primary keys, scopes and data key ids. They never
contain a plaintext value, a data key or a stored token.
"""

from __future__ import annotations


class EncryptionError(Exception):
    """Base class for every error that django-kms-fields raises."""


class DecryptionError(EncryptionError):
    """A stored value cannot be decrypted.

    The value was tampered with or truncated, moved to another row, tenant or
    field, or its data key no longer exists. The message does not say which,
    just as an AEAD tag check cannot.
    """


class KeyProviderError(EncryptionError):
    """The key provider (AWS KMS or the local provider) failed.

    ``code`` is the provider's error code, for example ``AccessDeniedException``
    or ``KMSInvalidStateException`` from KMS, or the botocore exception name for
    a connection failure such as ``EndpointConnectionError``.
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
