"""The keyring: KMS calls per data key, the cache, threads, fork and usage limits."""

import os
import pickle
import threading
import time

import pytest
from django.db import connections, transaction

from django_kms_fields import clear_data_key_cache
from django_kms_fields.keyring import get_keyring
from django_kms_fields.models import DataKey
from django_kms_fields.providers import get_provider
from tests.testapp.models import Note, Organisation, RowRecord, TenantRecord

pytestmark = pytest.mark.usefixtures("kms")

# Django 6.1 renamed transaction.savepoint() to savepoint_create() and
# deprecated the old name.
create_savepoint = getattr(transaction, "savepoint_create", transaction.savepoint)


def make_tenants(count, rows_per_tenant):
    organisations = Organisation.objects.bulk_create(
        [Organisation(name=f"org {i}") for i in range(count)]
    )
    TenantRecord.objects.bulk_create(
        [
            TenantRecord(organisation=org, secret=f"{org.name} row {n}", details={"n": n})
            for org in organisations
            for n in range(rows_per_tenant)
        ]
    )
    return organisations


@pytest.mark.django_db
def test_one_generate_data_key_per_new_scope(kms):
    make_tenants(5, 20)
    assert kms.calls == {"GenerateDataKey": 5}
    Note.objects.bulk_create([Note(text="x") for _ in range(30)])
    assert kms.calls == {"GenerateDataKey": 6}


@pytest.mark.django_db
def test_cold_cache_load_makes_one_decrypt_per_tenant(kms):
    make_tenants(4, 25)
    clear_data_key_cache()
    get_keyring().reset_provider_calls()

    records = list(TenantRecord.objects.all())
    assert [r.secret for r in records]
    assert kms.calls == {"Decrypt": 4}

    # Warm cache: no more calls, whatever the number of rows or queries.
    list(TenantRecord.objects.values_list("secret", "details"))
    assert [r.secret for r in TenantRecord.objects.all()]
    assert kms.calls == {"Decrypt": 4}


@pytest.mark.django_db
def test_loading_without_reading_makes_no_calls(kms):
    make_tenants(3, 5)
    clear_data_key_cache()
    get_keyring().reset_provider_calls()

    assert len([r.label for r in TenantRecord.objects.all()]) == 15
    assert kms.calls == {}


@pytest.mark.django_db
def test_per_row_scope_costs_one_call_per_row(kms):
    RowRecord.objects.bulk_create([RowRecord(secret=f"r{i}", national_id=str(i)) for i in range(6)])
    # One key per row, shared by the row's fields.
    assert kms.calls == {"GenerateDataKey": 6}
    clear_data_key_cache()
    get_keyring().reset_provider_calls()
    assert len([(r.secret, r.national_id) for r in RowRecord.objects.all()]) == 6
    assert kms.calls == {"Decrypt": 6}


@pytest.mark.django_db
def test_exactly_one_active_key_per_scope(kms):
    make_tenants(3, 4)
    Note.objects.create(text="g")
    scopes = list(DataKey.objects.filter(state="active").values_list("scope", flat=True))
    assert len(scopes) == len(set(scopes)) == 4


@pytest.mark.django_db
def test_stored_data_key(kms):
    Note.objects.create(text="x")
    key = DataKey.objects.get()
    assert key.scope == "global"
    assert key.state == DataKey.State.ACTIVE
    assert key.active_scope == "global"
    assert type(key.wrapped_key) is bytes
    assert key.created_at is not None
    # For AWS, the full key ARN that KMS returned, not the alias in the settings.
    assert key.master_key_id == kms.master_key_id
    assert len(key.key_id) == 11


@pytest.mark.django_db
def test_cache_ttl(kms, settings):
    settings.KMS_FIELDS = {**settings.KMS_FIELDS, "DATA_KEY_CACHE_TTL": 0.2}
    note = Note.objects.create(text="x")
    get_keyring().reset_provider_calls()

    assert Note.objects.get(pk=note.pk).text == "x"
    assert kms.calls == {}
    time.sleep(0.3)
    assert Note.objects.get(pk=note.pk).text == "x"
    assert kms.calls == {"Decrypt": 1}


