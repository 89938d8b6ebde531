"""The keyring: the one owner of plaintext data keys.

It creates data keys (KMS ``GenerateDataKey``), unwraps stored ones (KMS
``Decrypt``) and keeps them in a bounded, thread-safe in-memory cache, so that
KMS calls grow with the number of data keys in use, not with the number of
rows. Its invariants:

- A plaintext data key exists only inside an ``AESGCM`` object of a cache
  entry. Entries cannot be pickled and their ``repr`` shows no key material.
- An entry lives at most ``DATA_KEY_CACHE_TTL`` seconds, and the cache holds at
  most ``DATA_KEY_CACHE_SIZE`` entries; the oldest entry goes first. Expired
  entries are dropped at the next cache write or sweep, so an idle process may
  hold them a little longer.
- Threads that need the same uncached key wait for one ``Decrypt`` call.
- The "active key of a scope" map only ever names committed data keys. A key
  created inside a transaction is used by that thread's transaction at once
  and shared with other threads when the transaction commits; if it rolls
  back, the key is forgotten with it.
- Every encryption is counted against the data key, and the counts reach
  ``DataKey.encryption_count`` in batches. A data key that reaches
  ``DATA_KEY_MAX_ENCRYPTIONS`` is retired and replaced before it encrypts more.
- A child process starts with an empty cache after ``fork``.
"""

from __future__ import annotations

import atexit
import collections
import functools
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import F
from django.utils import timezone

from . import ciphers
from .conf import get_settings
from .exceptions import EncryptionError, KeyProviderError
from .providers import get_provider

logger = logging.getLogger(__name__)

# At most this many encryptions are counted in memory before they are written
# to DataKey.encryption_count; a process that crashes loses at most this many
# per data key. See KMS_FIELDS['DATA_KEY_MAX_ENCRYPTIONS'] for the margin.
MAX_UNRECORDED_ENCRYPTIONS = 65536
_SWEEP_INTERVAL_SECONDS = 5.0
_MAX_ASSOCIATED_DATA_CACHE = 64
_KEY_ID_START = len(ciphers.PREFIX)
_KEY_ID_END = ciphers.HEADER_LENGTH


def encryption_context(scope: str) -> dict[str, str]:
    """Return the KMS encryption context of a data key of ``scope``."""
    return {"scope": scope}


class DataKeyNotFound(Exception):
    """No ``DataKey`` row has the id that a token names."""


class MasterKeyNotAllowed(EncryptionError):
    """A data key is wrapped by a master key that ``ALLOWED_MASTER_KEY_IDS`` does not list.

    Raised before any provider call, so a ``DataKey`` row that names another
    KMS key (for example one an attacker controls) is never unwrapped.
    """

    def __init__(self, numeric_id: int, scope: str, master_key_id: str) -> None:
        super().__init__(
            f"Data key {ciphers.encode_key_id(numeric_id)} (scope {scope!r}) is wrapped by "
            f"master key {master_key_id!r}, which KMS_FIELDS['ALLOWED_MASTER_KEY_IDS'] does "
            "not list. If that master key is yours, add it to the list; otherwise the "
            "DataKey row was altered."
        )


class _DataKeyEntry:
    """A cached, unwrapped data key. Holds no plaintext outside its ``AESGCM``."""

    __slots__ = (
        "_associated",
        "aead",
        "alias",
        "expires_at",
        "key_id",
        "lock",
        "numeric_id",
        "per_row",
        "recorded",
        "scope",
        "unrecorded",
    )

    def __init__(
        self,
        alias: str,
        numeric_id: int,
        scope: str,
        plaintext_key: bytes,
        recorded: int,
        ttl_seconds: float,
    ) -> None:
        self.alias = alias
        self.numeric_id = numeric_id
        self.key_id = ciphers.encode_key_id(numeric_id)
        self.scope = scope
        self.per_row = scope.startswith("row:")
        self.aead = AESGCM(plaintext_key)
        self.expires_at = time.monotonic() + ttl_seconds
        self.recorded = recorded
        self.unrecorded = 0
        self.lock = threading.Lock()
        self._associated: dict[tuple[str, str], bytes] = {}

    def __repr__(self) -> str:
        return f"<DataKeyEntry {self.key_id} scope={self.scope!r} database={self.alias!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("A plaintext data key cannot be pickled.")

    def associated_data(self, scope: str, label: str) -> bytes:
        cache_key = (scope, label)
        associated = self._associated.get(cache_key)
        if associated is None:
            associated = ciphers.associated_data(self.key_id, scope, label)
            if len(self._associated) < _MAX_ASSOCIATED_DATA_CACHE:
                self._associated[cache_key] = associated
        return associated


