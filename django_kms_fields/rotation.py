"""Key rotation: new data keys, re-encryption of stored values, re-wrapping, clean-up.

``manage.py rotate_keys`` is a thin command around :class:`Rotation`. The
rules that keep data safe while the site keeps writing:

- Rows are re-encrypted in batches, one transaction per batch. Each batch is
  read inside that transaction with ``SELECT ... FOR UPDATE`` (``SKIP LOCKED``
  where the database has it, so that several runs share the work), so a value
  that the application writes meanwhile waits for the batch or is read after
  it: no update is lost. On SQLite, which has no row locks, each batch first
  takes the database's write lock.
- A run that dies leaves every batch either done or untouched, and old values
  stay readable because retired keys still decrypt. Running again finishes
  the job: a scope whose values still use a retired key is not rotated again.
- A retired data key is deleted only when no stored value names it (checked
  again inside the deleting transaction) and it was retired longer ago than
  ``delete_after``, so that processes whose cache still holds it as the
  active key (for up to ``DATA_KEY_CACHE_TTL``) have stopped writing with it.
- KMS calls grow with the number of data keys, not rows: one
  ``GenerateDataKey`` per rotated scope, one ``Decrypt`` per data key read,
  one ``ReEncrypt`` per re-wrapped key. Row scopes have one key per row.
"""

from __future__ import annotations

import collections
import datetime
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, models, transaction
from django.db.models.functions import Cast, Substr
from django.utils import timezone

from . import ciphers
from .conf import get_settings
from .exceptions import KeyProviderError
from .fields import GLOBAL, ROW, TENANT, EncryptedField
from .keyring import DataKeyNotFound, get_keyring
from .models import DataKey

# Undecryptable values listed in the summary; the rest are only counted.
MAX_REPORTED_FAILURES = 100
# Data keys checked and deleted per transaction.
KEY_CHUNK_SIZE = 500
# Seconds between progress reports.
PROGRESS_INTERVAL_SECONDS = 2.0


@dataclass
class RotationOptions:
    using: str = DEFAULT_DB_ALIAS
    models: list[type[models.Model]] | None = None
    """Models to scan; by default every managed model with encrypted fields."""
    scopes: list[str] | None = None
    """Scope strings (``tenant:42``) or kinds (``global``, ``tenant``, ``row``)."""
    older_than: datetime.timedelta | None = None
    """Only rotate or re-wrap data keys created longer ago than this."""
    batch_size: int = 500
    dry_run: bool = False
    reencrypt: bool = False
    rewrap: bool = False
    master_key_id: str | None = None
    """For ``rewrap``: the destination master key; ``MASTER_KEY_ID`` by default."""
    delete_after: datetime.timedelta | None = None
    """Minimum time since retirement before an unused key is deleted;
    ``DATA_KEY_CACHE_TTL`` plus 5 minutes by default."""


@dataclass
class Progress:
    model: str
    done: int
    total: int
    elapsed_seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.done / self.elapsed_seconds if self.elapsed_seconds else 0.0

    @property
    def seconds_left(self) -> float | None:
        rate = self.rows_per_second
        return (self.total - self.done) / rate if rate else None


@dataclass
class RotationSummary:
    dry_run: bool = False
    keys_created: int = 0
    keys_retired: int = 0
    keys_deleted: int = 0
    keys_rewrapped: int = 0
    keys_kept: collections.Counter[str] = field(default_factory=collections.Counter)
    scopes_resumed: int = 0
    """Scopes not rotated again because an earlier run had not finished re-encrypting them."""
    rows_scanned: int = 0
    values_reencrypted: int = 0
    values_encrypted_from_plaintext: int = 0
    values_skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    kms_calls: dict[str, int] = field(default_factory=dict)
    planned: dict[str, int] = field(default_factory=dict)

    def record_failure(self, model: str, field_name: str, pk: Any, reason: str) -> None:
        self.values_skipped[reason] += 1
        if len(self.failures) < MAX_REPORTED_FAILURES:
            self.failures.append(
                {"model": model, "field": field_name, "pk": str(pk), "reason": reason}
            )

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "keys_created": self.keys_created,
            "keys_retired": self.keys_retired,
            "keys_deleted": self.keys_deleted,
            "keys_rewrapped": self.keys_rewrapped,
            "keys_kept": dict(self.keys_kept),
            "scopes_resumed": self.scopes_resumed,
            "rows_scanned": self.rows_scanned,
            "values_reencrypted": self.values_reencrypted,
            "values_encrypted_from_plaintext": self.values_encrypted_from_plaintext,
            "values_skipped": dict(self.values_skipped),
            "failures": self.failures,
            "kms_calls": self.kms_calls,
            "planned": self.planned,
        }


