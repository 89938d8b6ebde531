"""Key rotation: new data keys, re-encryption of stored values, re-wrapping, clean-up.

``manage.py rotate_keys`` is a thin command around :class:`Rotation`. The
rules that keep data safe while the site keeps writing:

- Rows are re-encrypted in batches, one transaction per batch. Each batch is
  read inside that transaction with ``SELECT ... FOR UPDATE`` and written back
  before the commit, so a value that the application writes meanwhile waits
  for the batch or is read after it: no update is lost. On SQLite, which has
  no row locks, each batch first takes the database's write lock.
- Where the database has ``SKIP LOCKED``, the first pass skips rows that
  another transaction holds, so that several runs share the work. Each batch
  counts the rows it skipped; a second pass then waits for those rows, so a
  row that the application held is not left behind.
- A run that dies leaves every batch either done or untouched, and old values
  stay readable because retired keys still decrypt. Running again finishes
  the job: a scope that still had a retired key when the run started is not
  rotated again; the run moves its values and deletes the old key instead.
- A retired data key is deleted only when no stored value names it (checked
  again inside the deleting transaction, after locking the key), when it was
  retired before this run started, and when it was retired longer ago than
  ``delete_after``. Processes whose cache still holds it as the active key
  (for up to ``DATA_KEY_CACHE_TTL``) may still be writing with it until then.
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
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, connections, models, transaction
from django.db.models.functions import Cast, Substr
from django.utils import timezone

from . import ciphers
from .conf import get_settings
from .exceptions import EncryptionError, KeyProviderError
from .fields import GLOBAL, ROW, TENANT, EncryptedField
from .keyring import DataKeyNotFound, MasterKeyNotAllowed, get_keyring
from .models import DataKey

# Failures listed in the summary; the rest are only counted.
MAX_REPORTED_FAILURES = 100
# Data keys checked and deleted per transaction.
KEY_CHUNK_SIZE = 500
# Seconds between progress reports.
PROGRESS_INTERVAL_SECONDS = 2.0

# Why a stored value was left as it was.
UNDECRYPTABLE = "cannot be decrypted (altered, or copied from another row, tenant or field)"
KEY_MISSING = "its data key no longer exists"
KEY_UNUSABLE = "its data key cannot be unwrapped by the key provider"
ACTIVE_KEY_UNUSABLE = "the active data key of its scope cannot be unwrapped"
KEY_NOT_ALLOWED = "its data key's master key is not in ALLOWED_MASTER_KEY_IDS"
NO_TENANT = "has a value but no tenant"
PLAINTEXT_NOT_ALLOWED = "plaintext, but the field does not set legacy_plaintext=True"
PLAINTEXT_INVALID = "plaintext that is not a valid value of the field"


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
    rotate: bool = True
    """With ``reencrypt``: ``False`` moves values to the current keys without rotating."""
    rewrap: bool = False
    master_key_id: str | None = None
    """For ``rewrap``: the destination master key; ``MASTER_KEY_ID`` by default."""
    delete_after: datetime.timedelta | None = None
    """Minimum time since retirement before an unused key is deleted;
    ``DATA_KEY_CACHE_TTL`` plus 5 minutes by default."""


@dataclass
class Progress:
    task: str
    done: int
    total: int
    elapsed_seconds: float
    unit: str = "rows"

    @property
    def per_second(self) -> float:
        return self.done / self.elapsed_seconds if self.elapsed_seconds else 0.0

    @property
    def seconds_left(self) -> float | None:
        rate = self.per_second
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
    """Scopes not rotated because they still had a retired key when the run started."""
    rows_scanned: int = 0
    rows_waited_for: int = 0
    """Rows another transaction held during the first pass, processed in the second."""
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
            "rows_waited_for": self.rows_waited_for,
            "values_reencrypted": self.values_reencrypted,
            "values_encrypted_from_plaintext": self.values_encrypted_from_plaintext,
            "values_skipped": dict(self.values_skipped),
            "failures": self.failures,
            "kms_calls": self.kms_calls,
            "planned": self.planned,
        }


@dataclass
class _BatchResult:
    """What one batch changed; added to the summary only once the batch commits."""

    keys_rotated: int = 0
    values_reencrypted: int = 0
    values_encrypted_from_plaintext: int = 0
    failures: list[tuple[str, str, Any, str]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    row_keys_due: int = 0
    row_scopes_resumed: int = 0
    old_key_ids: set[str] = field(default_factory=set)

    def add_to(self, summary: RotationSummary) -> None:
        summary.keys_created += self.keys_rotated
        summary.keys_retired += self.keys_rotated
        summary.values_reencrypted += self.values_reencrypted
        summary.values_encrypted_from_plaintext += self.values_encrypted_from_plaintext
        summary.scopes_resumed += self.row_scopes_resumed
        for failure in self.failures:
            summary.record_failure(*failure)


@dataclass
class _Target:
    """A model and the encrypted fields of its own table."""

    model: type[models.Model]
    fields: list[EncryptedField]

    @property
    def label(self) -> str:
        return self.model._meta.label


@dataclass
class _RowKey:
    """The per-row data keys of one row scope."""

    active_id: int | None = None
    created_at: datetime.datetime | None = None
    has_retired: bool = False


class Rotation:
    def __init__(
        self,
        options: RotationOptions,
        on_progress: Callable[[Progress], None] | None = None,
        on_message: Callable[[str, int], None] | None = None,
    ) -> None:
        self.options = options
        self.alias = options.using
        self.connection = connections[self.alias]
        self.keyring = get_keyring()
        self.summary = RotationSummary(dry_run=options.dry_run)
        self.on_progress = on_progress or (lambda progress: None)
        self.on_message = on_message or (lambda message, verbosity: None)
        self.delete_after = options.delete_after
        if self.delete_after is None:
            seconds = get_settings().data_key_cache_ttl + 300
            self.delete_after = datetime.timedelta(seconds=seconds)
        self.started_at = timezone.now()
        self._calls_before = self.keyring.provider_calls
        self._rotating: set[str] = set()
        self._planned_active_ids: dict[str, int] = {}

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
        calls = {name: count - self._calls_before.get(name, 0) for name, count in now.items()}
        return {name: count for name, count in calls.items() if count}

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
        """Data keys of the scope kinds and scopes that the run covers."""
        kinds = {f.key_scope for target in self.targets() for f in target.fields}
        keys = queryset.using(self.alias).order_by("pk").iterator(chunk_size=KEY_CHUNK_SIZE)
        for key in keys:
            kind = key.scope.split(":", 1)[0]
            if kind in kinds and self.scope_selected(key.scope):
                yield key

    def _older_than_cutoff(self) -> datetime.datetime | None:
        if self.options.older_than is None:
            return None
        return self.started_at - self.options.older_than

    def _shared_keys_to_rotate(self) -> list[DataKey]:
        """The active global and tenant keys this run rotates, decided once, at the start.

        A scope that still has a retired key is finishing an earlier rotation
        (its values may still use the old key, which is deleted once they do
        not): it is not rotated again.
        """
        if self.options.reencrypt and not self.options.rotate:
            return []
        active = DataKey.objects.filter(state=DataKey.State.ACTIVE).exclude(
            scope__startswith="row:"
        )
        cutoff = self._older_than_cutoff()
        if cutoff is not None:
            active = active.filter(created_at__lt=cutoff)
        with_retired_keys = set(
            DataKey.objects.using(self.alias)
            .filter(state=DataKey.State.RETIRED)
            .exclude(scope__startswith="row:")
            .values_list("scope", flat=True)
        )
        keys = []
        for key in self._selected_keys(active):
            if key.scope in with_retired_keys:
                self.summary.scopes_resumed += 1
            else:
                keys.append(key)
        return keys

    # Rotation and re-encryption

    def _rotate_and_reencrypt(self) -> None:
        for key in self._shared_keys_to_rotate():
            entry, created = self.keyring.rotate(key.scope, self.alias, expected_key_id=key.pk)
            if created:
                self.summary.keys_created += 1
                self.summary.keys_retired += 1
                self.on_message(f"Rotated {key.scope}: {key.key_id} -> {entry.key_id}", 2)
        if not self.options.reencrypt:
            return
        for target in self.targets():
            self._reencrypt(target)
        self._delete_unused_retired_keys(retired_before=self.started_at)

    def _reencrypt(self, target: _Target) -> None:
        total = target.model._base_manager.using(self.alias).count()
        if total == 0:
            return
        started = last_report = time.monotonic()
        done = reported = 0
        skip_locked = self.connection.features.has_select_for_update_skip_locked
        gaps: list[tuple[Any, Any]] = []
        last_pk = None
        while True:
            count, last_pk, skipped = self._reencrypt_batch(
                target, last_pk, upto_pk=None, skip_locked=skip_locked
            )
            if count == 0:
                break
            if skipped:
                gaps.append(skipped)
            done += count
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL_SECONDS:
                last_report, reported = now, done
                self.on_progress(Progress(target.label, done, total, now - started))

        # Rows that other transactions held: wait for them this time.
        for after_pk, upto_pk in gaps:
            while True:
                count, after_pk, _skipped = self._reencrypt_batch(
                    target, after_pk, upto_pk=upto_pk, skip_locked=False
                )
                if count == 0:
                    break
                self.summary.rows_waited_for += count
        if done != reported:
            self.on_progress(
                Progress(target.label, done, max(total, done), time.monotonic() - started)
            )

    def _reencrypt_batch(
        self, target: _Target, after_pk: Any, *, upto_pk: Any, skip_locked: bool
    ) -> tuple[int, Any, tuple[Any, Any] | None]:
        """Re-encrypt one batch in one transaction.

        Returns the number of rows read, the last primary key, and the key
        range ``(after, upto]`` if the batch skipped rows that were locked.
        """
        model = target.model
        reader = _RowReader(target)
        result = _BatchResult()
        with transaction.atomic(using=self.alias):
            self._take_sqlite_write_lock()
            queryset = model._base_manager.using(self.alias).order_by("pk")
            if after_pk is not None:
                queryset = queryset.filter(pk__gt=after_pk)
            if upto_pk is not None:
                queryset = queryset.filter(pk__lte=upto_pk)
            if self.connection.features.has_select_for_update:
                queryset = queryset.select_for_update(skip_locked=skip_locked)
            rows = list(
                queryset.annotate(**_raw_columns(target.fields)).values_list(*reader.columns())[
                    : self.options.batch_size
                ]
            )
            if not rows:
                return 0, after_pk, None
            last_pk = rows[-1][0]
            skipped = None
            if skip_locked:
                in_range = model._base_manager.using(self.alias).filter(pk__lte=last_pk)
                if after_pk is not None:
                    in_range = in_range.filter(pk__gt=after_pk)
                if in_range.count() > len(rows):
                    skipped = (after_pk, last_pk)
            updates = self._process_rows(target, reader, rows, result, write=True)
            self._write(target, updates)
        result.add_to(self.summary)
        for message in result.messages:
            self.on_message(message, 3)
        self.summary.rows_scanned += len(rows)
        return len(rows), last_pk, skipped

    def _take_sqlite_write_lock(self) -> None:
        # SQLite has no row locks; taking the write lock before reading makes
        # the batch's read and write one step for other writers.
        if self.connection.vendor == "sqlite":
            table = self.connection.ops.quote_name(DataKey._meta.db_table)
            with self.connection.cursor() as cursor:
                cursor.execute(f"UPDATE {table} SET id = id WHERE 1 = 0")  # noqa: S608

    def _process_rows(
        self,
        target: _Target,
        reader: _RowReader,
        rows: list[tuple[Any, ...]],
        result: _BatchResult,
        *,
        write: bool,
    ) -> dict[EncryptedField, list[tuple[str, Any]]]:
        """Decide, decrypt and (with ``write``) re-encrypt the values of a batch of rows.

        Old values are decrypted before any new per-row key is made, so a
        failure of the key provider costs no ``GenerateDataKey`` call.
        """
        values = []
        row_scopes = set()
        for row in rows:
            for encrypted_field, stored, scope in reader.values(row):
                if stored is None:
                    continue
                if not scope:
                    result.failures.append((target.label, encrypted_field.name, row[0], NO_TENANT))
                    continue
                if not self.scope_selected(scope):
                    continue
                values.append((encrypted_field, row[0], scope, stored))
                if encrypted_field.key_scope == ROW:
                    row_scopes.add(scope)
        row_keys = self._row_keys(row_scopes)
        due_row_scopes = set()
        for scope, key in row_keys.items():
            if self._row_key_due(key):
                due_row_scopes.add(scope)
            elif key.has_retired and self._row_key_due(key, ignore_retired=True):
                result.row_scopes_resumed += 1
        result.row_keys_due += len(due_row_scopes)

        plaintexts = []
        for encrypted_field, pk, scope, stored in values:
            plaintext = self._plaintext_to_move(
                target, encrypted_field, pk, scope, stored, row_keys, due_row_scopes, result
            )
            if plaintext is not None:
                plaintexts.append((encrypted_field, pk, scope, plaintext))
        if not write:
            return {}

        for scope in due_row_scopes:
            expected = row_keys[scope].active_id
            entry, created = self.keyring.rotate(scope, self.alias, expected_key_id=expected)
            if created:
                result.keys_rotated += 1
                result.messages.append(f"Rotated {scope}: -> {entry.key_id}")

        updates: dict[EncryptedField, list[tuple[str, Any]]] = collections.defaultdict(list)
        for encrypted_field, pk, scope, plaintext in plaintexts:
            token = self.keyring.encrypt(plaintext, scope, encrypted_field.label, self.alias)
            updates[encrypted_field].append((token, pk))
        return updates

    def _row_keys(self, scopes: set[str]) -> dict[str, _RowKey]:
        keys: dict[str, _RowKey] = collections.defaultdict(_RowKey)
        if not scopes:
            return keys
        rows = (
            DataKey.objects.using(self.alias)
            .filter(scope__in=scopes)
            .values_list("id", "scope", "state", "created_at")
        )
        for numeric_id, scope, state, created_at in rows:
            if state == DataKey.State.ACTIVE:
                keys[scope].active_id = numeric_id
                keys[scope].created_at = created_at
            else:
                keys[scope].has_retired = True
        return keys

    def _row_key_due(self, key: _RowKey, *, ignore_retired: bool = False) -> bool:
        """Whether this run gives the row a new key (not while a retired one remains)."""
        if not self.options.rotate or key.active_id is None:
            return False
        if key.has_retired and not ignore_retired:
            return False
        cutoff = self._older_than_cutoff()
        return cutoff is None or (key.created_at is not None and key.created_at < cutoff)

    def _plaintext_to_move(
        self,
        target: _Target,
        encrypted_field: EncryptedField,
        pk: Any,
        scope: str,
        stored: str,
        row_keys: dict[str, _RowKey],
        due_row_scopes: set[str],
        result: _BatchResult,
    ) -> bytes | None:
        """Return the plaintext of a value that must move to its scope's active key, else None."""

        def fail(reason: str) -> None:
            result.failures.append((target.label, encrypted_field.name, pk, reason))

        if not ciphers.looks_like_token(stored):
            if not encrypted_field.legacy_plaintext:
                fail(PLAINTEXT_NOT_ALLOWED)
                return None
            try:
                value = encrypted_field.value_from_legacy_text(stored)
                plaintext = encrypted_field.plaintext_from_value(value)
            except (TypeError, ValueError, ValidationError):
                fail(PLAINTEXT_INVALID)
                return None
            result.values_encrypted_from_plaintext += 1
            return plaintext

        key_id = stored[len(ciphers.PREFIX) : ciphers.HEADER_LENGTH]
        if encrypted_field.key_scope == ROW:
            active_id = row_keys[scope].active_id
            current = (
                scope not in due_row_scopes
                and active_id is not None
                and ciphers.encode_key_id(active_id) == key_id
            )
        else:
            try:
                current = key_id == self._active_key_id(scope)
            except KeyProviderError as error:
                if error.code != "InvalidCiphertextException":
                    raise
                fail(ACTIVE_KEY_UNUSABLE)
                return None
        if current:
            return None

        result.old_key_ids.add(key_id)
        try:
            plaintext = self.keyring.decrypt(stored, scope, encrypted_field.label, self.alias)
        except ciphers.InvalidToken:
            fail(UNDECRYPTABLE)
            return None
        except DataKeyNotFound:
            fail(KEY_MISSING)
            return None
        except MasterKeyNotAllowed:
            fail(KEY_NOT_ALLOWED)
            return None
        except KeyProviderError as error:
            # The provider rejects the wrapped key itself: the DataKey row was
            # altered. Other provider errors stop the run.
            if error.code != "InvalidCiphertextException":
                raise
            fail(KEY_UNUSABLE)
            return None
        result.values_reencrypted += 1
        return plaintext

    def _active_key_id(self, scope: str) -> str | None:
        """The id of the key that a value of ``scope`` should use, or None if it will change."""
        if not self.options.dry_run:
            return self.keyring.active_entry(scope, self.alias).key_id
        if scope in self._rotating:
            return None
        active_id = self._planned_active_ids.get(scope)
        return ciphers.encode_key_id(active_id) if active_id is not None else None

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

    def _delete_unused_retired_keys(self, *, retired_before: datetime.datetime) -> None:
        """Delete the selected retired keys that no stored value names.

        Only keys retired before ``retired_before`` and longer than
        ``delete_after`` ago qualify.
        """
        assert self.delete_after is not None
        cutoff = min(retired_before, timezone.now() - self.delete_after)
        retired = DataKey.objects.filter(state=DataKey.State.RETIRED)
        recent = old = 0
        candidates = []
        for key in self._selected_keys(retired):
            if key.retired_at is not None and key.retired_at < cutoff:
                candidates.append(key.pk)
                old += 1
            else:
                recent += 1
        if recent:
            self.summary.keys_kept["retired too recently, see --delete-after"] += recent
        for start in range(0, len(candidates), KEY_CHUNK_SIZE):
            self._delete_chunk(candidates[start : start + KEY_CHUNK_SIZE])

    def _delete_chunk(self, numeric_ids: list[int]) -> None:
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
            DataKey.objects.using(self.alias).filter(pk__in=unused).delete()
        if referenced:
            self.summary.keys_kept["still used by stored values"] += len(referenced)
        self.summary.keys_deleted += len(unused)
        for numeric_id in unused:
            self.on_message(
                f"Deleted unused retired data key {ciphers.encode_key_id(numeric_id)}", 2
            )

    def _referenced_key_ids(self, keys: list[tuple[int, str]]) -> set[int]:
        """Return the ids among ``keys`` that a stored value still names."""
        by_text = {ciphers.encode_key_id(numeric_id): numeric_id for numeric_id, _ in keys}
        row_keys: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
        shared = []
        for numeric_id, scope in keys:
            if scope.startswith("row:"):
                # "row:<app>.<model>:<pk>" -> "<app>.<model>"
                model_part = scope[len("row:") :].rsplit(":", 1)[0]
                row_keys[model_part].append((numeric_id, scope))
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
        fields = [
            (model, f)
            for model, f in _all_encrypted_fields(kinds={ROW})
            if f.label.rsplit(".", 1)[0] == model_part
        ]
        for model, encrypted_field in fields:
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
        settings = get_settings()
        destination_id = self.options.master_key_id or settings.master_key_id
        destination = self.keyring.resolve_master_key_id(destination_id)
        if not settings.allows_master_key(destination):
            raise EncryptionError(
                f"Master key {destination!r} is not in KMS_FIELDS['ALLOWED_MASTER_KEY_IDS']. "
                "Add it there, in every process, before re-wrapping data keys under it."
            )
        keys = DataKey.objects.exclude(master_key_id=destination)
        cutoff = self._older_than_cutoff()
        if cutoff is not None:
            keys = keys.filter(created_at__lt=cutoff)
        pending = [key.pk for key in self._selected_keys(keys)]
        self.summary.planned["keys_to_rewrap"] = len(pending)
        if self.options.dry_run:
            self.summary.planned["kms_calls"] = len(pending) + 1
            return
        started = last_report = time.monotonic()
        reported = 0
        for done, numeric_id in enumerate(pending, start=1):
            if self.keyring.rewrap(self.alias, numeric_id, destination):
                self.summary.keys_rewrapped += 1
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL_SECONDS:
                last_report, reported = now, done
                self.on_progress(Progress("re-wrap", done, len(pending), now - started, "keys"))
        if len(pending) != reported:
            elapsed = time.monotonic() - started
            self.on_progress(Progress("re-wrap", len(pending), len(pending), elapsed, "keys"))

    # Dry run

    def _plan(self) -> None:
        """Count what a real run would change, reading every row and writing nothing.

        Values due to move are decrypted (not written) to find those that a
        real run would have to leave behind.
        """
        to_rotate = self._shared_keys_to_rotate()
        self._rotating = {key.scope for key in to_rotate}
        self.summary.planned["keys_to_rotate"] = len(to_rotate)
        if not self.options.reencrypt:
            self.summary.planned["kms_calls"] = len(to_rotate)
            return

        self._planned_active_ids = dict(
            DataKey.objects.using(self.alias)
            .filter(state=DataKey.State.ACTIVE)
            .exclude(scope__startswith="row:")
            .values_list("scope", "id")
        )
        totals = _BatchResult()
        for target in self.targets():
            self._plan_target(target, totals)
        for failure in totals.failures:
            self.summary.record_failure(*failure)
        self.summary.planned.update(
            {
                "values_to_reencrypt": totals.values_reencrypted,
                "values_to_encrypt_from_plaintext": totals.values_encrypted_from_plaintext,
                "values_left_unchanged": len(totals.failures),
                "row_keys_to_rotate": totals.row_keys_due,
                # GenerateDataKey per new key; Decrypt per old key read.
                "kms_calls": len(to_rotate) + totals.row_keys_due + len(totals.old_key_ids),
            }
        )

    def _plan_target(self, target: _Target, totals: _BatchResult) -> None:
        reader = _RowReader(target)
        total = target.model._base_manager.using(self.alias).count()
        if total == 0:
            return
        started = last_report = time.monotonic()
        done = reported = 0
        last_pk = None
        while True:
            queryset = target.model._base_manager.using(self.alias).order_by("pk")
            if last_pk is not None:
                queryset = queryset.filter(pk__gt=last_pk)
            rows = list(
                queryset.annotate(**_raw_columns(target.fields)).values_list(*reader.columns())[
                    : self.options.batch_size
                ]
            )
            if not rows:
                break
            last_pk = rows[-1][0]
            self._process_rows(target, reader, rows, totals, write=False)
            done += len(rows)
            self.summary.rows_scanned += len(rows)
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL_SECONDS:
                last_report, reported = now, done
                self.on_progress(Progress(f"{target.label} (dry run)", done, total, now - started))
        if done != reported:
            elapsed = time.monotonic() - started
            self.on_progress(Progress(f"{target.label} (dry run)", done, max(total, done), elapsed))


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