@pytest.mark.django_db
def test_cache_size(kms, settings):
    settings.KMS_FIELDS = {**settings.KMS_FIELDS, "DATA_KEY_CACHE_SIZE": 2}
    make_tenants(3, 1)
    keyring = get_keyring()
    assert len(keyring._entries) <= 2
    keyring.reset_provider_calls()

    assert len([r.secret for r in TenantRecord.objects.order_by("pk")]) == 3
    assert len(keyring._entries) <= 2
    assert kms.calls["Decrypt"] >= 1


@pytest.mark.django_db
def test_clear_data_key_cache(kms):
    note = Note.objects.create(text="x")
    assert get_keyring()._entries
    clear_data_key_cache()
    assert not get_keyring()._entries
    get_keyring().reset_provider_calls()
    assert Note.objects.get(pk=note.pk).text == "x"
    assert kms.calls == {"Decrypt": 1}


def test_data_keys_are_not_shown_or_pickled(kms, django_db_blocker):
    with django_db_blocker.unblock(), transaction.atomic():
        Note.objects.create(text="x")
        entry = next(iter(get_keyring()._entries.values()))
        transaction.set_rollback(True)
    assert "scope='global'" in repr(entry)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(entry)
    generated = get_provider().generate_data_key(kms.master_key_id, {"scope": "x"})
    assert generated.plaintext.hex() not in repr(generated)
    assert repr(generated.plaintext) not in repr(generated)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(generated)


@pytest.mark.django_db
def test_sealed_instances_pickle_without_keys(kms):
    note = Note.objects.create(text="pickled")
    loaded = Note.objects.get(pk=note.pk)
    restored = pickle.loads(pickle.dumps(loaded))
    assert restored.text == "pickled"


@pytest.mark.django_db
def test_rolled_back_key_is_forgotten(kms):
    organisation = Organisation.objects.create(name="o")
    with transaction.atomic():
        sid = create_savepoint()
        TenantRecord.objects.create(organisation=organisation, secret="rolled back")
        assert DataKey.objects.count() == 1
        transaction.savepoint_rollback(sid)
        assert DataKey.objects.count() == 0
        # The key that vanished with the savepoint must not be used again.
        record = TenantRecord.objects.create(organisation=organisation, secret="kept")
    assert DataKey.objects.count() == 1
    clear_data_key_cache()
    assert TenantRecord.objects.get(pk=record.pk).secret == "kept"


@pytest.mark.django_db(transaction=True)
def test_key_created_in_a_transaction_is_shared_after_commit(kms):
    organisation = Organisation.objects.create(name="o")
    keyring = get_keyring()
    scope = f"tenant:{organisation.pk}"
    with transaction.atomic():
        TenantRecord.objects.create(organisation=organisation, secret="a")
        assert ("default", scope) not in keyring._active
    assert ("default", scope) in keyring._active


@pytest.mark.django_db(transaction=True)
def test_rollback_of_transaction_does_not_poison_cache(kms):
    organisation = Organisation.objects.create(name="o")
    with pytest.raises(RuntimeError), transaction.atomic():
        TenantRecord.objects.create(organisation=organisation, secret="lost")
        raise RuntimeError
    assert DataKey.objects.count() == 0
    record = TenantRecord.objects.create(organisation=organisation, secret="kept")
    clear_data_key_cache()
    assert TenantRecord.objects.get(pk=record.pk).secret == "kept"


@pytest.mark.django_db(transaction=True)
def test_concurrent_loads_share_one_decrypt(kms, monkeypatch):
    note = Note.objects.create(text="shared")
    clear_data_key_cache()
    get_keyring().reset_provider_calls()

    provider = get_provider()
    original = provider.decrypt_data_key

    def slow_decrypt(*args, **kwargs):
        time.sleep(0.2)
        return original(*args, **kwargs)

    monkeypatch.setattr(provider, "decrypt_data_key", slow_decrypt)
    barrier = threading.Barrier(8)
    results, errors = [], []

    def read():
        try:
            barrier.wait()
            results.append(Note.objects.get(pk=note.pk).text)
        except Exception as error:
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == ["shared"] * 8
    assert kms.calls == {"Decrypt": 1}


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_writes_create_one_key(kms):
    organisation = Organisation.objects.create(name="new tenant")
    barrier = threading.Barrier(6)
    errors = []

    def write(i):
        try:
            barrier.wait()
            TenantRecord.objects.create(organisation=organisation, secret=f"w{i}")
        except Exception as error:
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert DataKey.objects.filter(scope=f"tenant:{organisation.pk}").count() == 1
    clear_data_key_cache()
    assert sorted(r.secret for r in TenantRecord.objects.all()) == [f"w{i}" for i in range(6)]


