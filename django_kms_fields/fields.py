"""Encrypted model fields.

Each field stores a token (see ``ciphers``) in an unbounded text column and
presents the plaintext to Python. To encrypt another field type, put
``EncryptedField`` first among the bases::

    class EncryptedDecimalField(EncryptedField, models.DecimalField):
        pass

The plaintext of such a field is ``str(get_prep_value(value))`` in UTF-8 and is
read back with ``to_python()``; override ``plaintext_from_value()`` and
``value_from_plaintext()`` where that does not round-trip.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import warnings
from collections.abc import Callable
from types import CodeType
from typing import TYPE_CHECKING, Any

import django
from django.conf import settings
from django.core import checks, validators
from django.core.exceptions import FieldDoesNotExist, FieldError, ValidationError
from django.db import DEFAULT_DB_ALIAS, DatabaseError, models
from django.db.models import Value, signals
from django.db.models.constants import OnConflict
from django.db.models.functions import Cast
from django.db.models.lookups import Exact
from django.db.models.query_utils import DeferredAttribute
from django.utils import timezone
from django.utils.functional import cached_property

from . import ciphers
from .exceptions import DecryptionError, EncryptionError, KeyProviderError
from .expressions import EAGER_MARKER, LAZY_MARKER, EncryptedCol, check_write_expression
from .keyring import DataKeyNotFound, MasterKeyNotAllowed, get_keyring
from .keyring import keyring as _keyring

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

GLOBAL = "global"
TENANT = "tenant"
ROW = "row"
KEY_SCOPES = (GLOBAL, TENANT, ROW)

_LABEL_RE = re.compile(r"^[\w]+\.[\w]+\.[\w]+$")
_MAX_SCOPE_CACHE = 10_000


class SealedValue:
    """A token read from the database and not decrypted yet.

    ``scope`` is the scope the row had when it was read, or ``None`` when the
    query did not select it (``raw()``); the instance's current scope is used
    then.
    """

    __slots__ = ("scope", "token")

    def __init__(self, token: str, scope: str | None) -> None:
        self.token = token
        self.scope = scope

    def __repr__(self) -> str:
        return "<SealedValue>"


class WithheldValue:
    """A loaded value that is kept from the reader: masked, or undecryptable.

    The admin puts these on instances in place of sealed values. Their text is
    what the page shows; saving the instance writes the stored token back
    unchanged.
    """

    __slots__ = ("sealed",)
    display = ""

    def __init__(self, sealed: SealedValue) -> None:
        self.sealed = sealed

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class MaskedValue(WithheldValue):
    """A value the current user may not see."""

    display = "••••••••"


class UndecryptableValue(WithheldValue):
    """A value that failed to decrypt; the failure was logged."""

    display = "⚠ cannot be decrypted"


class _Ciphertext:
    """A token to write back unchanged to the database ``alias`` it was read from."""

    __slots__ = ("alias", "scope", "token")

    def __init__(self, token: str, scope: str, alias: str) -> None:
        self.token = token
        self.scope = scope
        self.alias = alias


class _PendingEncryption:
    """A plaintext value and the scope to encrypt it under, once the database is known."""

    __slots__ = ("scope", "value")

    def __init__(self, value: Any, scope: str) -> None:
        self.value = value
        self.scope = scope

    def __repr__(self) -> str:
        return f"<PendingEncryption scope={self.scope!r}>"


def _code_objects(function: Callable[..., Any]) -> set[CodeType]:
    found = set()
    stack = [function.__code__]
    while stack:
        code = stack.pop()
        found.add(code)
        stack.extend(const for const in code.co_consts if isinstance(const, CodeType))
    return found


def _writer_code_objects() -> frozenset[CodeType]:
    from django.db.models.base import Model
    from django.db.models.query import QuerySet
    from django.db.models.sql.compiler import SQLInsertCompiler

    return frozenset(
        _code_objects(QuerySet.bulk_update)
        | _code_objects(SQLInsertCompiler.pre_save_val)
        | _code_objects(Model._save_table)  # type: ignore[attr-defined]
    )


# Django reads field values with getattr() instead of Field.pre_save() in
# three places: bulk_update(), and raw saves (loaddata) of new and existing
# rows. The descriptor recognises these callers and hands them the value with
# its row's scope, which a plain getattr() result would lose.
# NOTE: this depends on Django internals. If a Django release moves these
# reads, such writes fail with a FieldError (never with a wrong scope), and the
# bulk_update and loaddata tests fail.
_WRITER_CODES = _writer_code_objects()


def _pre_save_val_code() -> CodeType:
    from django.db.models.sql.compiler import SQLInsertCompiler

    return SQLInsertCompiler.pre_save_val.__code__


# pre_save() recognises INSERT statements of bulk_create(update_conflicts=True)
# by this caller, to check which fields the upsert updates.
# NOTE: this depends on Django internals, as _WRITER_CODES does. If a Django
# release moves the call, such upserts are no longer checked, and the upsert
# tests fail.
_PRE_SAVE_VAL_CODE = _pre_save_val_code()

_insert_codes: tuple[tuple[type, ...], frozenset[CodeType]] = ((), frozenset())


def _insert_compiler_codes() -> frozenset[CodeType]:
    """Code objects of ``SQLInsertCompiler`` and of the backends' subclasses."""
    global _insert_codes
    from django.db.models.sql.compiler import SQLInsertCompiler

    classes = [SQLInsertCompiler]
    for cls in classes:
        classes.extend(cls.__subclasses__())
    key = tuple(classes)
    if _insert_codes[0] != key:
        codes: set[CodeType] = set()
        for cls in classes:
            for member in vars(cls).values():
                if hasattr(member, "__code__"):
                    codes |= _code_objects(member)
        _insert_codes = (key, frozenset(codes))
    return _insert_codes[1]


