"""The ``KMS_FIELDS`` setting, read lazily and re-read when tests override it.

Example::

    KMS_FIELDS = {
        "PROVIDER": "aws",
        "MASTER_KEY_ID": "alias/crm-production",
        "AWS_CLIENT": {"region_name": "eu-west-1"},
        "DATA_KEY_CACHE_TTL": 300,
        "DATA_KEY_CACHE_SIZE": 1000,
    }
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

# NIST SP 800-38D, section 8.3: with random 96-bit nonces, one AES-GCM key may
# encrypt at most 2**32 values.
GCM_RANDOM_NONCE_LIMIT = 2**32

DEFAULTS: dict[str, Any] = {
    "PROVIDER": "local",
    "MASTER_KEY_ID": None,
    "AWS_CLIENT": {},
    "LOCAL_MASTER_KEYS": {},
    "DATA_KEY_CACHE_TTL": 300,
    "DATA_KEY_CACHE_SIZE": 1000,
    # Half the GCM limit, so that counts which a crashed process never
    # recorded cannot push a data key past the limit.
    "DATA_KEY_MAX_ENCRYPTIONS": GCM_RANDOM_NONCE_LIMIT // 2,
    "ALLOW_LOCAL_PROVIDER": False,
    "ALLOWED_MASTER_KEY_IDS": None,
}

# A KMS key ARN, the form in which KMS returns a key id and DataKey stores it.
_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+$")

PROVIDER_ALIASES = {
    "aws": "django_kms_fields.providers.AwsKmsProvider",
    "local": "django_kms_fields.providers.LocalProvider",
}


@dataclass(frozen=True)
class KmsFieldsSettings:
    """Validated ``KMS_FIELDS``."""

    provider: str
    master_key_id: str
    aws_client: Mapping[str, Any] = field(default_factory=dict)
    local_master_keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    data_key_cache_ttl: float = 300
    data_key_cache_size: int = 1000
    data_key_max_encryptions: int = GCM_RANDOM_NONCE_LIMIT // 2
    allow_local_provider: bool = False
    allowed_master_key_ids: frozenset[str] | None = None

    @property
    def provider_path(self) -> str:
        return PROVIDER_ALIASES.get(self.provider, self.provider)

    def allows_master_key(self, master_key_id: str) -> bool:
        """Return whether data keys wrapped by ``master_key_id`` may be used."""
        allowed = self.allowed_master_key_ids
        return allowed is None or master_key_id in allowed


def validate(raw: object) -> tuple[KmsFieldsSettings | None, list[str]]:
    """Validate a raw ``KMS_FIELDS`` value and return the settings and errors.

    The system checks report every error; ``get_settings()`` raises the first.
    """
    if not isinstance(raw, Mapping):
        return None, [f"KMS_FIELDS must be a dict, not {type(raw).__name__}."]

    values = {**DEFAULTS, **raw}
    errors: list[str] = []

    provider = values["PROVIDER"]
    if not isinstance(provider, str) or not provider:
        errors.append(
            "KMS_FIELDS['PROVIDER'] must be 'aws', 'local' or the dotted path of a "
            f"provider class, not {provider!r}."
        )
        provider = ""
    elif provider not in PROVIDER_ALIASES and "." not in provider:
        errors.append(
            f"KMS_FIELDS['PROVIDER'] is {provider!r}; use 'aws', 'local' or the "
            "dotted path of a provider class."
        )

    local_keys = _decode_local_master_keys(values["LOCAL_MASTER_KEYS"], errors)

    master_key_id = values["MASTER_KEY_ID"]
    if not isinstance(master_key_id, str) or not master_key_id:
        errors.append(
            "KMS_FIELDS['MASTER_KEY_ID'] is missing. Set it to a KMS key id, key ARN, "
            "alias name or alias ARN for 'aws', or to a name in LOCAL_MASTER_KEYS "
            "for 'local'."
        )
        master_key_id = ""
    elif (
        provider == "local"
        and local_keys is not None
        and master_key_id not in local_keys
        and master_key_id not in values["LOCAL_MASTER_KEYS"]  # else reported as malformed
    ):
        errors.append(
            f"KMS_FIELDS['MASTER_KEY_ID'] is {master_key_id!r}, which is not a key "
            f"name in LOCAL_MASTER_KEYS (names: {sorted(local_keys)})."
        )

    aws_client = values["AWS_CLIENT"]
    if not isinstance(aws_client, Mapping):
        errors.append(
            "KMS_FIELDS['AWS_CLIENT'] must be a dict of keyword arguments for "
            f"boto3's KMS client, not {type(aws_client).__name__}."
        )
        aws_client = {}

    ttl = values["DATA_KEY_CACHE_TTL"]
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0:
        errors.append(
            f"KMS_FIELDS['DATA_KEY_CACHE_TTL'] must be a number of seconds >= 0, not {ttl!r}."
        )
        ttl = DEFAULTS["DATA_KEY_CACHE_TTL"]

    size = values["DATA_KEY_CACHE_SIZE"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        errors.append(f"KMS_FIELDS['DATA_KEY_CACHE_SIZE'] must be an integer >= 1, not {size!r}.")
        size = DEFAULTS["DATA_KEY_CACHE_SIZE"]

    max_encryptions = values["DATA_KEY_MAX_ENCRYPTIONS"]
    if (
        isinstance(max_encryptions, bool)
        or not isinstance(max_encryptions, int)
        or not 1 <= max_encryptions <= GCM_RANDOM_NONCE_LIMIT
    ):
        errors.append(
            "KMS_FIELDS['DATA_KEY_MAX_ENCRYPTIONS'] must be an integer from 1 to 2**32 "
            f"(the AES-GCM limit for random nonces), not {max_encryptions!r}."
        )
        max_encryptions = DEFAULTS["DATA_KEY_MAX_ENCRYPTIONS"]

    allowed_master_key_ids = _validate_allowed_master_key_ids(
        values["ALLOWED_MASTER_KEY_IDS"], provider, master_key_id, local_keys, errors
    )

    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        errors.append(
            f"KMS_FIELDS has unknown keys {unknown}; the known keys are {sorted(DEFAULTS)}."
        )

    if errors:
        return None, errors
    return (
        KmsFieldsSettings(
            provider=provider,
            master_key_id=master_key_id,
            aws_client=dict(aws_client),
            local_master_keys=local_keys or {},
            data_key_cache_ttl=float(ttl),
            data_key_cache_size=size,
            data_key_max_encryptions=max_encryptions,
            allow_local_provider=bool(values["ALLOW_LOCAL_PROVIDER"]),
            allowed_master_key_ids=allowed_master_key_ids,
        ),
        [],
    )


def _validate_allowed_master_key_ids(
    raw: object,
    provider: str,
    master_key_id: str,
    local_keys: Mapping[str, bytes] | None,
    errors: list[str],
) -> frozenset[str] | None:
    if raw is None:
        return None
    name = "KMS_FIELDS['ALLOWED_MASTER_KEY_IDS']"
    if (
        not isinstance(raw, (list, tuple, set, frozenset))
        or not raw
        or not all(isinstance(key, str) and key for key in raw)
    ):
        errors.append(
            f"{name} must be a non-empty list of master key ids, or None to allow any "
            f"master key, not {raw!r}."
        )
        return None
    allowed = frozenset(raw)

    # Only a key ARN (aws) or a key name (local) can be compared with the
    # list here. KMS resolves an alias when it creates a data key.
    comparable_master_key_id = False
    if provider == "aws":
        # A key id, alias or alias ARN would never equal the key ARN that
        # DataKey.master_key_id stores, so it would reject every data key.
        for key in sorted(allowed):
            if not _KEY_ARN.match(key):
                errors.append(
                    f"{name} contains {key!r}, which is not a KMS key ARN "
                    "(arn:aws:kms:<region>:<account>:key/<key id>). List key ARNs, "
                    "as DataKey.master_key_id stores them."
                )
        comparable_master_key_id = bool(_KEY_ARN.match(master_key_id))
    elif provider == "local" and local_keys is not None:
        for key in sorted(allowed - set(local_keys)):
            errors.append(f"{name} contains {key!r}, which is not a name in LOCAL_MASTER_KEYS.")
        comparable_master_key_id = bool(master_key_id)

    if comparable_master_key_id and master_key_id not in allowed:
        errors.append(
            f"{name} does not contain KMS_FIELDS['MASTER_KEY_ID'] {master_key_id!r}, so "
            "no new data key could be used."
        )
    return allowed


def _decode_local_master_keys(raw: object, errors: list[str]) -> dict[str, bytes] | None:
    if not isinstance(raw, Mapping):
        errors.append(
            "KMS_FIELDS['LOCAL_MASTER_KEYS'] must be a dict of key name to base64 of "
            f"32 random bytes, not {type(raw).__name__}."
        )
        return None
    keys = {}
    for name, encoded in raw.items():
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, TypeError, ValueError):
            key = b""
        if not isinstance(name, str) or not name or len(key) != 32:
            # The message names the key but never shows its value.
            errors.append(
                f"KMS_FIELDS['LOCAL_MASTER_KEYS'][{name!r}] must be base64 of 32 random "
                'bytes. Generate one with: python -c "import base64, os; '
                'print(base64.b64encode(os.urandom(32)).decode())"'
            )
            continue
        keys[name] = key
    return keys


_lock = threading.Lock()
_cached: KmsFieldsSettings | None = None


def get_settings() -> KmsFieldsSettings:
    """Return the validated ``KMS_FIELDS``, reading Django settings on first use."""
    global _cached
    current = _cached
    if current is not None:
        return current
    with _lock:
        if _cached is None:
            raw = getattr(django_settings, "KMS_FIELDS", None)
            if raw is None:
                raise ImproperlyConfigured(
                    "The KMS_FIELDS setting is missing. Add it to your settings; "
                    "see the django-kms-fields documentation."
                )
            parsed, errors = validate(raw)
            if parsed is None:
                raise ImproperlyConfigured(errors[0])
            _cached = parsed
        return _cached


def reset_settings() -> None:
    """Forget the cached settings, so that the next use reads them again."""
    global _cached
    with _lock:
        _cached = None
