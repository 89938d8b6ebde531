"""System checks for the ``KMS_FIELDS`` setting and for models with encrypted fields.

Field options (``unique``, ``db_index``, ``key_scope`` ...) are checked by the
fields themselves; see ``EncryptedField.check()``.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

from .conf import validate


@checks.register(checks.Tags.security)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    raw = getattr(settings, "KMS_FIELDS", None)
    if raw is None:
        return [
            checks.Error(
                "The KMS_FIELDS setting is missing.",
                hint="Add KMS_FIELDS with at least PROVIDER and MASTER_KEY_ID.",
                id="django_kms_fields.E001",
            )
        ]
    parsed, errors = validate(raw)
    messages: list[checks.CheckMessage] = [
        checks.Error(error, id="django_kms_fields.E002") for error in errors
    ]
    if parsed is None:
        return messages

    try:
        provider_class = import_string(parsed.provider_path)
    except ImportError as error:
        messages.append(
            checks.Error(
                f"KMS_FIELDS['PROVIDER'] {parsed.provider!r} cannot be imported: {error}",
                id="django_kms_fields.E003",
            )
        )
    else:
        from .providers import KeyProvider

        if not (isinstance(provider_class, type) and issubclass(provider_class, KeyProvider)):
            messages.append(
                checks.Error(
                    f"KMS_FIELDS['PROVIDER'] {parsed.provider!r} is not a subclass of "
                    "django_kms_fields.providers.KeyProvider.",
                    id="django_kms_fields.E003",
                )
            )

    if parsed.provider == "local" and not settings.DEBUG and not parsed.allow_local_provider:
        messages.append(
            checks.Error(
                "The local key provider is in use with DEBUG = False.",
                hint="The local provider keeps its master keys in the settings, so it only "
                "suits development and tests. Use PROVIDER 'aws' in production, or set "
                "KMS_FIELDS['ALLOW_LOCAL_PROVIDER'] = True if this is not production.",
                id="django_kms_fields.E004",
            )
        )
    return messages


@checks.register(checks.Tags.models)
def check_models(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Reject indexes, constraints and ordering that name encrypted columns."""
    from .fields import EncryptedField

    if app_configs is None:
        models = apps.get_models()
    else:
        models = [model for config in app_configs for model in config.get_models()]

    messages: list[checks.CheckMessage] = []
    for model in models:
        encrypted = {
            field.name for field in model._meta.concrete_fields if isinstance(field, EncryptedField)
        }
        encrypted |= {
            field.attname
            for field in model._meta.concrete_fields
            if isinstance(field, EncryptedField)
        }
        if not encrypted:
            continue
        for names in model._meta.unique_together:
            messages.extend(_named_encrypted(model, names, encrypted, "unique_together"))
        for index in model._meta.indexes:
            messages.extend(_named_encrypted(model, index.fields, encrypted, f"index {index.name}"))
        for constraint in model._meta.constraints:
            fields = getattr(constraint, "fields", ()) or ()
            messages.extend(
                _named_encrypted(model, fields, encrypted, f"constraint {constraint.name}")
            )
        for ordering in model._meta.ordering or ():
            if isinstance(ordering, str) and ordering.lstrip("-?") in encrypted:
                messages.append(
                    checks.Error(
                        f"{model._meta.label}.Meta.ordering orders by the encrypted field "
                        f"{ordering.lstrip('-')!r}.",
                        hint="The database only sees ciphertext, so the order would be "
                        "random. Order by another field.",
                        obj=model,
                        id="django_kms_fields.E121",
                    )
                )
    return messages


def _named_encrypted(
    model: Any, names: Any, encrypted: set[str], where: str
) -> list[checks.CheckMessage]:
    found = [
        name.lstrip("-")
        for name in names or ()
        if isinstance(name, str) and name.lstrip("-") in encrypted
    ]
    if not found:
        return []
    return [
        checks.Error(
            f"{model._meta.label} has {where} on the encrypted field(s) {', '.join(found)}.",
            hint="The database only sees ciphertext, so it cannot index or compare these "
            "values. Remove them from the index or constraint.",
            obj=model,
            id="django_kms_fields.E120",
        )
    ]