UNDECRYPTABLE = "cannot be decrypted"
NO_TENANT = "has a value but no tenant"
PLAINTEXT_NOT_ALLOWED = "plaintext, but the field does not set legacy_plaintext=True"


@dataclass
class _Target:
    """A model and the encrypted fields of its own table."""

    model: type[models.Model]
    fields: list[EncryptedField]

    @property
    def label(self) -> str:
        return self.model._meta.label


class Rotation:
    def __init__(
        self,
        options: RotationOptions,
        on_progress: Callable[[Progress], None] | None = None,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self.options = options
        self.alias = options.using
        self.connection = connections[self.alias]
        self.keyring = get_keyring()
        self.summary = RotationSummary(dry_run=options.dry_run)
        self.on_progress = on_progress or (lambda progress: None)
        self.on_message = on_message or (lambda message: None)
        settings = get_settings()
        self.delete_after = options.delete_after
        if self.delete_after is None:
            self.delete_after = datetime.timedelta(seconds=settings.data_key_cache_ttl + 300)
        self.started_at = timezone.now()
        self._calls_before = self.keyring.provider_calls

    # Entry point

    def run(self) -> RotationSummary:
        try:
            if self.options.rewrap:
                self._rewrap()
            elif self.options.dry_run:
                self._plan()
            else:
                self._rotate_and_reencrypt()
        finally:
            self.summary.kms_calls = self._calls_since_start()
        return self.summary

    def _calls_since_start(self) -> dict[str, int]:
        now = self.keyring.provider_calls
        return {
            name: count - self._calls_before.get(name, 0)
            for name, count in now.items()
            if count - self._calls_before.get(name, 0)
        }

    # Selection

    def targets(self) -> list[_Target]:
        """Models with encrypted fields in their own table, in a stable order."""
        chosen = self.options.models
        candidates = chosen if chosen is not None else apps.get_models()
        targets = []
        for model in candidates:
            meta = model._meta
            if meta.proxy or (not meta.managed and chosen is None):
                continue
            fields = [
                f
                for f in meta.local_concrete_fields
                if isinstance(f, EncryptedField) and self._kind_selected(f.key_scope)
            ]
            if fields:
                targets.append(_Target(model, fields))
        return sorted(targets, key=lambda target: target.label)

    def _kind_selected(self, kind: str) -> bool:
        scopes = self.options.scopes
        if not scopes:
            return True
        return any(scope == kind or scope.startswith(f"{kind}:") for scope in scopes)

    def scope_selected(self, scope: str) -> bool:
        scopes = self.options.scopes
        if not scopes:
            return True
        kind = scope.split(":", 1)[0]
        return any(selected in (scope, kind) for selected in scopes)

    def _selected_keys(self, queryset: models.QuerySet[DataKey]) -> Iterator[DataKey]:
        """Data keys of the selected scope kinds and scopes, without per-row keys unless asked."""
        kinds = {f.key_scope for target in self.targets() for f in target.fields}
        for key in queryset.using(self.alias).order_by("pk").iterator(chunk_size=KEY_CHUNK_SIZE):
            kind = key.scope.split(":", 1)[0]
            if kind in kinds and self.scope_selected(key.scope):
                yield key

    def _older_than_cutoff(self) -> datetime.datetime | None:
        if self.options.older_than is None:
            return None
        return self.started_at - self.options.older_than

    # Rotation

    def _rotate_and_reencrypt(self) -> None:
        targets = self.targets()
        if self.options.reencrypt:
            # Keys that earlier runs emptied: deleting them first decides which
            # scopes still have a re-encryption in progress.
            self._delete_unused_retired_keys(report_kept=False)
        self._rotate_shared_scopes()
        if self.options.reencrypt:
            for target in targets:
                self._reencrypt(target)
            self._delete_unused_retired_keys(report_kept=True)

    def _rotate_shared_scopes(self) -> None:
        """Retire the active key of each selected global and tenant scope and create its successor.

        Per-row keys rotate with their rows during re-encryption.
        """
        cutoff = self._older_than_cutoff()
        active = DataKey.objects.filter(state=DataKey.State.ACTIVE).exclude(
            scope__startswith="row:"
        )
        if cutoff is not None:
            active = active.filter(created_at__lt=cutoff)
        in_migration = self._scopes_with_retired_keys() if self.options.reencrypt else set()
        for key in list(self._selected_keys(active)):
            if key.scope in in_migration:
                # An earlier run retired a key of this scope and did not finish
                # moving its values: finish that instead of rotating again.
                self.summary.scopes_resumed += 1
                continue
            entry, created = self.keyring.rotate(key.scope, self.alias, expected_key_id=key.pk)
            if created:
                self.summary.keys_created += 1
                self.summary.keys_retired += 1
                self.on_message(f"Rotated {key.scope}: {key.key_id} -> {entry.key_id}")

    def _scopes_with_retired_keys(self) -> set[str]:
        return set(
            DataKey.objects.using(self.alias)
            .filter(state=DataKey.State.RETIRED)
            .exclude(scope__startswith="row:")
            .values_list("scope", flat=True)
        )

    # Re-encryption

    def _reencrypt(self, target: _Target) -> None:
        model = target.model
        total = model._base_manager.using(self.alias).count()
        if total == 0:
            return
        started = last_report = time.monotonic()
        done = 0
        last_pk = None
        while True:
            rows, last_pk = self._reencrypt_batch(target, last_pk)
            if rows == 0:
                break
            done += rows
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL_SECONDS:
                last_report = now
                self.on_progress(Progress(target.label, done, total, now - started))
        self.on_progress(Progress(target.label, done, max(total, done), time.monotonic() - started))

    def _reencrypt_batch(self, target: _Target, after_pk: Any) -> tuple[int, Any]:
        """Re-encrypt one batch of rows in one transaction; return its size and last pk."""
        model = target.model
        features = self.connection.features
        with transaction.atomic(using=self.alias):
            self._take_sqlite_write_lock()
            queryset = model._base_manager.using(self.alias).order_by("pk")
            if after_pk is not None:
                queryset = queryset.filter(pk__gt=after_pk)
            if features.has_select_for_update:
                queryset = queryset.select_for_update(
                    skip_locked=features.has_select_for_update_skip_locked
                )
            rows = list(
                queryset.annotate(**_raw_columns(target.fields)).values_list(
                    *_RowReader(target).columns()
                )[: self.options.batch_size]
            )
            if not rows:
                return 0, after_pk
            updates = self._new_tokens(target, rows)
            self._write(target, updates)
        self.summary.rows_scanned += len(rows)
        return len(rows), rows[-1][0]

    def _take_sqlite_write_lock(self) -> None:
        # SQLite has no row locks; taking the write lock before reading makes
        # the batch's read and write one step for other writers.
        if self.connection.vendor == "sqlite":
            table = self.connection.ops.quote_name(DataKey._meta.db_table)
            with self.connection.cursor() as cursor:
                cursor.execute(f"UPDATE {table} SET id = id WHERE 1 = 0")  # noqa: S608

    def _new_tokens(
        self, target: _Target, rows: list[tuple[Any, ...]]
    ) -> dict[EncryptedField, list[tuple[str, Any]]]:
        reader = _RowReader(target)
        row_keys = self._prepare_row_keys(target, rows)
        updates: dict[EncryptedField, list[tuple[str, Any]]] = collections.defaultdict(list)
        for row in rows:
            pk = row[0]
            for encrypted_field, stored, scope in reader.values(row):
                if stored is None or not self.scope_selected(scope or TENANT):
                    continue
                if not scope:
                    self.summary.record_failure(target.label, encrypted_field.name, pk, NO_TENANT)
                    continue
                token = self._reencrypted(target, encrypted_field, pk, scope, stored, row_keys)
                if token is not None:
                    updates[encrypted_field].append((token, pk))
        return updates

    def _prepare_row_keys(self, target: _Target, rows: list[tuple[Any, ...]]) -> dict[str, str]:
        """Rotate the per-row keys of a batch where due; return scope -> active key id."""
        row_fields = [f for f in target.fields if f.key_scope == ROW]
        if not row_fields:
            return {}
        scopes = {row_fields[0]._scope_from_context(row[0]) for row in rows}
        scopes = {scope for scope in scopes if self.scope_selected(scope)}
        keys = DataKey.objects.using(self.alias).filter(scope__in=scopes)
        active_ids: dict[str, int] = {}
        created_at: dict[str, datetime.datetime] = {}
        with_retired_keys = set()
        for numeric_id, scope, state, created in keys.values_list(
            "id", "scope", "state", "created_at"
        ):
            if state == DataKey.State.ACTIVE:
                active_ids[scope] = numeric_id
                created_at[scope] = created
            else:
                with_retired_keys.add(scope)

        cutoff = self._older_than_cutoff()
        result = {}
        for scope, numeric_id in active_ids.items():
            due = scope not in with_retired_keys and (cutoff is None or created_at[scope] < cutoff)
            if not due:
                result[scope] = ciphers.encode_key_id(numeric_id)
                continue
            entry, rotated = self.keyring.rotate(scope, self.alias, expected_key_id=numeric_id)
            if rotated:
                self.summary.keys_created += 1
                self.summary.keys_retired += 1
            result[scope] = entry.key_id
        return result

    def _reencrypted(
        self,
        target: _Target,
        encrypted_field: EncryptedField,
        pk: Any,
        scope: str,
        stored: str,
        row_keys: dict[str, str],
    ) -> str | None:
        """Return the new token of a stored value, or None if it needs no change."""
        if not ciphers.looks_like_token(stored):
            if not encrypted_field.legacy_plaintext:
                self.summary.record_failure(
                    target.label, encrypted_field.name, pk, PLAINTEXT_NOT_ALLOWED
                )
                return None
            value = encrypted_field.value_from_legacy_text(stored)
            token = self.keyring.encrypt(
                encrypted_field.plaintext_from_value(value),
                scope,
                encrypted_field.label,
                self.alias,
            )
            self.summary.values_encrypted_from_plaintext += 1
            return token

        active_key_id = row_keys.get(scope) if encrypted_field.key_scope == ROW else None
        if active_key_id is None:
            active_key_id = self.keyring.active_entry(scope, self.alias).key_id
        if stored[len(ciphers.PREFIX) : ciphers.HEADER_LENGTH] == active_key_id:
            return None

        try:
            plaintext = self.keyring.decrypt(stored, scope, encrypted_field.label, self.alias)
        except (ciphers.InvalidToken, DataKeyNotFound):
            self.summary.record_failure(target.label, encrypted_field.name, pk, UNDECRYPTABLE)
            return None
        except KeyProviderError as error:
            # The provider rejects the wrapped key itself: the DataKey row was
            # altered. Other provider errors stop the run.
            if error.code != "InvalidCiphertextException":
                raise
            self.summary.record_failure(target.label, encrypted_field.name, pk, UNDECRYPTABLE)
            return None
        self.summary.values_reencrypted += 1
        return self.keyring.encrypt(plaintext, scope, encrypted_field.label, self.alias)

    def _write(self, target: _Target, updates: dict[EncryptedField, list[tuple[str, Any]]]) -> None:
        connection = self.connection
        meta = target.model._meta
        table = connection.ops.quote_name(meta.db_table)
        pk_field = meta.pk
        assert pk_field is not None
        pk_column = connection.ops.quote_name(pk_field.column)
        with connection.cursor() as cursor:
            for encrypted_field, pairs in updates.items():
                column = connection.ops.quote_name(encrypted_field.column or "")
                cursor.executemany(
                    f"UPDATE {table} SET {column} = %s WHERE {pk_column} = %s",  # noqa: S608
                    [(token, pk_field.get_db_prep_value(pk, connection)) for token, pk in pairs],
                )

    # Deleting retired keys

    def _delete_unused_retired_keys(self, *, report_kept: bool) -> None:
        assert self.delete_after is not None
        cutoff = timezone.now() - self.delete_after
        retired = DataKey.objects.filter(state=DataKey.State.RETIRED)
        candidates = list(self._selected_keys(retired))
        recent = [key for key in candidates if key.retired_at is None or key.retired_at > cutoff]
        if recent and report_kept:
            seconds = int(self.delete_after.total_seconds())
            self.summary.keys_kept[f"retired less than {seconds} s ago, see --delete-after"] += len(
                recent
            )
        old = [
            key.pk for key in candidates if key.retired_at is not None and key.retired_at <= cutoff
        ]
        for start in range(0, len(old), KEY_CHUNK_SIZE):
            self._delete_chunk(old[start : start + KEY_CHUNK_SIZE], report_kept=report_kept)

    def _delete_chunk(self, numeric_ids: list[int], *, report_kept: bool) -> None:
        with transaction.atomic(using=self.alias):
            self._take_sqlite_write_lock()
            locked = list(
                DataKey.objects.using(self.alias)
                .select_for_update()
                .filter(pk__in=numeric_ids, state=DataKey.State.RETIRED)
                .values_list("id", "scope")
            )
            # Checked inside the transaction that deletes, after the lock.
            referenced = self._referenced_key_ids(locked)
            unused = [numeric_id for numeric_id, _ in locked if numeric_id not in referenced]
            if referenced and report_kept:
                self.summary.keys_kept["still used by stored values"] += len(referenced)
            DataKey.objects.using(self.alias).filter(pk__in=unused).delete()
        self.summary.keys_deleted += len(unused)
        for numeric_id in unused:
            self.on_message(f"Deleted unused retired data key {ciphers.encode_key_id(numeric_id)}")

    def _referenced_key_ids(self, keys: list[tuple[int, str]]) -> set[int]:
        """Return the ids among ``keys`` that a stored value still names."""
        by_text = {ciphers.encode_key_id(numeric_id): numeric_id for numeric_id, _ in keys}
        row_keys = collections.defaultdict(list)
        shared = []
        for numeric_id, scope in keys:
            if scope.startswith("row:"):
                row_keys[scope.rsplit(":", 1)[0]].append((numeric_id, scope))
            else:
                shared.append(ciphers.encode_key_id(numeric_id))

        referenced: set[int] = set()
        if shared:
            for model, encrypted_field in _all_encrypted_fields(kinds={GLOBAL, TENANT}):
                found = (
                    model._base_manager.using(self.alias)
                    .annotate(_key_id=Substr(Cast(encrypted_field.name, models.TextField()), 5, 11))
                    .filter(_key_id__in=shared)
                    .values_list("_key_id", flat=True)
                    .distinct()
                )
                referenced.update(by_text[key_id] for key_id in found)
        for model_part, row_scoped_keys in row_keys.items():
            referenced |= self._referenced_row_keys(model_part, row_scoped_keys)
        return referenced

    def _referenced_row_keys(self, model_part: str, keys: list[tuple[int, str]]) -> set[int]:
        # A per-row key can only be named by its own row's values.
        id_by_scope = {scope: numeric_id for numeric_id, scope in keys}
        referenced: set[int] = set()
        for model, encrypted_field in _all_encrypted_fields(kinds={ROW}):
            if encrypted_field.label.rsplit(".", 1)[0] != model_part:
                continue
            pk_field = model._meta.pk
            assert pk_field is not None
            pks = [pk_field.to_python(scope.rsplit(":", 1)[1]) for scope in id_by_scope]
            stored = (
                model._base_manager.using(self.alias)
                .filter(pk__in=pks)
                .annotate(_token=Cast(encrypted_field.name, models.TextField()))
                .values_list("pk", "_token")
            )
            for pk, token in stored:
                numeric_id = id_by_scope.get(encrypted_field._scope_from_context(pk))
                if (
                    numeric_id is not None
                    and token is not None
                    and token[len(ciphers.PREFIX) : ciphers.HEADER_LENGTH]
                    == ciphers.encode_key_id(numeric_id)
                ):
                    referenced.add(numeric_id)
        return referenced

    # Re-wrapping

    def _rewrap(self) -> None:
        destination_id = self.options.master_key_id or get_settings().master_key_id
        destination = self.keyring.resolve_master_key_id(destination_id)
        keys = DataKey.objects.exclude(master_key_id=destination)
        cutoff = self._older_than_cutoff()
        if cutoff is not None:
            keys = keys.filter(created_at__lt=cutoff)
        pending = [key.pk for key in self._selected_keys(keys)]
        self.summary.planned["keys_to_rewrap"] = len(pending)
        if self.options.dry_run:
            self.summary.planned["kms_calls"] = len(pending)
            return
        for numeric_id in pending:
            if self.keyring.rewrap(self.alias, numeric_id, destination):
                self.summary.keys_rewrapped += 1

    # Dry run

    def _plan(self) -> None:
        """Count what a real run would change, without writing anything."""
        targets = self.targets()
        cutoff = self._older_than_cutoff()
        active = DataKey.objects.filter(state=DataKey.State.ACTIVE).exclude(
            scope__startswith="row:"
        )
        if cutoff is not None:
            active = active.filter(created_at__lt=cutoff)
        in_migration = self._scopes_with_retired_keys() if self.options.reencrypt else set()
        to_rotate = [key for key in self._selected_keys(active) if key.scope not in in_migration]
        self.summary.planned["keys_to_rotate"] = len(to_rotate)
        if not self.options.reencrypt:
            self.summary.planned["kms_calls"] = len(to_rotate)
            return

        rotating = {key.scope for key in to_rotate}
        active_ids = dict(
            DataKey.objects.using(self.alias)
            .filter(state=DataKey.State.ACTIVE)
            .values_list("scope", "id")
        )
        values = plaintext = 0
        old_keys: set[str] = set()
        row_scopes = 0
        for target in targets:
            for values_due, plaintext_due, keys_due, rows_due in self._plan_model(
                target, rotating, active_ids
            ):
                values += values_due
                plaintext += plaintext_due
                old_keys |= keys_due
                row_scopes += rows_due
        self.summary.planned.update(
            {
                "values_to_reencrypt": values,
                "values_to_encrypt_from_plaintext": plaintext,
                "row_keys_to_rotate": row_scopes,
                # GenerateDataKey per new key, Decrypt per old key read.
                "kms_calls": len(to_rotate) + row_scopes + len(old_keys) + len(rotating),
            }
        )

    def _plan_model(
        self, target: _Target, rotating: set[str], active_ids: dict[str, int]
    ) -> Iterator[tuple[int, int, set[str], int]]:
        """Yield, per row: values to re-encrypt, plaintext values, old key ids, row keys due."""
        reader = _RowReader(target)
        rows = (
            target.model._base_manager.using(self.alias)
            .order_by("pk")
            .annotate(**_raw_columns(target.fields))
            .values_list(*reader.columns())
        )
        for row in rows.iterator(chunk_size=self.options.batch_size):
            values = plaintext = 0
            old_keys: set[str] = set()
            row_key_due = False
            for encrypted_field, stored, scope in reader.values(row):
                if stored is None or not scope or not self.scope_selected(scope):
                    continue
                if not ciphers.looks_like_token(stored):
                    plaintext += 1
                    continue
                key_id = stored[len(ciphers.PREFIX) : ciphers.HEADER_LENGTH]
                active_id = active_ids.get(scope)
                current = active_id is not None and ciphers.encode_key_id(active_id) == key_id
                if encrypted_field.key_scope == ROW:
                    row_key_due = True
                if not current or scope in rotating or encrypted_field.key_scope == ROW:
                    values += 1
                    old_keys.add(key_id)
            self.summary.rows_scanned += 1
            yield values, plaintext, old_keys, int(row_key_due)


class _RowReader:
    """Reads the stored tokens and scopes of a target's rows from ``values_list()`` tuples.

    A row is ``(pk, *tenant attnames, *raw tokens)``.
    """

    def __init__(self, target: _Target) -> None:
        self.fields = target.fields
        self.contexts = _context_attnames(target.fields)
        self.first_token = 1 + len(self.contexts)
        self._context_position = {
            f: 1 + self.contexts.index(f.context_field.attname)  # type: ignore[union-attr]
            for f in target.fields
            if f.key_scope == TENANT
        }

    def columns(self) -> list[str]:
        return ["pk", *self.contexts, *_raw_names(self.fields)]

    def values(self, row: tuple[Any, ...]) -> Iterator[tuple[EncryptedField, str | None, str]]:
        """Yield each field with its stored token and its scope ("" when the tenant is NULL)."""
        for offset, encrypted_field in enumerate(self.fields):
            stored = row[self.first_token + offset]
            if encrypted_field.key_scope == GLOBAL:
                scope = GLOBAL
            elif encrypted_field.key_scope == TENANT:
                context = row[self._context_position[encrypted_field]]
                scope = "" if context is None else encrypted_field._scope_from_context(context)
            else:
                scope = encrypted_field._scope_from_context(row[0])
            yield encrypted_field, stored, scope


def _raw_names(fields: Iterable[EncryptedField]) -> list[str]:
    return [f"_kms_raw_{f.attname}" for f in fields]


def _raw_columns(fields: Iterable[EncryptedField]) -> dict[str, Cast]:
    """Annotations that select the stored tokens without decrypting them."""
    return {f"_kms_raw_{f.attname}": Cast(f.name, models.TextField()) for f in fields}


def _context_attnames(fields: Iterable[EncryptedField]) -> list[str]:
    names = []
    for f in fields:
        if f.key_scope == TENANT:
            attname = f.context_field.attname  # type: ignore[union-attr]
            if attname not in names:
                names.append(attname)
    return names


def _all_encrypted_fields(kinds: set[str]) -> list[tuple[type[models.Model], EncryptedField]]:
    """Every encrypted field of those scope kinds in a managed table."""
    found = []
    for model in apps.get_models():
        if model._meta.proxy or not model._meta.managed:
            continue
        for f in model._meta.local_concrete_fields:
            if isinstance(f, EncryptedField) and f.key_scope in kinds:
                found.append((model, f))
    return found