class _Loading:
    """A ``Decrypt`` call in progress that other threads wait for."""

    __slots__ = ("entry", "error", "event")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.entry: _DataKeyEntry | None = None
        self.error: BaseException | None = None


class Keyring:
    def __init__(self) -> None:
        self._reset_state()

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _DataKeyEntry] = {}
        self._active: dict[tuple[str, str], tuple[str, float]] = {}
        self._loading: dict[tuple[str, str], _Loading] = {}
        # Encryption counts of entries that left the cache before their counts
        # were written: (database alias, numeric key id) -> count.
        self._unrecorded: collections.Counter[tuple[str, int]] = collections.Counter()
        self._local = threading.local()
        self._calls: collections.Counter[str] = collections.Counter()
        self._generation = 0
        self._next_sweep = 0.0

    # Public API

    @property
    def provider_calls(self) -> dict[str, int]:
        """Key provider calls made by this process, by KMS operation name."""
        with self._lock:
            return dict(self._calls)

    def reset_provider_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def clear(self) -> None:
        """Drop every cached data key. Encryption counts not yet written are kept."""
        with self._lock:
            for entry in self._entries.values():
                self._keep_unrecorded(entry)
            self._entries.clear()
            self._active.clear()
            self._generation += 1
        self._local = threading.local()

    def encrypt(self, plaintext: bytes, scope: str, label: str, alias: str) -> str:
        """Encrypt ``plaintext`` with the active data key of ``scope`` and return its token."""
        entry = self.active_entry(scope, alias)
        if entry.per_row:
            # A per-row key only encrypts its row's values, far below any
            # limit; writing a count per row would cost a query per row.
            return ciphers.seal(
                entry.aead, entry.key_id, plaintext, entry.associated_data(scope, label)
            )
        max_encryptions = get_settings().data_key_max_encryptions
        while True:
            with entry.lock:
                exhausted = entry.recorded + entry.unrecorded >= max_encryptions
                if not exhausted:
                    entry.unrecorded += 1
                    record_now = entry.unrecorded >= _recording_batch(max_encryptions)
            if not exhausted:
                break
            entry = self._replace_exhausted(entry)
        if record_now:
            self._schedule_recording(alias)
        return ciphers.seal(
            entry.aead, entry.key_id, plaintext, entry.associated_data(scope, label)
        )

    def decrypt(self, token: str, scope: str, label: str, alias: str) -> bytes:
        """Decrypt a token bound to ``scope`` and ``label``.

        Raises ``ciphers.InvalidToken`` for a malformed or tampered token,
        ``DataKeyNotFound`` when its data key is gone, and ``KeyProviderError``
        when the provider cannot unwrap the data key.
        """
        # The fast path of every read: open_token() checks the prefix that
        # the key id was sliced after.
        key_id = token[_KEY_ID_START:_KEY_ID_END]
        entry = self._entries.get((alias, key_id))
        if entry is None or entry.expires_at <= time.monotonic():
            entry = self._load(alias, ciphers.token_key_id(token))
        associated = entry._associated.get((scope, label))
        if associated is None:
            associated = entry.associated_data(scope, label)
        return ciphers.open_token(entry.aead, token, associated)

    def active_entry(self, scope: str, alias: str) -> _DataKeyEntry:
        """Return the active data key of ``scope``, creating it on first use."""
        now = time.monotonic()
        pending = getattr(self._local, "pending", None)
        if pending:
            created = pending.get((alias, scope))
            if created is not None:
                if created.still_in_transaction():
                    entry = self._entries.get((alias, created.key_id))
                    if entry is None or entry.expires_at <= now:
                        entry = self._load(alias, created.key_id)
                    return entry
                del pending[(alias, scope)]

        active = self._active.get((alias, scope))
        if active is not None and active[1] > now:
            entry = self._entries.get((alias, active[0]))
            if entry is not None and entry.expires_at > now:
                return entry
        return self._resolve_active(scope, alias)

    def rotate(
        self, scope: str, alias: str, *, expected_key_id: int | None = None
    ) -> tuple[_DataKeyEntry, bool]:
        """Retire the active data key of ``scope`` and create its successor.

        Returns the active key and whether this call created it. With
        ``expected_key_id``, only that key is retired; if another thread or
        process rotated it first, its successor is returned instead.
        """
        from .models import DataKey

        with transaction.atomic(using=alias):
            retired = DataKey.objects.using(alias).filter(active_scope=scope)
            if expected_key_id is not None:
                retired = retired.filter(pk=expected_key_id)
            count = retired.update(
                state=DataKey.State.RETIRED, active_scope=None, retired_at=timezone.now()
            )
            self._forget_active(alias, [scope])
            if expected_key_id is not None and count == 0:
                return self._resolve_active(scope, alias), False
            return self._create(scope, alias), True

    def rewrap(self, alias: str, numeric_id: int, destination_master_key_id: str) -> bool:
        """Wrap a stored data key under another master key; return whether it changed.

        The row is locked and read again inside the transaction, so that two
        runs never both re-wrap it. The plaintext key does not change, so
        cached entries stay valid.
        """
        from .models import DataKey

        with transaction.atomic(using=alias):
            rows = list(
                DataKey.objects.using(alias)
                .select_for_update()
                .filter(pk=numeric_id)
                .values_list("scope", "master_key_id", "wrapped_key")
            )
            if not rows or rows[0][1] == destination_master_key_id:
                return False
            scope, master_key_id, wrapped_key = rows[0]
            # Re-wrapping a substituted data key under an allowed master key
            # would make it trusted.
            if not get_settings().allows_master_key(master_key_id):
                raise MasterKeyNotAllowed(numeric_id, scope, master_key_id)
            wrapped, new_master_key_id = get_provider().rewrap_data_key(
                bytes(wrapped_key),
                master_key_id,
                destination_master_key_id,
                encryption_context(scope),
            )
            self._count_call("ReEncrypt")
            DataKey.objects.using(alias).filter(pk=numeric_id).update(
                wrapped_key=wrapped, master_key_id=new_master_key_id
            )
        return True

    def resolve_master_key_id(self, master_key_id: str) -> str:
        """Return the canonical id of a master key (its ARN for AWS KMS)."""
        resolved = get_provider().resolve_master_key_id(master_key_id)
        self._count_call("DescribeKey")
        return resolved

    def forget_scopes(self, alias: str, scopes: Iterable[str]) -> None:
        """Drop the cached keys of ``scopes``, for example after their rows were deleted."""
        scopes = set(scopes)
        with self._lock:
            for cache_key in [key for key, entry in self._entries.items() if entry.scope in scopes]:
                self._keep_unrecorded(self._entries.pop(cache_key))
        self._forget_active(alias, scopes)

    def forget_key(self, alias: str, numeric_id: int) -> None:
        """Drop a data key whose row was deleted, so that nothing encrypts with it again."""
        key_id = ciphers.encode_key_id(numeric_id)
        with self._lock:
            entry = self._entries.pop((alias, key_id), None)
            if entry is not None:
                with entry.lock:
                    entry.unrecorded = 0
            for active_key in [k for k, (kid, _) in self._active.items() if kid == key_id]:
                del self._active[active_key]
        pending = getattr(self._local, "pending", None)
        if pending:
            for pending_key in [k for k, created in pending.items() if created.key_id == key_id]:
                del pending[pending_key]

    def record_counts(self, alias: str) -> None:
        """Write the encryption counts of ``alias`` to the database now (or at commit)."""
        self._schedule_recording(alias)

    # Active keys

    def _resolve_active(self, scope: str, alias: str) -> _DataKeyEntry:
        row = self._read_active_row(scope, alias, lock=False)
        if row is None:
            return self._create(scope, alias)
        entry = self._entry_for_row(alias, row)
        # The row is either committed or was created by this thread in the
        # current transaction, in which case it is in the pending map and
        # this code does not run for it.
        self._publish(alias, scope, entry.key_id)
        if self._unrecorded:
            self._schedule_recording(alias)
        return entry

    def _read_active_row(self, scope: str, alias: str, *, lock: bool) -> tuple[Any, ...] | None:
        from .models import DataKey

        queryset = DataKey.objects.using(alias).filter(active_scope=scope)
        connection = connections[alias]
        if lock and connection.vendor == "mysql" and connection.in_atomic_block:
            # Under REPEATABLE READ a plain SELECT would reuse the snapshot
            # taken before the other transaction committed; a locking read
            # sees the committed row.
            queryset = queryset.select_for_update()
        rows = list(
            queryset.values_list("id", "scope", "master_key_id", "wrapped_key", "encryption_count")[
                :1
            ]
        )
        return rows[0] if rows else None

    def _create(self, scope: str, alias: str) -> _DataKeyEntry:
        from .models import DataKey

        if len(scope.encode()) > ciphers.MAX_SCOPE_LENGTH:
            raise EncryptionError(
                f"The scope {scope[:40]!r}... is longer than {ciphers.MAX_SCOPE_LENGTH} bytes; "
                "use shorter tenant ids."
            )
        settings = get_settings()
        generated = get_provider().generate_data_key(
            settings.master_key_id, encryption_context(scope)
        )
        self._count_call("GenerateDataKey")
        if not settings.allows_master_key(generated.master_key_id):
            del generated
            raise EncryptionError(
                f"KMS_FIELDS['MASTER_KEY_ID'] {settings.master_key_id!r} names a master key "
                "that KMS_FIELDS['ALLOWED_MASTER_KEY_IDS'] does not list, so its new data key "
                f"for scope {scope!r} was discarded. Add the key's ARN to the list."
            )

        for _attempt in range(3):
            numeric_id = secrets.randbits(63)
            try:
                with transaction.atomic(using=alias):
                    DataKey.objects.using(alias).create(
                        id=numeric_id,
                        scope=scope,
                        active_scope=scope,
                        state=DataKey.State.ACTIVE,
                        master_key_id=generated.master_key_id,
                        wrapped_key=generated.wrapped,
                    )
            except IntegrityError:
                # Another thread or process created the scope's key first, or
                # (once in 2**63) the random id is taken.
                row = self._read_active_row(scope, alias, lock=True)
                if row is not None:
                    return self._entry_for_row(alias, row)
                continue
            break
        else:
            raise EncryptionError(f"Could not store a new data key for scope {scope!r}.")

        entry = _DataKeyEntry(
            alias, numeric_id, scope, generated.plaintext, 0, settings.data_key_cache_ttl
        )
        del generated
        self._store(entry)
        self._publish_after_commit(alias, scope, entry)
        return entry

    def _publish_after_commit(self, alias: str, scope: str, entry: _DataKeyEntry) -> None:
        if not connections[alias].in_atomic_block:
            self._publish(alias, scope, entry.key_id)
            return

        def publish() -> None:
            pending_map = getattr(self._local, "pending", None)
            if pending_map and pending_map.get((alias, scope)) is created:
                del pending_map[(alias, scope)]
            # A rollback to a manual savepoint (transaction.savepoint(), named
            # savepoint_create() since Django 6.1) keeps on_commit callbacks,
            # so check that the key was really committed.
            if _data_key_exists(alias, entry.numeric_id):
                self._publish(alias, scope, entry.key_id)

        created = _CreatedInTransaction(alias, entry.numeric_id, entry.key_id, publish)
        if not hasattr(self._local, "pending"):
            self._local.pending = {}
        self._local.pending[(alias, scope)] = created
        transaction.on_commit(publish, using=alias)

    def _publish(self, alias: str, scope: str, key_id: str) -> None:
        ttl = get_settings().data_key_cache_ttl
        with self._lock:
            self._active[(alias, scope)] = (key_id, time.monotonic() + ttl)

    def _forget_active(self, alias: str, scopes: Iterable[str]) -> None:
        scopes = list(scopes)
        with self._lock:
            for scope in scopes:
                self._active.pop((alias, scope), None)
        pending = getattr(self._local, "pending", None)
        if pending:
            for scope in scopes:
                pending.pop((alias, scope), None)

    def _replace_exhausted(self, entry: _DataKeyEntry) -> _DataKeyEntry:
        logger.info(
            "Data key %s of scope %r reached DATA_KEY_MAX_ENCRYPTIONS; rotating it.",
            entry.key_id,
            entry.scope,
        )
        self._schedule_recording(entry.alias)
        successor, _created = self.rotate(
            entry.scope, entry.alias, expected_key_id=entry.numeric_id
        )
        return successor

    # Unwrapping

    def _entry_for_row(self, alias: str, row: tuple[Any, ...]) -> _DataKeyEntry:
        key_id = ciphers.encode_key_id(row[0])
        entry = self._entries.get((alias, key_id))
        if entry is not None and entry.expires_at > time.monotonic():
            return entry
        return self._load(alias, key_id, row=row)

    def _load(self, alias: str, key_id: str, row: tuple[Any, ...] | None = None) -> _DataKeyEntry:
        cache_key = (alias, key_id)
        with self._lock:
            entry = self._entries.get(cache_key)
            if entry is not None and entry.expires_at > time.monotonic():
                return entry
            loading = self._loading.get(cache_key)
            owner = loading is None
            if loading is None:
                loading = self._loading[cache_key] = _Loading()

        if not owner:
            loading.event.wait()
            if loading.entry is not None:
                return loading.entry
            error = loading.error
            if isinstance(error, KeyProviderError):
                raise KeyProviderError(str(error), code=error.code) from error
            # The other thread's transaction may not see a key that this one
            # sees (or the reverse), so look for it here too.
            return self._unwrap(alias, key_id, row)

        try:
            loading.entry = self._unwrap(alias, key_id, row)
            return loading.entry
        except BaseException as error:
            loading.error = error
            raise
        finally:
            with self._lock:
                self._loading.pop(cache_key, None)
            loading.event.set()

    def _unwrap(self, alias: str, key_id: str, row: tuple[Any, ...] | None) -> _DataKeyEntry:
        from .models import DataKey

        if row is None:
            rows = list(
                DataKey.objects.using(alias)
                .filter(pk=ciphers.decode_key_id(key_id))
                .values_list("id", "scope", "master_key_id", "wrapped_key", "encryption_count")[:1]
            )
            if not rows:
                raise DataKeyNotFound(key_id)
            row = rows[0]
        numeric_id, scope, master_key_id, wrapped_key, count = row
        if not get_settings().allows_master_key(master_key_id):
            raise MasterKeyNotAllowed(numeric_id, scope, master_key_id)

        generation = self._generation
        plaintext = get_provider().decrypt_data_key(
            bytes(wrapped_key), master_key_id, encryption_context(scope)
        )
        self._count_call("Decrypt")
        entry = _DataKeyEntry(
            alias, numeric_id, scope, plaintext, count, get_settings().data_key_cache_ttl
        )
        del plaintext
        if generation == self._generation:
            self._store(entry)
        return entry

    # Cache bookkeeping

    def _store(self, entry: _DataKeyEntry) -> None:
        size = get_settings().data_key_cache_size
        cache_key = (entry.alias, entry.key_id)
        with self._lock:
            previous = self._entries.pop(cache_key, None)
            if previous is not None:
                self._keep_unrecorded(previous)
            self._entries[cache_key] = entry
            self._sweep_locked(force=len(self._entries) > size)
            while len(self._entries) > size:
                oldest = next(iter(self._entries))
                self._keep_unrecorded(self._entries.pop(oldest))

    def _sweep_locked(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL_SECONDS
        for cache_key in [key for key, entry in self._entries.items() if entry.expires_at <= now]:
            self._keep_unrecorded(self._entries.pop(cache_key))
        for active_key in [key for key, (_, expires) in self._active.items() if expires <= now]:
            del self._active[active_key]

    def _keep_unrecorded(self, entry: _DataKeyEntry) -> None:
        # Called with self._lock held.
        with entry.lock:
            count, entry.unrecorded = entry.unrecorded, 0
        if count:
            self._unrecorded[(entry.alias, entry.numeric_id)] += count

    def _count_call(self, operation: str) -> None:
        with self._lock:
            self._calls[operation] += 1

    # Encryption counts

    def _schedule_recording(self, alias: str) -> None:
        connection = connections[alias]
        if not connection.in_atomic_block:
            self._write_counts(alias)
            return
        # Inside a transaction the UPDATE waits for the commit, so that it
        # neither holds a row lock for the rest of the transaction nor
        # vanishes with a rollback. One callback per thread and database.
        callbacks = self._local.__dict__.setdefault("record_callbacks", {})
        callback = callbacks.get(alias)
        if callback is not None and _on_commit_pending(alias, callback):
            return
        callback = functools.partial(self._write_counts, alias)
        callbacks[alias] = callback
        transaction.on_commit(callback, using=alias)

    def _write_counts(self, alias: str) -> None:
        from .models import DataKey

        with self._lock:
            counts = {
                numeric_id: count
                for (count_alias, numeric_id), count in self._unrecorded.items()
                if count_alias == alias
            }
            for numeric_id in counts:
                del self._unrecorded[(alias, numeric_id)]
            entries = [entry for entry in self._entries.values() if entry.alias == alias]
        for entry in entries:
            with entry.lock:
                count, entry.unrecorded = entry.unrecorded, 0
            if count:
                counts[entry.numeric_id] = counts.get(entry.numeric_id, 0) + count

        by_id = {entry.numeric_id: entry for entry in entries}
        for numeric_id, count in counts.items():
            try:
                manager = DataKey.objects.using(alias)
                manager.filter(pk=numeric_id).update(encryption_count=F("encryption_count") + count)
                total = manager.filter(pk=numeric_id).values_list("encryption_count", flat=True)
                recorded = next(iter(total), None)
            except DatabaseError:
                logger.warning(
                    "Could not record %d encryptions of data key %s; retrying later.",
                    count,
                    ciphers.encode_key_id(numeric_id),
                    exc_info=True,
                )
                with self._lock:
                    self._unrecorded[(alias, numeric_id)] += count
                continue
            cached = by_id.get(numeric_id)
            if cached is not None and recorded is not None:
                with cached.lock:
                    cached.recorded = recorded

    # Fork safety

    def _after_fork_in_child(self) -> None:
        self._reset_state()


class _RollbackWatcher:
    """Counts ``ROLLBACK TO SAVEPOINT`` statements run on one connection.

    Installed first in ``connection.execute_wrappers``, so that Django's
    ``execute_wrapper()`` context manager, which pops the last wrapper, never
    removes it.
    """

    __slots__ = ("rollbacks",)

    def __init__(self) -> None:
        self.rollbacks = 0

    def __call__(self, execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
        if isinstance(sql, str) and sql.lstrip()[:8].upper() == "ROLLBACK":
            self.rollbacks += 1
        return execute(sql, params, many, context)

    @classmethod
    def on(cls, alias: str) -> _RollbackWatcher:
        wrappers = connections[alias].execute_wrappers
        for wrapper in wrappers:
            if isinstance(wrapper, cls):
                return wrapper
        watcher = cls()
        wrappers.insert(0, watcher)
        return watcher


class _CreatedInTransaction:
    """A data key this thread created in its open transaction, not yet committed."""

    __slots__ = ("alias", "callback", "checked_rollbacks", "key_id", "numeric_id", "watcher")

    def __init__(self, alias: str, numeric_id: int, key_id: str, callback: object) -> None:
        self.alias = alias
        self.numeric_id = numeric_id
        self.key_id = key_id
        self.callback = callback
        self.watcher = _RollbackWatcher.on(alias)
        self.checked_rollbacks = self.watcher.rollbacks

    def still_in_transaction(self) -> bool:
        """Return whether the key's row is still part of the open transaction."""
        # Rolling back the transaction, or a savepoint opened by atomic(),
        # drops the on_commit callback registered with the key.
        if not _on_commit_pending(self.alias, self.callback):
            return False
        # Rolling back to a manual savepoint keeps that callback, so after any
        # rollback statement, look for the row itself.
        rollbacks = self.watcher.rollbacks
        if rollbacks != self.checked_rollbacks:
            if not _data_key_exists(self.alias, self.numeric_id):
                return False
            self.checked_rollbacks = self.watcher.rollbacks
        return True


def _data_key_exists(alias: str, numeric_id: int) -> bool:
    from .models import DataKey

    return DataKey.objects.using(alias).filter(pk=numeric_id).exists()


def _on_commit_pending(alias: str, callback: object) -> bool:
    """Return whether ``callback`` still waits for the commit of the current transaction.

    Django drops the callbacks of a savepoint or transaction that rolls back,
    so this tells whether the work registered with the callback is still part
    of the open transaction.
    """
    connection = connections[alias]
    if not connection.in_atomic_block:
        return False
    return any(item[1] is callback for item in connection.run_on_commit)


def _recording_batch(max_encryptions: int) -> int:
    return max(1, min(MAX_UNRECORDED_ENCRYPTIONS, max_encryptions // 1024))


keyring = Keyring()
os.register_at_fork(after_in_child=keyring._after_fork_in_child)


@atexit.register
def _record_counts_at_exit() -> None:
    """Write encryption counts that are still in memory when the process exits normally."""
    aliases = {alias for alias, _ in keyring._unrecorded} | {
        entry.alias for entry in keyring._entries.values() if entry.unrecorded
    }
    for alias in aliases:
        try:
            if not connections[alias].in_atomic_block:
                keyring._write_counts(alias)
        except Exception:
            # The interpreter is shutting down: report and carry on.
            logger.warning("Could not record encryption counts at exit.", exc_info=True)


def get_keyring() -> Keyring:
    """Return the process-wide keyring."""
    return keyring
