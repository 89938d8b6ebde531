"""Rows copied from one database to another, whose data keys differ."""

import pytest
from django.db import connections

from django_kms_fields import clear_data_key_cache
from tests.testapp.models import Note, Organisation, RowRecord, TenantRecord

pytestmark = [
    pytest.mark.django_db(databases=["default", "other"]),
    pytest.mark.usefixtures("kms"),
]


def stored_token(model, pk, field, using):
    table = model._meta.db_table
    column = model._meta.get_field(field).column
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def test_save_to_other_database_encrypts_again():
    organisation = Organisation.objects.create(name="Clinic")
    Organisation.objects.using("other").create(pk=organisation.pk, name="Clinic")
    note = Note.objects.create(text="global value", number=0)
    record = TenantRecord.objects.create(organisation=organisation, secret="tenant value")
    row = RowRecord.objects.create(secret="row value")

    # Loaded and saved without reading the encrypted fields.
    for model, pk in ((Note, note.pk), (TenantRecord, record.pk), (RowRecord, row.pk)):
        model.objects.get(pk=pk).save(using="other", force_insert=True)

    clear_data_key_cache()
    assert Note.objects.using("other").get(pk=note.pk).text == "global value"
    assert Note.objects.using("other").get(pk=note.pk).number == 0
    assert TenantRecord.objects.using("other").get(pk=record.pk).secret == "tenant value"
    assert RowRecord.objects.using("other").get(pk=row.pk).secret == "row value"

    # Encrypted again: the token names a data key of the other database.
    for model, pk, field in ((Note, note.pk, "text"), (TenantRecord, record.pk, "secret")):
        assert stored_token(model, pk, field, "other") != stored_token(model, pk, field, "default")


def test_bulk_create_to_other_database():
    Note.objects.bulk_create([Note(text=f"value {n}") for n in range(3)])
    loaded = list(Note.objects.order_by("pk"))

    Note.objects.using("other").bulk_create(loaded)

    clear_data_key_cache()
    copies = Note.objects.using("other").order_by("pk")
    assert [note.text for note in copies] == ["value 0", "value 1", "value 2"]


def test_save_in_same_database_keeps_token():
    note = Note.objects.create(text="unchanged")
    before = stored_token(Note, note.pk, "text", "default")

    Note.objects.get(pk=note.pk).save()

    assert stored_token(Note, note.pk, "text", "default") == before


def test_bulk_update_to_other_database():
    notes = Note.objects.bulk_create([Note(text=f"value {n}") for n in range(3)])
    Note.objects.using("other").bulk_create([Note(pk=note.pk, text="stale") for note in notes])
    loaded = list(Note.objects.order_by("pk"))

    Note.objects.using("other").bulk_update(loaded, ["text"])

    clear_data_key_cache()
    copies = Note.objects.using("other").order_by("pk")
    assert [note.text for note in copies] == ["value 0", "value 1", "value 2"]