class _HiddenFromInserts:
    """A placeholder hook that INSERT compilers do not see.

    On PostgreSQL, Django inserts rows in bulk with ``UNNEST`` only when no
    field has a placeholder hook, which is several times faster. Inserts need
    none of these hooks (``prepare_write()`` checks what model instances
    write), while UPDATE statements do, so the hook hides from the insert
    compiler's code.
    NOTE: this depends on Django's compiler internals. If a Django release
    moves that code, inserts see the hook again and only lose speed.
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        if sys._getframe(1).f_code in _insert_compiler_codes():
            raise AttributeError(self.name)
        return self.function.__get__(instance, owner)


class EncryptedAttribute(DeferredAttribute):
    """Descriptor that decrypts a loaded value on first access."""

    field: EncryptedField

    def __init__(self, field: EncryptedField) -> None:
        super().__init__(field)
        self.attname = field.attname

    def __get__(self, instance: Any, cls: Any = None) -> Any:
        if instance is None:
            return self
        data = instance.__dict__
        attname = self.attname
        if attname not in data:
            super().__get__(instance, cls)
        if sys._getframe(1).f_code in _WRITER_CODES:
            return self.field.prepare_write(instance)
        value = data[attname]
        if value.__class__ is SealedValue:
            value = data[attname] = self.field.unseal(instance, value)
        return value

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__[self.field.attname] = value


class _NullOnlyExact(Exact):
    """``exact`` that only accepts ``None``, which Django turns into ``isnull``."""

    def __init__(self, lhs: Any, rhs: Any) -> None:
        if rhs is not None:
            raise FieldError(lhs.output_field.lookup_error_message("exact"))
        super().__init__(lhs, rhs)


class EncryptedField(models.Field):
    """Mixin that encrypts a Django field. It must come first among the bases."""

    descriptor_class = EncryptedAttribute
    encrypted = True
    # These options change how values are read and written, not the column,
    # so changing them needs no table rebuild on SQLite.
    non_db_attrs = (
        *models.Field.non_db_attrs,
        "key_scope",
        "tenant_field",
        "associated_data_label",
        "legacy_plaintext",
        "encoder",
        "decoder",
        "max_length",
    )

    def __init__(
        self,
        *args: Any,
        key_scope: str = GLOBAL,
        tenant_field: str | None = None,
        associated_data_label: str | None = None,
        legacy_plaintext: bool = False,
        **kwargs: Any,
    ) -> None:
        self.key_scope = key_scope
        self.tenant_field = tenant_field
        self.associated_data_label = associated_data_label
        self.legacy_plaintext = legacy_plaintext
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> Any:
        name, path, args, kwargs = super().deconstruct()
        if self.key_scope != GLOBAL:
            kwargs["key_scope"] = self.key_scope
        if self.tenant_field is not None:
            kwargs["tenant_field"] = self.tenant_field
        if self.associated_data_label is not None:
            kwargs["associated_data_label"] = self.associated_data_label
        if self.legacy_plaintext:
            kwargs["legacy_plaintext"] = True
        return name, path, args, kwargs

    def contribute_to_class(self, cls: Any, name: str, private_only: bool = False) -> None:
        super().contribute_to_class(cls, name, private_only=private_only)
        if not cls._meta.abstract:
            signals.class_prepared.connect(_install_model_hooks, sender=cls, weak=False)

    # Identity

    @cached_property
    def label(self) -> str:
        """The field's name in associated data: ``<app>.<model>.<field>`` unless pinned.

        Renaming a model or field changes the default label, so set
        ``associated_data_label`` to the old label in the same change to keep
        existing values readable.
        """
        if self.associated_data_label is not None:
            return self.associated_data_label
        return f"{self.model._meta.label_lower}.{self.name}"

    @property
    def qualified_name(self) -> str:
        model = getattr(self, "model", None)
        if model is None:
            return self.name or self.__class__.__name__
        return f"{model._meta.label}.{self.name}"

    @cached_property
    def context_field(self) -> models.Field | None:
        """The column that identifies a value's scope: the tenant field or the primary key."""
        if self.key_scope == TENANT:
            return self.model._meta.get_field(self.tenant_field)  # type: ignore[return-value,arg-type]
        if self.key_scope == ROW:
            return self.model._meta.pk
        return None

    @cached_property
    def _context_value_field(self) -> models.Field:
        field = self.context_field
        assert field is not None
        return field.target_field if field.is_relation else field

    @cached_property
    def _scope_cache(self) -> dict[Any, str]:
        return {}

    def _scope_from_context(self, value: Any) -> str:
        """Return the scope of a row whose tenant (or primary key) is ``value``."""
        cache = self._scope_cache
        scope = cache.get(value)
        if scope is None:
            # An empty context is a NULL tenant: no value can decrypt under it.
            canonical = "" if value == "" else str(self._context_value_field.to_python(value))
            if LAZY_MARKER in canonical or EAGER_MARKER in canonical:
                raise EncryptionError(
                    f"{self.qualified_name} cannot use {self.key_scope} id {canonical!r}: "
                    f"ids that scope data keys must not contain {LAZY_MARKER!r} or "
                    f"{EAGER_MARKER!r}."
                )
            if self.key_scope == TENANT:
                scope = f"tenant:{canonical}"
            else:
                scope = f"row:{self.label.rsplit('.', 1)[0]}:{canonical}"
            if len(cache) >= _MAX_SCOPE_CACHE:
                cache.clear()
            cache[value] = scope
        return scope

    def scope_for_instance(self, instance: Any) -> str:
        """Return the scope under which ``instance``'s value is encrypted now."""
        if self.key_scope == GLOBAL:
            return GLOBAL
        context_field = self.context_field
        assert context_field is not None
        value = instance.__dict__.get(context_field.attname, _MISSING)
        if value is _MISSING:
            value = getattr(instance, context_field.attname)
        if value is None:
            if self.key_scope == TENANT:
                raise EncryptionError(
                    f"{self.qualified_name} uses key_scope='tenant', but "
                    f"{self.model._meta.label}.{context_field.name} is None on the row with "
                    f"pk={instance.pk!r}. Set the tenant before saving."
                )
            raise EncryptionError(
                f"{self.qualified_name} uses key_scope='row', which needs the primary key "
                "before the row is inserted. Give the primary key a default, for example "
                "models.UUIDField(primary_key=True, default=uuid.uuid4)."
            )
        return self._scope_from_context(value)

    # Plaintext encoding

    def plaintext_from_value(self, value: Any) -> bytes:
        """Encode a Python value as the bytes that get encrypted."""
        return str(self.get_prep_value(value)).encode()

    def value_from_plaintext(self, data: bytes) -> Any:
        """Decode decrypted bytes into the Python value."""
        return self.to_python(data.decode())

    def value_from_legacy_text(self, text: str) -> Any:
        """Convert a value stored before the column was encrypted (``legacy_plaintext``)."""
        return self.to_python(text)

    # Writing

    def pre_save(self, model_instance: Any, add: bool) -> Any:
        if add:
            caller = sys._getframe(1)
            if caller.f_code is _PRE_SAVE_VAL_CODE:
                _check_upsert(self.model, caller.f_locals["self"])
        if getattr(self, "auto_now", False) or (add and getattr(self, "auto_now_add", False)):
            super().pre_save(model_instance, add)
        return self.prepare_write(model_instance)

    def prepare_write(self, instance: Any) -> Any:
        """Return what to send to ``get_db_prep_save()`` for ``instance``'s value."""
        data = instance.__dict__
        if self.attname not in data:
            getattr(instance, self.attname)
        value = data[self.attname]
        if value is None:
            return None
        if hasattr(value, "resolve_expression"):
            if isinstance(value, Value) and value.value is not None:
                value = value.value
            else:
                check_write_expression(self, value)
                return value
        if isinstance(value, WithheldValue):
            # Written back as stored; moving it to another tenant decrypts it
            # here, which fails (as it should) for an undecryptable value.
            value = value.sealed
        scope = self.scope_for_instance(instance)
        if value.__class__ is SealedValue:
            alias = instance._state.db or DEFAULT_DB_ALIAS
            if value.scope == scope and ciphers.looks_like_token(value.token):
                return _Ciphertext(value.token, scope, alias)
            if not ciphers.looks_like_token(value.token):
                # Legacy plaintext (or garbage): unseal() accepts it only with
                # legacy_plaintext=True, and the save then encrypts it.
                value = self.unseal(instance, value)
                data[self.attname] = value
                return _PendingEncryption(value, scope)
            if value.scope is None:
                # Read by raw(): keep the token if it belongs to this row and
                # tenant, else encrypt it again under the row's new tenant.
                plaintext, stored_scope = self._unseal_raw(instance, value.token, alias)
                if stored_scope == scope:
                    return _Ciphertext(value.token, scope, alias)
                data[self.attname] = plaintext
                return _PendingEncryption(plaintext, scope)
            # The row moved to another tenant: re-encrypt under the new one.
            value = self.unseal(instance, value)
            data[self.attname] = value
        return _PendingEncryption(value, scope)

    def get_db_prep_save(self, value: Any, connection: BaseDatabaseWrapper) -> Any:
        if value is None:
            return None
        value_class = value.__class__
        if value_class is _Ciphertext:
            if value.alias == connection.alias:
                return value.token
            # The token names a data key of the database it was read from.
            plaintext = self._decrypt(value.token, value.scope, value.alias, None)
            return self._encrypt(plaintext, value.scope, connection)
        if value_class is _PendingEncryption:
            return self._encrypt(value.value, value.scope, connection)
        if hasattr(value, "as_sql"):
            return value
        if value_class is SealedValue:
            raise EncryptionError(
                f"{self.qualified_name}: a sealed value reached the database without its row."
            )
        if _called_by_schema_editor():
            if not self._table_has_rows(connection):
                # A column added to an empty table: no row needs the default,
                # and the DataKey table may not exist yet on a new database.
                return None
            _require_data_key_table(self, connection)
        if self.key_scope == GLOBAL:
            return self._encrypt(value, GLOBAL, connection)
        raise FieldError(
            f"{self.qualified_name} uses key_scope={self.key_scope!r}, so its values can only "
            "be written through model instances (save(), create(), bulk_create(), "
            "bulk_update()): QuerySet.update(), database defaults and schema changes do "
            f"not say which {self.key_scope} a value belongs to. To add the column to a "
            "table with rows, add it with null=True and fill it in a data migration."
        )

    def get_db_prep_value(
        self, value: Any, connection: BaseDatabaseWrapper, prepared: bool = False
    ) -> Any:
        return self.get_db_prep_save(value, connection)

    def _encrypt(self, value: Any, scope: str, connection: BaseDatabaseWrapper) -> str:
        try:
            plaintext = self.plaintext_from_value(value)
        except _InvalidValue:
            raise
        except (TypeError, ValueError, ValidationError) as error:
            # Django's conversion errors quote the value, which may be secret.
            raise type(error)(
                f"{self.qualified_name} cannot store this {type(value).__name__}: it is not "
                f"a valid value for {self.plaintext_type_name()}."
            ) from None
        return get_keyring().encrypt(plaintext, scope, self.label, connection.alias)

    def plaintext_type_name(self) -> str:
        """The Django field class whose values this field stores, such as ``IntegerField``."""
        for base in type(self).__mro__:
            if base.__module__.startswith("django.db.models") and issubclass(base, models.Field):
                return base.__name__
        return type(self).__name__

    def _table_has_rows(self, connection: BaseDatabaseWrapper) -> bool:
        return self.model._base_manager.using(connection.alias).exists()

    def _placeholder(self, value: Any) -> None:
        if hasattr(value, "as_sql"):
            check_write_expression(self, value)

    if django.VERSION >= (6, 1):

        def _get_placeholder_sql(self, value: Any, compiler: Any, connection: Any) -> Any:
            self._placeholder(value)
            if hasattr(value, "as_sql"):
                return compiler.compile(value)
            return "%s", (value,)

        get_placeholder_sql = _HiddenFromInserts(_get_placeholder_sql)

    def _get_placeholder(self, value: Any, compiler: Any, connection: Any) -> str:
        self._placeholder(value)
        return "%s"

    get_placeholder = _HiddenFromInserts(_get_placeholder)

    # Reading

    def from_db_value(self, value: Any, expression: Any, connection: BaseDatabaseWrapper) -> Any:
        if value is None:
            return None
        if self.key_scope == GLOBAL:
            marker = value[:1]
            if marker == LAZY_MARKER:
                return SealedValue(value[1:], GLOBAL)
            if marker == EAGER_MARKER:
                return self._decrypt(value[1:], GLOBAL, connection.alias, None)
            # NOTE: a legacy plaintext value that starts with a marker and is
            # read with raw() would lose that character here.
            try:
                return self._decrypt(value, GLOBAL, connection.alias, None)
            except DecryptionError as error:
                if isinstance(expression, EncryptedCol):
                    raise
                raise DecryptionError(
                    f"{error} It was read through the SQL expression "
                    f"{type(expression).__name__}(), which may have changed the token: "
                    "SQL functions operate on tokens, not on values."
                ) from None

        # The context (a tenant id or primary key) never contains a marker,
        # so the first marker ends it, whatever the stored value contains.
        separator = _first_marker(value)
        if separator < 0:
            if isinstance(expression, EncryptedCol):
                # raw(): the query did not select the tenant, so the instance's is used.
                return SealedValue(value, None)
            raise FieldError(
                f"{self.qualified_name} uses key_scope={self.key_scope!r}, so it cannot be "
                f"read through the SQL expression {expression!r}."
            )
        token = value[separator + 1 :]
        context = value[:separator]
        scope = self._scope_from_context(context)
        if value[separator] == LAZY_MARKER:
            return SealedValue(token, scope)
        return self._decrypt(token, scope, connection.alias, None, context)

    def unseal(self, instance: Any, sealed: SealedValue) -> Any:
        """Decrypt a value loaded into ``instance``."""
        alias = instance._state.db or DEFAULT_DB_ALIAS
        if sealed.scope is None:
            return self._unseal_raw(instance, sealed.token, alias)[0]
        return self._decrypt(sealed.token, sealed.scope, alias, instance)

    def _unseal_raw(self, instance: Any, token: str, alias: str) -> tuple[Any, str]:
        """Decrypt a value read by ``raw()``, and return it with its scope.

        ``raw()`` does not select the row's tenant with the value, so the
        instance's tenant is tried first, then the one stored in the row, in
        case the instance was moved to another tenant since.
        NOTE: a moved instance therefore accepts a token of its new tenant
        planted in the row, like a swap of values within one tenant.
        """
        scope = self.scope_for_instance(instance)
        try:
            return self._decrypt(token, scope, alias, instance), scope
        except DecryptionError:
            stored = self._stored_scope(instance, alias)
            if stored is None or stored == scope:
                raise
        return self._decrypt(token, stored, alias, instance), stored

    def _stored_scope(self, instance: Any, alias: str) -> str | None:
        """Return the tenant scope of ``instance``'s row as stored, if it has one."""
        if self.key_scope != TENANT or instance.pk is None:
            return None
        assert self.context_field is not None
        contexts = list(
            self.model._base_manager.using(alias)
            .filter(pk=instance.pk)
            .values_list(self.context_field.attname, flat=True)
        )
        if len(contexts) != 1 or contexts[0] is None:
            return None
        return self._scope_from_context(contexts[0])

    def _decrypt(
        self, token: str, scope: str, alias: str, instance: Any, context: str | None = None
    ) -> Any:
        """Decrypt a token; ``instance`` (or the row's ``context`` text) only serves errors.

        Every value read goes through here, so the common case is kept to a
        few operations; see docs/performance.rst.
        """
        if self.legacy_plaintext and not ciphers.looks_like_token(token):
            return self.value_from_legacy_text(token)
        try:
            plaintext = _keyring.decrypt(token, scope, self.label, alias)
        except ciphers.InvalidToken:
            pk = None if instance is None else instance.pk
            message = self._decryption_error_message(token, scope, alias, pk, context)
            raise DecryptionError(message) from None
        except DataKeyNotFound:
            pk = None if instance is None else instance.pk
            message = self._decryption_error_message(
                token, scope, alias, pk, context, key_missing=True
            )
            raise DecryptionError(message) from None
        except MasterKeyNotAllowed as error:
            pk = None if instance is None else instance.pk
            message = self._decryption_error_message(
                token, scope, alias, pk, context, not_allowed=error
            )
            raise DecryptionError(message) from None
        except KeyProviderError as error:
            if error.code != "InvalidCiphertextException":
                raise
            # The provider refused the wrapped key itself: the DataKey row
            # was altered, so the value cannot be decrypted.
            pk = None if instance is None else instance.pk
            message = self._decryption_error_message(token, scope, alias, pk, context)
            raise DecryptionError(message) from error
        return self.value_from_plaintext(plaintext)

    def _decryption_error_message(
        self,
        token: str,
        scope: str,
        alias: str,
        pk: Any,
        context: str | None,
        *,
        key_missing: bool = False,
        not_allowed: MasterKeyNotAllowed | None = None,
    ) -> str:
        if ciphers.looks_like_token(token):
            key_id = token[len(ciphers.PREFIX) : ciphers.HEADER_LENGTH]
            try:
                ciphers.decode_key_id(key_id)
            except ciphers.InvalidToken:
                key_id = "(unreadable)"
        else:
            key_id = "(none: the stored value is not a token)"
        if pk is None and self.key_scope == ROW and context is not None:
            pk = self._context_value_field.to_python(context)
        elif pk is None:
            pk = self._find_pk(token, alias, context)
        if not_allowed is not None:
            return f"Cannot decrypt {self.qualified_name} of the row with pk={pk!r}: {not_allowed}"
        if key_missing:
            return (
                f"Cannot decrypt {self.qualified_name} of the row with pk={pk!r}: its data "
                f"key {key_id} (scope {scope!r}) no longer exists."
            )
        return (
            f"Cannot decrypt {self.qualified_name} of the row with pk={pk!r} "
            f"(data key {key_id}, scope {scope!r}). The value was altered, or copied from "
            "another row, tenant or field."
        )

    def _find_pk(self, token: str, alias: str, context: str | None) -> Any:
        """Find the primary key of a row whose value failed in values() or values_list()."""
        if not ciphers.looks_like_token(token):
            return "unknown"
        try:
            rows = (
                self.model._base_manager.using(alias)
                .annotate(_stored_token=Cast(self.name, models.TextField()))
                .filter(_stored_token=token)
            )
            if self.key_scope == TENANT and context is not None:
                assert self.context_field is not None
                if context == "":
                    rows = rows.filter(**{f"{self.context_field.attname}__isnull": True})
                else:
                    rows = rows.filter(**{self.context_field.attname: context})
            pks = list(rows.values_list("pk", flat=True)[:2])
        except (DatabaseError, ValueError, ValidationError):
            return "unknown"
        return pks[0] if len(pks) == 1 else "unknown"

    # Queries

    def get_col(self, alias: str, output_field: Any = None) -> Any:
        if alias == self.model._meta.db_table and (output_field is None or output_field == self):
            return self.cached_col
        return EncryptedCol(alias, self, output_field)

    @cached_property
    def cached_col(self) -> EncryptedCol:
        return EncryptedCol(self.model._meta.db_table, self)

    def get_lookup(self, lookup_name: str) -> Any:
        if lookup_name == "isnull":
            return super().get_lookup(lookup_name)
        if lookup_name == "exact":
            return _NullOnlyExact
        raise FieldError(self.lookup_error_message(lookup_name))

    def get_transform(self, lookup_name: str) -> Any:
        raise FieldError(self.lookup_error_message(lookup_name))

    def lookup_error_message(self, lookup_name: str) -> str:
        return (
            f"{self.qualified_name} is encrypted, so the database cannot compare or transform "
            f"its values: '{lookup_name}' is not supported. Only 'isnull' (and '=None') works."
        )

    # Storage

    def get_internal_type(self) -> str:
        # The column always holds text, whatever the plaintext type.
        return "TextField"

    def cast_db_type(self, connection: BaseDatabaseWrapper) -> Any:
        return self.db_type(connection)

    # Checks

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors = super().check(**kwargs)
        errors.extend(self._check_encryption_options())
        return errors

    def _check_encryption_options(self) -> list[checks.CheckMessage]:
        errors: list[checks.CheckMessage] = []

        def error(message: str, hint: str | None, id: str) -> None:
            errors.append(checks.Error(message, hint=hint, obj=self, id=id))

        mro = type(self).__mro__
        if any(
            issubclass(base, models.Field) and not issubclass(base, EncryptedField)
            for base in mro[: mro.index(EncryptedField)]
        ):
            error(
                f"{type(self).__name__} lists EncryptedField after its Django field class.",
                "Put EncryptedField first among the bases, so that its methods win.",
                "django_kms_fields.E111",
            )
        if getattr(self, "_unique", False):
            error(
                "Encrypted fields cannot be unique.",
                "Each encryption of a value gives a different token, so the database "
                "cannot enforce uniqueness. Remove unique=True.",
                "django_kms_fields.E101",
            )
        if getattr(self, "db_index", False):
            error(
                "Encrypted fields cannot have db_index=True.",
                "An index on ciphertext serves no query. Remove db_index=True.",
                "django_kms_fields.E102",
            )
        if self.primary_key:
            error(
                "An encrypted field cannot be the primary key.",
                None,
                "django_kms_fields.E103",
            )
        if self.has_db_default():
            error(
                "Encrypted fields cannot have a db_default.",
                "A database default would be stored unencrypted. Use default instead.",
                "django_kms_fields.E109",
            )
        if self.associated_data_label is not None and not _LABEL_RE.match(
            self.associated_data_label
        ):
            error(
                f"associated_data_label {self.associated_data_label!r} is not of the form "
                "'<app_label>.<model_name>.<field_name>'.",
                None,
                "django_kms_fields.E110",
            )
        if self.key_scope not in KEY_SCOPES:
            error(
                f"key_scope is {self.key_scope!r}.",
                "Use 'global', 'tenant' or 'row'.",
                "django_kms_fields.E104",
            )
            return errors
        if self.key_scope == TENANT:
            errors.extend(self._check_tenant_field())
        elif self.tenant_field is not None:
            error(
                f"tenant_field is set, but key_scope is {self.key_scope!r}.",
                "Use key_scope='tenant' or remove tenant_field.",
                "django_kms_fields.E105",
            )
        if self.key_scope == ROW:
            errors.extend(self._check_row_scope())
        return errors

    def _check_tenant_field(self) -> list[checks.CheckMessage]:
        if not self.tenant_field:
            return [
                checks.Error(
                    "key_scope='tenant' needs tenant_field.",
                    hint="Name the field or foreign key that identifies the tenant.",
                    obj=self,
                    id="django_kms_fields.E105",
                )
            ]
        try:
            tenant = self.model._meta.get_field(self.tenant_field)
        except FieldDoesNotExist:
            return [
                checks.Error(
                    f"tenant_field {self.tenant_field!r} is not a field of "
                    f"{self.model._meta.label}.",
                    obj=self,
                    id="django_kms_fields.E106",
                )
            ]
        local = self.model._meta.local_concrete_fields
        if (
            tenant not in local
            or tenant.many_to_many
            or isinstance(tenant, EncryptedField)
            or (tenant.is_relation and not tenant.many_to_one and not tenant.one_to_one)
        ):
            return [
                checks.Error(
                    f"tenant_field {self.tenant_field!r} must be a plain field or foreign key "
                    f"stored in {self.model._meta.label}'s own table.",
                    hint="Encrypted fields and fields inherited from a concrete parent "
                    "model cannot identify the tenant.",
                    obj=self,
                    id="django_kms_fields.E107",
                )
            ]
        return []

    def _check_row_scope(self) -> list[checks.CheckMessage]:
        pk = self.model._meta.pk
        if pk is None or pk.is_relation or pk.has_default():
            return []
        if isinstance(pk, models.AutoField) or getattr(pk, "db_returning", False):
            return [
                checks.Error(
                    "key_scope='row' needs the primary key before the row is inserted, "
                    f"but {self.model._meta.label}.{pk.name} is assigned by the database.",
                    hint="Use a primary key with a default, for example "
                    "models.UUIDField(primary_key=True, default=uuid.uuid4).",
                    obj=self,
                    id="django_kms_fields.E108",
                )
            ]
        return []


