"""A value copied elsewhere fails to decrypt instead of leaking; tampering is detected."""

import logging
import string

import pytest
from django.db import connection

from django_kms_fields.exceptions import DecryptionError
from django_kms_fields.models import DataKey
from tests.testapp.models import (
    Note,
    Organisation,
    Person,
    RenamedPerson,
    RenamedWithoutPin,
    RowRecord,
    TenantRecord,
    Visit,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("kms")]

SECRET = "PLAINTEXT-CANARY-4242"


@pytest.fixture
def orgs():
    return Organisation.objects.create(name="Acme"), Organisation.objects.create(name="Globex")


def assert_clean_error(excinfo, model, field, pk):
    message = str(excinfo.value)
    assert f"{model}.{field}" in message
    assert f"pk={pk!r}" in message
    assert SECRET not in message
    assert "data key" in message


def test_value_copied_to_another_tenant_fails(orgs, stored, write_raw):
    victim = TenantRecord.objects.create(organisation=orgs[0], secret=SECRET)
    attacker = TenantRecord.objects.create(organisation=orgs[1], secret="mine")
    write_raw(attacker, "secret", stored(victim, "secret"))

    record = TenantRecord.objects.get(pk=attacker.pk)
    with pytest.raises(DecryptionError) as excinfo:
        record.secret
    assert_clean_error(excinfo, "testapp.TenantRecord", "secret", attacker.pk)
    assert f"tenant:{orgs[1].pk}" in str(excinfo.value)

    with pytest.raises(DecryptionError) as excinfo:
        list(TenantRecord.objects.filter(pk=attacker.pk).values_list("secret", flat=True))
    assert_clean_error(excinfo, "testapp.TenantRecord", "secret", attacker.pk)

    # The victim's row is untouched.
    assert TenantRecord.objects.get(pk=victim.pk).secret == SECRET


def test_moved_tenant_value_is_not_laundered_by_save(orgs, stored, write_raw):
    victim = TenantRecord.objects.create(organisation=orgs[0], secret=SECRET)
    attacker = TenantRecord.objects.create(organisation=orgs[1], secret="mine", label="a")
    copied = stored(victim, "secret")
    write_raw(attacker, "secret", copied)

    # Saving the row without reading the field writes the token back as it is:
    # it stays undecryptable under the attacker's tenant.
    record = TenantRecord.objects.get(pk=attacker.pk)
    record.label = "b"
    record.save()
    assert stored(attacker, "secret") == copied
    with pytest.raises(DecryptionError):
        TenantRecord.objects.get(pk=attacker.pk).secret

    # Moving the row to the victim's tenant does not decrypt it either.
    record = TenantRecord.objects.get(pk=attacker.pk)
    record.organisation = orgs[0]
    with pytest.raises(DecryptionError):
        record.save()


def test_value_copied_to_another_row_fails(stored, write_raw):
    victim = RowRecord.objects.create(secret=SECRET)
    attacker = RowRecord.objects.create(secret="mine")
    write_raw(attacker, "secret", stored(victim, "secret"))

    with pytest.raises(DecryptionError) as excinfo:
        RowRecord.objects.get(pk=attacker.pk).secret
    assert_clean_error(excinfo, "testapp.RowRecord", "secret", attacker.pk)


def test_value_copied_to_another_field_fails(stored, write_raw):
    note = Note.objects.create(text=SECRET, short="short")
    write_raw(note, "short", stored(note, "text"))

    with pytest.raises(DecryptionError) as excinfo:
        Note.objects.get(pk=note.pk).short
    assert_clean_error(excinfo, "testapp.Note", "short", note.pk)


def test_value_copied_to_another_model_fails(orgs, stored, write_raw):
    record = TenantRecord.objects.create(organisation=orgs[0], secret=SECRET)
    visit = Visit.objects.create(record=record, note="n")
    write_raw(visit, "note", stored(record, "secret"))

    with pytest.raises(DecryptionError):
        Visit.objects.get(pk=visit.pk).note


def flip_low_bit(character):
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    return alphabet[alphabet.index(character) ^ 1]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda token: token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB"),
        lambda token: token[:-10],
        lambda token: token[:20],
        lambda token: token[:30] + "!" + token[31:],
        lambda token: "",
        lambda token: SECRET,
        lambda token: "kf1." + "A" * 80,
        # Edits that decode to the same bytes: padding, and unused low bits of
        # the last base64 character of the payload and of the key id.
        lambda token: token + "==",
        lambda token: token[:-1] + flip_low_bit(token[-1]),
        lambda token: token[:14] + flip_low_bit(token[14]) + token[15:],
    ],
)
def test_tampered_value_fails(tamper, stored, write_raw):
    note = Note.objects.create(text=SECRET)
    write_raw(note, "text", tamper(stored(note, "text")))

    with pytest.raises(DecryptionError) as excinfo:
        list(Note.objects.values_list("text", flat=True))
    assert SECRET not in str(excinfo.value)

    with pytest.raises(DecryptionError) as excinfo:
        Note.objects.get(pk=note.pk).text
    assert SECRET not in str(excinfo.value)


