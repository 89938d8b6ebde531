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


@checks.register(checks.Tags.security, deploy=True)
def check_deployment(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Return the warnings that only ``manage.py check --deploy`` reports."""
    raw = getattr(settings, "KMS_FIELDS", None)
    parsed, _errors = validate(raw) if raw is not None else (None, [])
    if parsed is None or parsed.provider != "aws" or parsed.allowed_master_key_ids is not None:
        return []
    return [
        checks.Warning(
            "KMS_FIELDS['ALLOWED_MASTER_KEY_IDS'] is not set, so this process uses a data key "
            "whatever KMS key wraps it.",
            hint="Someone who can write to the DataKey table could then plant a data key "
            "wrapped by a KMS key of their own. Set ALLOWED_MASTER_KEY_IDS to the ARNs of "
            "your master keys.",
            id="django_kms_fields.W005",
        )
    ]


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


@checks.register(checks.Tags.admin)
def check_admin(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Reject admin options that query encrypted columns, and warn about unprotected admins."""
    if not apps.is_installed("django.contrib.admin"):
        return []
    from django.contrib.admin.sites import all_sites

    messages: list[checks.CheckMessage] = []
    for site in all_sites:
        for model, model_admin in site._registry.items():
            messages.extend(_check_model_admin(model, model_admin))
    return messages


def _check_model_admin(model: Any, model_admin: Any) -> list[checks.CheckMessage]:
    from .admin import EncryptedFieldsAdminMixin
    from .fields import EncryptedField

    messages: list[checks.CheckMessage] = []
    name = type(model_admin).__name__

    def reject(option: str, path: str, check_id: str) -> None:
        messages.append(
            checks.Error(
                f"{name}.{option} names {path!r}, an encrypted field of "
                f"{_final_model(model, path)}.",
                hint="The database only holds ciphertext, so it cannot search, filter or "
                "sort by this field. Remove it from "
                f"{option}.",
                obj=type(model_admin),
                id=check_id,
            )
        )

    for entry in model_admin.search_fields or ():
        path = entry.lstrip("^=@")
        if isinstance(_final_field(model, path), EncryptedField):
            reject("search_fields", path, "django_kms_fields.E130")
    for entry in model_admin.list_filter or ():
        path = entry[0] if isinstance(entry, (list, tuple)) else entry
        if isinstance(path, str) and isinstance(_final_field(model, path), EncryptedField):
            reject("list_filter", path, "django_kms_fields.E131")
    for entry in model_admin.ordering or ():
        if isinstance(entry, str):
            path = entry.lstrip("-")
            if isinstance(_final_field(model, path), EncryptedField):
                reject("ordering", path, "django_kms_fields.E132")
    hierarchy = model_admin.date_hierarchy
    if hierarchy and isinstance(_final_field(model, hierarchy), EncryptedField):
        reject("date_hierarchy", hierarchy, "django_kms_fields.E133")

    has_encrypted = any(isinstance(f, EncryptedField) for f in model._meta.concrete_fields)
    if has_encrypted and not isinstance(model_admin, EncryptedFieldsAdminMixin):
        messages.append(
            checks.Warning(
                f"{name} shows {model._meta.label}, which has encrypted fields, without "
                "EncryptedFieldsAdminMixin.",
                hint="Without it every staff user who can view the model sees plaintext, and "
                "one value that cannot be decrypted breaks the page. Put "
                "django_kms_fields.admin.EncryptedFieldsAdminMixin first among its bases.",
                obj=type(model_admin),
                id="django_kms_fields.W130",
            )
        )
    return messages


def _final_field(model: Any, path: str) -> Any:
    """Return the field at the end of a ``__`` path, ignoring a trailing lookup."""
    from django.core.exceptions import FieldDoesNotExist

    options = model._meta
    field = None
    parts = path.split("__")
    for position, part in enumerate(parts):
        try:
            field = options.get_field(part)
        except FieldDoesNotExist:
            # A lookup such as "icontains" may end the path.
            return field if position == len(parts) - 1 else None
        if field.is_relation and field.related_model is not None and position < len(parts) - 1:
            options = field.related_model._meta
    return field


def _final_model(model: Any, path: str) -> str:
    field = _final_field(model, path)
    return field.model._meta.label if field is not None else model._meta.label