_MISSING = object()


class _InvalidValue(ValueError):
    """An invalid value, raised with a message that does not quote the value."""


def _first_marker(value: str) -> int:
    lazy = value.find(LAZY_MARKER)
    eager = value.find(EAGER_MARKER)
    if lazy < 0:
        return eager
    if eager < 0:
        return lazy
    return min(lazy, eager)


def _require_data_key_table(field: EncryptedField, connection: BaseDatabaseWrapper) -> None:
    from .models import DataKey

    if DataKey._meta.db_table not in connection.introspection.table_names():
        raise FieldError(
            f"This migration encrypts a default for {field.qualified_name}, which needs "
            "django_kms_fields' DataKey table. Add ('django_kms_fields', '0001_initial') "
            "to the migration's dependencies."
        )


def _called_by_schema_editor() -> bool:
    from django.db.backends.base.schema import BaseDatabaseSchemaEditor

    effective_default = BaseDatabaseSchemaEditor.effective_default.__code__
    frame = sys._getframe(1)
    for _depth in range(4):
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return False
        if frame.f_code is effective_default:
            return True
    return False


def _install_model_hooks(sender: Any, **kwargs: Any) -> None:
    """Connect the per-model hooks of a model that has encrypted fields."""
    signals.pre_save.connect(_prepare_before_save, sender=sender, weak=False)
    encrypted = [f for f in sender._meta.local_concrete_fields if isinstance(f, EncryptedField)]
    if any(field.key_scope == ROW for field in encrypted):
        signals.post_delete.connect(_delete_row_data_keys, sender=sender, weak=False)
    by_tenant: dict[str, list[EncryptedField]] = {}
    for field in encrypted:
        if field.key_scope == TENANT and field.tenant_field:
            by_tenant.setdefault(field.tenant_field, []).append(field)
    for tenant_name, dependents in by_tenant.items():
        try:
            tenant = sender._meta.get_field(tenant_name)
        except FieldDoesNotExist:
            continue  # Reported by the system check E106.
        if isinstance(tenant, EncryptedField) or tenant not in sender._meta.local_concrete_fields:
            continue  # Reported by the system check E107.
        _guard_tenant_updates(tenant, dependents)


