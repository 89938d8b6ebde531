from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .ciphers import encode_key_id


class WrappedKeyField(models.BinaryField):
    """A ``BinaryField`` that always returns ``bytes``.

    PostgreSQL's driver returns ``memoryview`` for ``bytea`` columns.
    """

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> bytes | None:
        if value is None:
            return None
        return bytes(value)


class DataKey(models.Model):
    """A data key, stored only in its wrapped form.

    ``id`` is random and appears in every token that the key encrypts, so ids
    never collide between databases and do not reveal how many keys exist.
    Exactly one key per scope is active; ``active_scope`` carries the scope of
    the active key and NULL for retired ones, and its unique index enforces
    that rule on every database, MariaDB included (which has no partial
    indexes).
    """

    class State(models.TextChoices):
        ACTIVE = "active", _("active")
        RETIRED = "retired", _("retired")

    id = models.BigIntegerField(primary_key=True)
    scope = models.CharField(_("scope"), max_length=255, db_index=True)
    # NULL, not "", for retired keys: unique indexes allow many NULLs.
    active_scope = models.CharField(  # noqa: DJ001
        max_length=255, null=True, unique=True, editable=False
    )
    state = models.CharField(_("state"), max_length=16, choices=State.choices)
    master_key_id = models.CharField(_("master key id"), max_length=2048)
    wrapped_key = WrappedKeyField(_("wrapped key"))
    encryption_count = models.BigIntegerField(
        _("encryptions"),
        default=0,
        help_text=_(
            "Values encrypted with this key, as recorded so far. Processes record "
            "their counts in batches, so this can lag behind."
        ),
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)
    retired_at = models.DateTimeField(_("retired"), null=True, blank=True)

    class Meta:
        verbose_name = _("data key")
        verbose_name_plural = _("data keys")
        ordering = ["scope", "-created_at"]
        default_permissions = ("view",)
        permissions = [
            ("view_decrypted_values", _("Can view decrypted values of every model")),
            ("rotate_datakey", _("Can rotate data keys")),
        ]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(state="active", active_scope=F("scope"))
                    | Q(state="retired", active_scope__isnull=True)
                ),
                name="django_kms_fields_datakey_active_scope",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.scope} ({self.state}, {self.key_id})"

    @property
    def key_id(self) -> str:
        """The id as it appears in tokens (11 characters of base64)."""
        return encode_key_id(self.id)