def test_bad_row_does_not_hide_good_rows_of_instances(stored, write_raw):
    good = Note.objects.create(text="good", title="good")
    bad = Note.objects.create(text=SECRET, title="bad")
    write_raw(bad, "text", stored(bad, "text")[:-4])

    notes = {note.title: note for note in Note.objects.all()}
    assert notes["good"].text == "good"
    with pytest.raises(DecryptionError):
        notes["bad"].text
    assert good.pk


def test_deleted_data_key_fails(orgs):
    record = TenantRecord.objects.create(organisation=orgs[0], secret=SECRET)
    DataKey.objects.filter(scope=f"tenant:{orgs[0].pk}").delete()
    from django_kms_fields import clear_data_key_cache

    clear_data_key_cache()
    with pytest.raises(DecryptionError) as excinfo:
        TenantRecord.objects.get(pk=record.pk).secret
    assert_clean_error(excinfo, "testapp.TenantRecord", "secret", record.pk)
    assert "no longer exists" in str(excinfo.value)


def test_tampered_data_key_fails(orgs):
    from django_kms_fields import clear_data_key_cache

    record = TenantRecord.objects.create(organisation=orgs[0], secret=SECRET)
    other = TenantRecord.objects.create(organisation=orgs[1], secret="other")
    # Point tenant 1's data key row at tenant 0's scope: the wrapped key no
    # longer matches its encryption context.
    key = DataKey.objects.get(scope=f"tenant:{orgs[1].pk}")
    DataKey.objects.filter(scope=f"tenant:{orgs[0].pk}").delete()
    DataKey.objects.filter(pk=key.pk).update(
        scope=f"tenant:{orgs[0].pk}", active_scope=f"tenant:{orgs[0].pk}"
    )
    clear_data_key_cache()
    with pytest.raises(DecryptionError):
        TenantRecord.objects.get(pk=record.pk).secret
    with pytest.raises(DecryptionError):
        TenantRecord.objects.get(pk=other.pk).secret


def test_rename_keeps_values_readable_with_pinned_label():
    person = Person.objects.create(nickname=SECRET)

    assert RenamedPerson.objects.get(pk=person.pk).alias == SECRET
    with pytest.raises(DecryptionError):
        RenamedWithoutPin.objects.get(pk=person.pk).alias

    renamed = RenamedPerson.objects.get(pk=person.pk)
    renamed.alias = "written after the rename"
    renamed.save()
    assert Person.objects.get(pk=person.pk).nickname == "written after the rename"


def test_row_data_keys_are_deleted_with_their_rows(orgs):
    rows = [RowRecord.objects.create(secret=f"r{i}", organisation=orgs[i % 2]) for i in range(4)]
    scopes = {f"row:testapp.rowrecord:{row.pk}" for row in rows}
    assert (
        set(DataKey.objects.filter(scope__startswith="row:").values_list("scope", flat=True))
        == scopes
    )

    rows[0].delete()
    assert not DataKey.objects.filter(scope=f"row:testapp.rowrecord:{rows[0].pk}").exists()

    RowRecord.objects.filter(pk=rows[1].pk).delete()
    assert not DataKey.objects.filter(scope=f"row:testapp.rowrecord:{rows[1].pk}").exists()

    # Cascade: deleting the organisation deletes its rows and their keys.
    orgs[1].delete()
    assert not DataKey.objects.filter(scope=f"row:testapp.rowrecord:{rows[3].pk}").exists()
    assert DataKey.objects.filter(scope__startswith="row:").count() == 1
    assert RowRecord.objects.get().secret == "r2"


def test_no_plaintext_in_logs(caplog, orgs):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    connection.force_debug_cursor = True
    try:
        record = TenantRecord.objects.create(
            organisation=orgs[0], secret=SECRET, details={"s": SECRET}
        )
        TenantRecord.objects.bulk_update([record], ["secret"])
        Note.objects.create(text=SECRET)
        Note.objects.update(text=SECRET)
        list(TenantRecord.objects.values_list("secret", flat=True))
    finally:
        connection.force_debug_cursor = False
    sql_logged = [r for r in caplog.records if r.name == "django.db.backends"]
    assert sql_logged, "the SQL log was not captured"
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in str(getattr(record, "params", ""))


def test_value_whose_tenant_was_cleared_fails(orgs, write_raw):
    record = TenantRecord.objects.create(organisation=orgs[0], secret=SECRET)
    write_raw(record, "organisation", None)

    with pytest.raises(DecryptionError) as excinfo:
        TenantRecord.objects.get(pk=record.pk).secret
    assert "scope 'tenant:'" in str(excinfo.value)
    with pytest.raises(DecryptionError):
        list(TenantRecord.objects.values_list("secret", flat=True))