def _prepare_before_save(
    sender: Any, instance: Any, raw: bool, using: str, update_fields: Any, **kwargs: Any
) -> None:
    """Do the work of encryption that can fail before ``Model.save()`` opens its transaction.

    This finds each value's scope and creates or unwraps its data key, so
    that a failure of the key provider or a missing tenant leaves any open
    transaction usable and writes no row, parent rows of multi-table
    inheritance included. ``get_db_prep_save()`` then only encrypts locally.
    """
    keyring = get_keyring()
    data = instance.__dict__
    # Data keys belong to one database: a row read from another one, as by
    # save(using=...), is encrypted again under this database's keys.
    moved = instance._state.db is not None and instance._state.db != using
    for field in instance._meta.concrete_fields:
        if not isinstance(field, EncryptedField) or field.attname not in data:
            continue
        if update_fields is not None and field.name not in update_fields:
            continue
        if field.key_scope == ROW and instance.pk is None:
            continue  # A child of multi-table inheritance gets its pk from the parent row.
        if moved and data[field.attname].__class__ is SealedValue:
            data[field.attname] = field.unseal(instance, data[field.attname])
        result = field.prepare_write(instance)
        if result.__class__ is _PendingEncryption:
            keyring.active_entry(result.scope, using)


def _check_upsert(model: Any, compiler: Any) -> None:
    """Reject a ``bulk_create(update_conflicts=True)`` that would store values under a wrong scope.

    On a conflict the existing row keeps its primary key, and its tenant unless
    the update sets it, while the values come encrypted for the new object.
    Each INSERT statement is checked once, not once per value.
    """
    query = compiler.query
    if query.on_conflict is not OnConflict.UPDATE:
        return
    if getattr(compiler, "_kms_fields_checked", False):
        return
    compiler._kms_fields_checked = True
    connection = compiler.connection
    updated = set(query.update_fields or ())
    # Without a conflict target (MariaDB, MySQL), any unique index may conflict.
    targets = (
        set(query.unique_fields or ())
        if connection.features.supports_update_conflicts_with_target
        else set()
    )
    for field in model._meta.concrete_fields:
        if not isinstance(field, EncryptedField):
            continue
        if field.key_scope == TENANT:
            tenant = field.context_field
            assert tenant is not None
            if tenant in targets or (field in updated) == (tenant in updated):
                continue
            raise FieldError(
                f"bulk_create(update_conflicts=True) must update {field.qualified_name} "
                f"and its tenant field {tenant.name!r} together, or have {tenant.name!r} "
                "in unique_fields: the conflicting row may belong to another tenant, and "
                "each value is encrypted under its tenant's data key."
            )
        if field.key_scope == ROW and field in updated and model._meta.pk not in targets:
            raise FieldError(
                f"bulk_create(update_conflicts=True) cannot update {field.qualified_name}, "
                "which uses key_scope='row', unless unique_fields is the primary key: the "
                "new value is encrypted for the new object's primary key, not for the "
                "conflicting row's. MariaDB and MySQL take no unique_fields. Update such "
                "rows with save() or bulk_update()."
            )