@pytest.mark.django_db
def test_child_process_starts_with_empty_cache(kms):
    Note.objects.create(text="x")
    assert get_keyring()._entries
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read)
        os.write(write, str(len(get_keyring()._entries)).encode())
        os._exit(0)
    os.close(write)
    child_count = os.read(read, 16)
    os.waitpid(pid, 0)
    assert child_count == b"0"
    assert get_keyring()._entries


@pytest.mark.django_db(transaction=True)
def test_data_key_rotates_at_max_encryptions(kms, settings):
    settings.KMS_FIELDS = {**settings.KMS_FIELDS, "DATA_KEY_MAX_ENCRYPTIONS": 10}
    notes = [Note.objects.create(text=f"n{i}") for i in range(25)]

    keys = DataKey.objects.filter(scope="global").order_by("created_at")
    assert keys.count() == 3
    assert [key.state for key in keys] == ["retired", "retired", "active"]
    assert [key.encryption_count for key in keys] == [10, 10, 5]
    clear_data_key_cache()
    assert [Note.objects.get(pk=n.pk).text for n in notes] == [f"n{i}" for i in range(25)]


@pytest.mark.django_db(transaction=True)
def test_rotation_at_max_encryptions_inside_a_transaction(kms, settings):
    settings.KMS_FIELDS = {**settings.KMS_FIELDS, "DATA_KEY_MAX_ENCRYPTIONS": 10}
    with transaction.atomic():
        Note.objects.bulk_create([Note(text=f"n{i}") for i in range(25)])
    keys = DataKey.objects.filter(scope="global").order_by("created_at")
    assert [key.encryption_count for key in keys] == [10, 10, 5]
    clear_data_key_cache()
    assert sorted(Note.objects.values_list("text", flat=True)) == sorted(f"n{i}" for i in range(25))


@pytest.mark.django_db(transaction=True)
def test_counts_of_rolled_back_encryptions_are_kept(kms, settings):
    settings.KMS_FIELDS = {**settings.KMS_FIELDS, "DATA_KEY_MAX_ENCRYPTIONS": 1000}
    Note.objects.create(text="first")
    with transaction.atomic():
        Note.objects.create(text="second")
        sid = create_savepoint()
        Note.objects.bulk_create([Note(text="x") for _ in range(5)])
        transaction.savepoint_rollback(sid)
    key = DataKey.objects.get()
    # The rolled-back encryptions still count: their nonces were used.
    assert key.encryption_count == 7

    with pytest.raises(RuntimeError), transaction.atomic():
        Note.objects.create(text="lost")
        raise RuntimeError
    get_keyring().record_counts("default")
    key.refresh_from_db()
    assert key.encryption_count == 8


@pytest.mark.django_db
def test_manual_savepoint_rollback_of_new_key(kms):
    organisation = Organisation.objects.create(name="o")
    keyring = get_keyring()
    with transaction.atomic():
        sid = create_savepoint()
        TenantRecord.objects.create(organisation=organisation, secret="gone")
        transaction.savepoint_rollback(sid)
        record = TenantRecord.objects.create(organisation=organisation, secret="kept")
        key = DataKey.objects.get()
        assert key.scope == f"tenant:{organisation.pk}"
    clear_data_key_cache()
    assert TenantRecord.objects.get(pk=record.pk).secret == "kept"
    assert ("default", f"tenant:{organisation.pk}") not in keyring._active


@pytest.mark.django_db(transaction=True)
def test_counts_are_written_at_exit(kms, settings):
    from django_kms_fields.keyring import _record_counts_at_exit

    Note.objects.bulk_create([Note(text="x") for _ in range(3)])
    assert DataKey.objects.get().encryption_count == 0
    _record_counts_at_exit()
    assert DataKey.objects.get().encryption_count == 3
