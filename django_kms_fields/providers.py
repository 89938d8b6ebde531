"""Key providers: they wrap and unwrap data keys under a master key.

A provider never sees field values. ``KMS_FIELDS['PROVIDER']`` selects one:
``"aws"`` (:class:`AwsKmsProvider`), ``"local"`` (:class:`LocalProvider`) or the
dotted path of a :class:`KeyProvider` subclass, which is instantiated with the
validated settings.

This is the only module that talks to botocore, so it is the only one that
catches botocore errors; it re-raises them as ``KeyProviderError``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .conf import KmsFieldsSettings, get_settings
from .exceptions import KeyProviderError

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

DATA_KEY_LENGTH = 32


class GeneratedDataKey:
    """A new data key: its plaintext, which must stay in memory, and its wrapped form."""

    __slots__ = ("master_key_id", "plaintext", "wrapped")

    def __init__(self, plaintext: bytes, wrapped: bytes, master_key_id: str) -> None:
        if len(plaintext) != DATA_KEY_LENGTH:
            raise KeyProviderError(
                f"The key provider returned a {len(plaintext)}-byte data key; "
                f"AES-256 needs {DATA_KEY_LENGTH} bytes.",
                code="InvalidDataKey",
            )
        self.plaintext = plaintext
        self.wrapped = wrapped
        self.master_key_id = master_key_id

    def __repr__(self) -> str:
        return f"<GeneratedDataKey master_key_id={self.master_key_id!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("A plaintext data key cannot be pickled.")


class KeyProvider:
    """Base class of key providers.

    ``encryption_context`` is a flat dict of strings. Providers must bind the
    wrapped key to it, so that unwrapping with another context fails.
    """

    name = "custom"

    def __init__(self, settings: KmsFieldsSettings) -> None:
        self.settings = settings

    def generate_data_key(
        self, master_key_id: str, encryption_context: Mapping[str, str]
    ) -> GeneratedDataKey:
        """Create a random AES-256 data key wrapped under ``master_key_id``."""
        raise NotImplementedError

    def decrypt_data_key(
        self, wrapped: bytes, master_key_id: str, encryption_context: Mapping[str, str]
    ) -> bytes:
        """Unwrap a data key and return its 32 plaintext bytes."""
        raise NotImplementedError

    def rewrap_data_key(
        self,
        wrapped: bytes,
        source_master_key_id: str,
        destination_master_key_id: str,
        encryption_context: Mapping[str, str],
    ) -> tuple[bytes, str]:
        """Wrap a data key under another master key; return the new wrapped key and key id."""
        raise NotImplementedError

    def resolve_master_key_id(self, master_key_id: str) -> str:
        """Return the id that ``generate_data_key()`` records for ``master_key_id``.

        Raises ``KeyProviderError`` when the master key does not exist.
        """
        return master_key_id


class AwsKmsProvider(KeyProvider):
    """AWS KMS through boto3.

    The client is created on first use and shared by all threads (boto3 clients
    are thread-safe once created). ``KMS_FIELDS['AWS_CLIENT']`` is passed to
    ``session.client("kms", ...)``; a ``config`` given there is merged over the
    defaults below.
    """

    name = "aws"

    def __init__(self, settings: KmsFieldsSettings) -> None:
        super().__init__(settings)
        self._client: KMSClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> KMSClient:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._create_client()
                client = self._client
        return client

    def _create_client(self) -> KMSClient:
        import boto3
        from botocore.config import Config

        kwargs = dict(self.settings.aws_client)
        # Standard retry mode backs off on throttling and transient errors.
        config = Config(
            retries={"mode": "standard", "total_max_attempts": 5},
            connect_timeout=5,
            read_timeout=10,
        )
        user_config = kwargs.pop("config", None)
        if user_config is not None:
            config = config.merge(user_config)
        # A session per provider: creating clients from boto3's default session
        # is not thread-safe.
        return boto3.session.Session().client("kms", config=config, **kwargs)

    def _call(self, operation: str, master_key_id: str, **params: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(**params)
        except ClientError as error:
            details = error.response.get("Error", {})
            code = details.get("Code", "Unknown")
            raise KeyProviderError(
                f"KMS {_operation_name(operation)} failed for master key {master_key_id!r}: "
                f"{code}: {details.get('Message', '')}",
                code=code,
            ) from error
        except BotoCoreError as error:
            code = type(error).__name__
            raise KeyProviderError(
                f"KMS {_operation_name(operation)} failed for master key {master_key_id!r}: "
                f"{code}: {error}",
                code=code,
            ) from error

    def generate_data_key(
        self, master_key_id: str, encryption_context: Mapping[str, str]
    ) -> GeneratedDataKey:
        response = self._call(
            "generate_data_key",
            master_key_id,
            KeyId=master_key_id,
            KeySpec="AES_256",
            EncryptionContext=dict(encryption_context),
        )
        # KMS returns the key ARN even when it was called with an alias.
        return GeneratedDataKey(
            response["Plaintext"], response["CiphertextBlob"], response["KeyId"]
        )

    def decrypt_data_key(
        self, wrapped: bytes, master_key_id: str, encryption_context: Mapping[str, str]
    ) -> bytes:
        response = self._call(
            "decrypt",
            master_key_id,
            CiphertextBlob=wrapped,
            KeyId=master_key_id,
            EncryptionContext=dict(encryption_context),
        )
        plaintext: bytes = response["Plaintext"]
        return plaintext

    def rewrap_data_key(
        self,
        wrapped: bytes,
        source_master_key_id: str,
        destination_master_key_id: str,
        encryption_context: Mapping[str, str],
    ) -> tuple[bytes, str]:
        # ReEncrypt decrypts and encrypts inside KMS: the plaintext data key
        # never reaches this process.
        response = self._call(
            "re_encrypt",
            destination_master_key_id,
            CiphertextBlob=wrapped,
            SourceKeyId=source_master_key_id,
            SourceEncryptionContext=dict(encryption_context),
            DestinationKeyId=destination_master_key_id,
            DestinationEncryptionContext=dict(encryption_context),
        )
        return response["CiphertextBlob"], response["KeyId"]

    def resolve_master_key_id(self, master_key_id: str) -> str:
        # Aliases and key ids resolve to the key ARN, which KMS records.
        response = self._call("describe_key", master_key_id, KeyId=master_key_id)
        arn: str = response["KeyMetadata"]["Arn"]
        return arn


def _operation_name(method: str) -> str:
    return "".join(part.title() for part in method.split("_"))


class LocalProvider(KeyProvider):
    """Wraps data keys with AES-256-GCM under keys from ``LOCAL_MASTER_KEYS``.

    For development and tests: the master keys sit in the settings, so anyone
    who can read the settings can unwrap every data key. A system check rejects
    this provider when ``DEBUG`` is off, unless ``ALLOW_LOCAL_PROVIDER`` is set.

    Wrapped key format::

        b"LK1" || nonce (12 bytes) || AES-256-GCM(master key, data key) with tag

    The associated data is ``b"LK1" || master key name || 0x00 || encryption
    context as sorted, compact JSON``. Errors use the KMS error codes that an
    AWS user would see for the same mistake.
    """

    name = "local"
    _VERSION = b"LK1"

    def __init__(self, settings: KmsFieldsSettings) -> None:
        from django.conf import settings as django_settings

        if not django_settings.DEBUG and not settings.allow_local_provider:
            # The system check E004 reports this too, but a WSGI server or a
            # shell does not run system checks.
            raise ImproperlyConfigured(
                "The local key provider keeps its master keys in the settings and is refused "
                "with DEBUG = False. Use PROVIDER 'aws', or set "
                "KMS_FIELDS['ALLOW_LOCAL_PROVIDER'] = True outside production."
            )
        super().__init__(settings)

    def _master_key(self, master_key_id: str) -> AESGCM:
        try:
            key = self.settings.local_master_keys[master_key_id]
        except KeyError:
            raise KeyProviderError(
                f"Local master key {master_key_id!r} is not in KMS_FIELDS['LOCAL_MASTER_KEYS'].",
                code="NotFoundException",
            ) from None
        return AESGCM(key)

    def _associated_data(self, master_key_id: str, encryption_context: Mapping[str, str]) -> bytes:
        context = json.dumps(dict(encryption_context), sort_keys=True, separators=(",", ":"))
        return self._VERSION + master_key_id.encode() + b"\x00" + context.encode()

    def _wrap(
        self, data_key: bytes, master_key_id: str, encryption_context: Mapping[str, str]
    ) -> bytes:
        nonce = os.urandom(12)
        associated = self._associated_data(master_key_id, encryption_context)
        return (
            self._VERSION
            + nonce
            + self._master_key(master_key_id).encrypt(nonce, data_key, associated)
        )

    def generate_data_key(
        self, master_key_id: str, encryption_context: Mapping[str, str]
    ) -> GeneratedDataKey:
        data_key = os.urandom(DATA_KEY_LENGTH)
        wrapped = self._wrap(data_key, master_key_id, encryption_context)
        return GeneratedDataKey(data_key, wrapped, master_key_id)

    def decrypt_data_key(
        self, wrapped: bytes, master_key_id: str, encryption_context: Mapping[str, str]
    ) -> bytes:
        master_key = self._master_key(master_key_id)
        if not wrapped.startswith(self._VERSION) or len(wrapped) < 3 + 12 + 16:
            raise KeyProviderError(
                f"The wrapped data key is not in the local provider's format (master key "
                f"{master_key_id!r}).",
                code="InvalidCiphertextException",
            )
        nonce, body = wrapped[3:15], wrapped[15:]
        try:
            return master_key.decrypt(
                nonce, body, self._associated_data(master_key_id, encryption_context)
            )
        except InvalidTag:
            raise KeyProviderError(
                f"Local master key {master_key_id!r} cannot unwrap this data key with this "
                "encryption context.",
                code="InvalidCiphertextException",
            ) from None

    def resolve_master_key_id(self, master_key_id: str) -> str:
        self._master_key(master_key_id)
        return master_key_id

    def rewrap_data_key(
        self,
        wrapped: bytes,
        source_master_key_id: str,
        destination_master_key_id: str,
        encryption_context: Mapping[str, str],
    ) -> tuple[bytes, str]:
        data_key = self.decrypt_data_key(wrapped, source_master_key_id, encryption_context)
        return (
            self._wrap(data_key, destination_master_key_id, encryption_context),
            destination_master_key_id,
        )


_provider_lock = threading.Lock()
_provider: KeyProvider | None = None


def get_provider() -> KeyProvider:
    """Return the configured provider, created on first use."""
    global _provider
    provider = _provider
    if provider is not None:
        return provider
    with _provider_lock:
        if _provider is None:
            settings = get_settings()
            provider_class = import_string(settings.provider_path)
            if not (isinstance(provider_class, type) and issubclass(provider_class, KeyProvider)):
                raise TypeError(
                    f"KMS_FIELDS['PROVIDER'] {settings.provider!r} is not a KeyProvider subclass."
                )
            _provider = provider_class(settings)
        return _provider


def reset_provider() -> None:
    """Drop the provider, so that the next use creates it from the current settings."""
    global _provider
    with _provider_lock:
        _provider = None