def _delete_row_data_keys(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    """Delete the per-row data keys of a deleted row (cascades included)."""
    from .models import DataKey

    scopes = {
        field._scope_from_context(instance.pk)
        for field in sender._meta.local_concrete_fields
        if isinstance(field, EncryptedField) and field.key_scope == ROW
    }
    if instance.pk is None or not scopes:
        return
    DataKey.objects.using(using).filter(scope__in=scopes).delete()
    get_keyring().forget_scopes(using, scopes)


def _guard_tenant_updates(tenant: Any, dependents: list[EncryptedField]) -> None:
    """Reject ``QuerySet.update()`` of the tenant that leaves values under the old tenant.

    The tenant field's class is replaced by a subclass with the same name and
    module (so migrations see no change) that adds an UPDATE placeholder hook.
    """
    tenant._kms_fields_dependents = dependents
    cls = type(tenant)
    if not getattr(cls, "_kms_fields_tenant_guard", False):
        tenant.__class__ = _guarded_class(cls)


_guarded_classes: dict[type, type] = {}


def _guarded_class(cls: type) -> type:
    guarded = _guarded_classes.get(cls)
    if guarded is not None:
        return guarded
    namespace: dict[str, Any] = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "_kms_fields_tenant_guard": True,
    }
    if django.VERSION >= (6, 1):

        def get_placeholder_sql(self: Any, value: Any, compiler: Any, connection: Any) -> Any:
            _check_tenant_update(self, compiler)
            original = getattr(super(guarded, self), "get_placeholder_sql", None)
            if original is not None:
                return original(value, compiler, connection)
            if hasattr(value, "as_sql"):
                return compiler.compile(value)
            return "%s", (value,)

        namespace["get_placeholder_sql"] = _HiddenFromInserts(get_placeholder_sql)
    else:

        def get_placeholder(self: Any, value: Any, compiler: Any, connection: Any) -> str:
            _check_tenant_update(self, compiler)
            original = getattr(super(guarded, self), "get_placeholder", None)
            if original is not None:
                placeholder: str = original(value, compiler, connection)
                return placeholder
            return "%s"

        namespace["get_placeholder"] = _HiddenFromInserts(get_placeholder)
    guarded = _guarded_classes[cls] = type(cls.__name__, (cls,), namespace)
    return guarded


