"""Who may see decrypted values in the admin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .fields import EncryptedField

if TYPE_CHECKING:
    from django.db import models

GLOBAL_PERMISSION = "django_kms_fields.view_decrypted_values"


def decrypted_permission_codename(model: type[models.Model]) -> str:
    """The codename of the per-model permission, such as ``view_decrypted_person``."""
    return f"view_decrypted_{model._meta.model_name}"


def can_view_decrypted(user: Any, model: type[models.Model]) -> bool:
    """Return whether ``user`` may see the plaintext of ``model``'s encrypted fields.

    True with the model's ``<app_label>.view_decrypted_<model_name>`` permission
    or with ``django_kms_fields.view_decrypted_values`` (every model).
    Active superusers have both.
    """
    if not getattr(user, "is_active", False):
        return False
    codename = f"{model._meta.app_label}.{decrypted_permission_codename(model)}"
    return bool(user.has_perm(GLOBAL_PERMISSION) or user.has_perm(codename))


def encrypted_field_names(model: type[models.Model]) -> list[str]:
    return [f.name for f in model._meta.concrete_fields if isinstance(f, EncryptedField)]
