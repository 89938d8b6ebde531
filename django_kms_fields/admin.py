"""Django admin integration.

``EncryptedFieldsAdminMixin`` goes first among the bases of a ``ModelAdmin``
or an inline::

    @admin.register(Person)
    class PersonAdmin(EncryptedFieldsAdminMixin, admin.ModelAdmin):
        list_display = ["full_name", "email"]

Staff who may see plaintext (see :func:`can_view_decrypted`) get decrypted
values in lists, forms, read-only fields and inlines. Others see a mask, the
encrypted fields are read-only for them, and saving writes each stored token
back byte for byte. A value that cannot be decrypted shows an error marker,
is logged once, and is read-only, so that no save can overwrite it.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models.query import ModelIterable
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .exceptions import DecryptionError, EncryptionError
from .fields import EncryptedField, MaskedValue, SealedValue, UndecryptableValue
from .keyring import get_keyring
from .models import DataKey
from .permissions import can_view_decrypted, encrypted_field_names

if TYPE_CHECKING:
    from django.db import models
    from django.http import HttpRequest

logger = logging.getLogger(__name__)

# Undecryptable values already logged by this process, so each is logged once.
_MAX_LOGGED_FAILURES = 10_000
_logged_failures: collections.OrderedDict[tuple[str, str, str, int], None] = (
    collections.OrderedDict()
)
_logged_failures_lock = threading.Lock()


def _log_undecryptable(
    instance: Any, field: EncryptedField, sealed: SealedValue, error: DecryptionError
) -> None:
    # Keyed by the stored token too, so that a new bad value is logged again.
    key = (instance._meta.label, field.name, str(instance.pk), hash(sealed.token))
    with _logged_failures_lock:
        if key in _logged_failures:
            return
        _logged_failures[key] = None
        if len(_logged_failures) > _MAX_LOGGED_FAILURES:
            _logged_failures.popitem(last=False)
    # The message names the row and the data key, never the value.
    logger.error("The admin could not decrypt a value: %s", error)


class _RevealingIterable(ModelIterable):
    """Decrypts every encrypted field of each loaded instance, marking failures."""

    def __iter__(self) -> Any:
        for instance in super().__iter__():
            data = instance.__dict__
            for field in instance._meta.concrete_fields:
                if not isinstance(field, EncryptedField):
                    continue
                value = data.get(field.attname)
                if value.__class__ is not SealedValue:
                    continue
                try:
                    data[field.attname] = field.unseal(instance, value)
                except DecryptionError as error:
                    _log_undecryptable(instance, field, value, error)
                    data[field.attname] = UndecryptableValue(value)
            yield instance


class _MaskingIterable(ModelIterable):
    """Replaces every loaded encrypted value with a mask, without decrypting it."""

    def __iter__(self) -> Any:
        for instance in super().__iter__():
            data = instance.__dict__
            for field in instance._meta.concrete_fields:
                if isinstance(field, EncryptedField) and isinstance(
                    data.get(field.attname), SealedValue
                ):
                    data[field.attname] = MaskedValue(data[field.attname])
            yield instance


class EncryptedFieldsAdminMixin:
    """Shows decrypted values to staff with permission and masks them for everyone else."""

    model: type[models.Model]

    def get_queryset(self, request: HttpRequest) -> Any:
        queryset = super().get_queryset(request)  # type: ignore[misc]
        if queryset._iterable_class is ModelIterable:
            if can_view_decrypted(request.user, self.model):
                queryset._iterable_class = _RevealingIterable
            else:
                queryset._iterable_class = _MaskingIterable
        return queryset

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        readonly = list(super().get_readonly_fields(request, obj))  # type: ignore[misc]
        if obj is None:
            # A new row has no stored value to protect: staff may type values
            # in that they will not be able to read back.
            return readonly
        if can_view_decrypted(request.user, self.model):
            withheld = [
                name
                for name in encrypted_field_names(self.model)
                if isinstance(getattr(obj, name, None), UndecryptableValue)
            ]
        else:
            withheld = encrypted_field_names(self.model)
        return readonly + [name for name in withheld if name not in readonly]

    def get_sortable_by(self, request: HttpRequest) -> Any:
        # Sorting by a column of ciphertext gives a random order.
        sortable = super().get_sortable_by(request)  # type: ignore[misc]
        encrypted = set(encrypted_field_names(self.model))
        return [name for name in sortable if name not in encrypted]

    def get_changelist_formset(self, request: HttpRequest, **kwargs: Any) -> Any:
        if not can_view_decrypted(request.user, self.model):
            encrypted = set(encrypted_field_names(self.model))
            editable = kwargs.get("fields", getattr(self, "list_editable", ()))
            kwargs["fields"] = [name for name in editable if name not in encrypted]
        return super().get_changelist_formset(request, **kwargs)  # type: ignore[misc]


_DATA_KEY_COLUMNS = [
    "key_id",
    "scope",
    "state",
    "master_key_id",
    "encryptions",
    "created_at",
    "retired_at",
    "values_using_it",
]


@admin.register(DataKey)
class DataKeyAdmin(admin.ModelAdmin):
    """Data keys, read-only: never any key material, wrapped or not."""

    list_display = tuple(_DATA_KEY_COLUMNS)
    list_filter = ["state", "created_at"]
    search_fields = ["=scope", "^scope"]
    fields = tuple(_DATA_KEY_COLUMNS)
    readonly_fields = tuple(_DATA_KEY_COLUMNS)
    actions = ["rotate_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a key that values still use loses them: rotate_keys
        # --reencrypt deletes keys once nothing uses them.
        return False

    def has_rotate_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("django_kms_fields.rotate_datakey"))

    @admin.display(description=_("key id"))
    def key_id(self, obj: DataKey) -> str:
        return obj.key_id

    @admin.display(description=_("encryptions (shared keys)"), ordering="encryption_count")
    def encryptions(self, obj: DataKey) -> Any:
        # Per-row keys encrypt one row's values and are not counted.
        if obj.scope.startswith("row:"):
            return self.get_empty_value_display()
        return obj.encryption_count

    @admin.display(description=_("values using it (per-row keys)"))
    def values_using_it(self, obj: DataKey) -> Any:
        """Count values for per-row keys (one row to read); shared keys would need full scans."""
        if not obj.scope.startswith("row:"):
            return self.get_empty_value_display()
        from django.apps import apps
        from django.db import models
        from django.db.models.functions import Cast

        model_label, pk_text = obj.scope[len("row:") :].rsplit(":", 1)
        try:
            model = apps.get_model(model_label)
        except LookupError:
            return _("unknown model")
        count = 0
        for field in model._meta.concrete_fields:
            if not (isinstance(field, EncryptedField) and field.key_scope == "row"):
                continue
            tokens = (
                model._base_manager.using(obj._state.db)
                .filter(pk=model._meta.pk.to_python(pk_text))
                .annotate(_token=Cast(field.name, models.TextField()))
                .values_list("_token", flat=True)
            )
            count += sum(1 for token in tokens if token and token[4:15] == obj.key_id)
        return count

    @admin.action(
        description=_("Rotate the selected active data keys"),
        permissions=["rotate"],
    )
    def rotate_selected(self, request: HttpRequest, queryset: Any) -> None:
        keyring = get_keyring()
        rotated = 0
        selected = list(queryset)
        for key in selected:
            if key.state != DataKey.State.ACTIVE:
                continue
            try:
                _entry, created = keyring.rotate(key.scope, key._state.db, expected_key_id=key.pk)
            except EncryptionError as error:
                # Each rotation is its own transaction, so the keys rotated
                # before this one stay rotated.
                logger.error(
                    "Rotating data key %s (scope %r) failed: %s", key.key_id, key.scope, error
                )
                self.message_user(
                    request,
                    _("Rotating data key %(key)s (scope %(scope)s) failed: %(error)s")
                    % {"key": key.key_id, "scope": key.scope, "error": error},
                    messages.ERROR,
                )
                break
            rotated += int(created)
        retired = sum(key.state != DataKey.State.ACTIVE for key in selected)
        if retired:
            self.message_user(
                request,
                ngettext(
                    "Skipped %(count)d selected key that was already retired.",
                    "Skipped %(count)d selected keys that were already retired.",
                    retired,
                )
                % {"count": retired},
                messages.WARNING,
            )
        if not rotated:
            return
        self.message_user(
            request,
            ngettext(
                "Rotated %(count)d data key. Values under the retired key still decrypt; "
                "run manage.py rotate_keys --reencrypt to move them to the new key.",
                "Rotated %(count)d data keys. Values under the retired keys still decrypt; "
                "run manage.py rotate_keys --reencrypt to move them to the new keys.",
                rotated,
            )
            % {"count": rotated},
            messages.SUCCESS,
        )