def _check_tenant_update(tenant: Any, compiler: Any) -> None:
    from django.db.models.sql.compiler import SQLUpdateCompiler

    # Clones made for migration states carry no dependents and are not guarded.
    dependents = getattr(tenant, "_kms_fields_dependents", ())
    if not dependents or not isinstance(compiler, SQLUpdateCompiler):
        return
    updated = {field for field, _model, _value in getattr(compiler.query, "values", ())}
    missing = [field.name for field in dependents if field not in updated]
    if missing:
        raise FieldError(
            f"An update of {tenant.model._meta.label}.{tenant.name} that does not also "
            f"write {', '.join(missing)} would leave them encrypted under the old "
            "tenant's data key, and they could no longer be decrypted. Change the tenant "
            "with save() without update_fields, on an instance that has those fields "
            "loaded (not deferred by only() or defer()), or list them in update_fields "
            "or bulk_update(); QuerySet.update() can only move rows whose values it sets "
            "to None."
        )


class EncryptedTextField(EncryptedField, models.TextField):
    def plaintext_from_value(self, value: Any) -> bytes:
        return self.get_prep_value(value).encode()

    def value_from_plaintext(self, data: bytes) -> str:
        return data.decode()


class EncryptedCharField(EncryptedField, models.CharField):
    """Encrypted ``CharField``. ``max_length`` limits the plaintext and is optional.

    The column is unbounded text, so the field itself rejects longer values on
    save, as a ``varchar`` column would.
    """

    def plaintext_from_value(self, value: Any) -> bytes:
        text = self.get_prep_value(value)
        if self.max_length is not None and len(text) > self.max_length:
            raise _InvalidValue(
                f"{self.qualified_name} cannot store {len(text)} characters: its max_length "
                f"is {self.max_length}."
            )
        return text.encode()

    def value_from_plaintext(self, data: bytes) -> str:
        return data.decode()

    def _check_max_length_attribute(self, **kwargs: Any) -> list[checks.CheckMessage]:
        if self.max_length is None:
            return []
        return super()._check_max_length_attribute(**kwargs)  # type: ignore[misc]


class EncryptedEmailField(EncryptedCharField, models.EmailField):
    pass


class EncryptedIntegerField(EncryptedField, models.IntegerField):
    """Encrypted integer, from -2**31 to 2**31 - 1 on every database.

    That is the range Django documents as safe for ``IntegerField`` everywhere,
    so values move between databases (and through fixtures) unchanged.
    """

    MIN_VALUE = -(2**31)
    MAX_VALUE = 2**31 - 1

    def plaintext_from_value(self, value: Any) -> bytes:
        number = self.get_prep_value(value)
        if not self.MIN_VALUE <= number <= self.MAX_VALUE:
            raise _InvalidValue(
                f"{self.qualified_name} only stores integers from {self.MIN_VALUE} to "
                f"{self.MAX_VALUE}."
            )
        return str(number).encode()

    def value_from_plaintext(self, data: bytes) -> int:
        return int(data)

    @cached_property
    def validators(self) -> list[Any]:
        return [
            *self.default_validators,
            *getattr(self, "_validators", []),
            validators.MinValueValidator(self.MIN_VALUE),
            validators.MaxValueValidator(self.MAX_VALUE),
        ]


class EncryptedDateField(EncryptedField, models.DateField):  # type: ignore[misc]
    """Encrypted date, stored as ISO 8601 text (``YYYY-MM-DD``)."""

    def plaintext_from_value(self, value: Any) -> bytes:
        return self.get_prep_value(value).isoformat().encode()

    def value_from_plaintext(self, data: bytes) -> datetime.date:
        return datetime.date.fromisoformat(data.decode())


class EncryptedDateTimeField(EncryptedField, models.DateTimeField):  # type: ignore[misc]
    """Encrypted datetime, stored as ISO 8601 text.

    As with ``DateTimeField``: with ``USE_TZ = True``, aware values are stored
    in UTC and read back as aware UTC datetimes (a naive value is made aware
    in the default time zone, with a warning that does not quote it); with
    ``USE_TZ = False``, values are naive and an aware value raises
    ``ValueError``.
    """

    def plaintext_from_value(self, value: Any) -> bytes:
        if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
            value = datetime.datetime(value.year, value.month, value.day)
        value = self.to_python(value)
        if settings.USE_TZ:
            if timezone.is_naive(value):
                # Django's own warning would quote the value.
                warnings.warn(
                    f"{self.qualified_name} received a naive datetime while time zone "
                    "support is active.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                value = timezone.make_aware(value, timezone.get_default_timezone())
            value = value.astimezone(datetime.timezone.utc)
        elif timezone.is_aware(value):
            raise _InvalidValue(
                f"{self.qualified_name} cannot store a timezone-aware datetime when USE_TZ "
                "is False."
            )
        return value.isoformat().encode()

    def value_from_plaintext(self, data: bytes) -> datetime.datetime:
        return self._normalize(datetime.datetime.fromisoformat(data.decode()))

    def value_from_legacy_text(self, text: str) -> datetime.datetime:
        # A converted DateTimeField column holds the database's text form,
        # such as "2024-01-01 10:00:00+00" on PostgreSQL.
        value = self.to_python(text)
        assert value is not None
        return self._normalize(value)

    def _normalize(self, value: datetime.datetime) -> datetime.datetime:
        if settings.USE_TZ:
            if timezone.is_naive(value):
                return value.replace(tzinfo=datetime.timezone.utc)
            return value.astimezone(datetime.timezone.utc)
        if timezone.is_aware(value):
            return timezone.make_naive(value, timezone.get_default_timezone())
        return value


class EncryptedJSONField(EncryptedField, models.JSONField):
    """Encrypted JSON, stored as compact UTF-8 JSON text.

    Python ``None`` is stored as SQL NULL, as with ``JSONField``; JSON ``null``
    inside a document round-trips.
    """

    def plaintext_from_value(self, value: Any) -> bytes:
        return json.dumps(
            value, cls=self.encoder, ensure_ascii=False, separators=(",", ":")
        ).encode()

    def value_from_plaintext(self, data: bytes) -> Any:
        return json.loads(data, cls=self.decoder)

    def value_from_legacy_text(self, text: str) -> Any:
        return json.loads(text, cls=self.decoder)

    def get_internal_type(self) -> str:
        # Django's XML serializer reads and writes JSON fields by this name.
        # No backend converts "JSONField" values on read, so tokens are safe.
        return "JSONField"

    def db_type(self, connection: BaseDatabaseWrapper) -> str:
        return connection.data_types["TextField"]

    def db_check(self, connection: BaseDatabaseWrapper) -> None:
        # SQLite's JSON_VALID() check would reject tokens.
        return None

    def _check_supported(self, databases: Any) -> list[checks.CheckMessage]:
        # The column holds a token, so the database needs no JSON support.
        return []

    def formfield(self, **kwargs: Any) -> Any:
        from .forms import PrettyJSONField

        defaults = {"form_class": PrettyJSONField, **kwargs}
        if issubclass(defaults["form_class"], PrettyJSONField):
            defaults.setdefault("allow_null", self.null)
        return super().formfield(**defaults)
