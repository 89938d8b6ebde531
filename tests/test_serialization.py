"""dumpdata and loaddata: dumps carry plaintext, and loading encrypts exactly once."""

import io
import json

import pytest
from django.core import serializers
from django.core.management import call_command

from django_kms_fields import ciphers
from django_kms_fields.models import DataKey
from tests.testapp.models import Note, Organisation, RowRecord, TenantRecord

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("kms")]


@pytest.fixture
def data():
    organisation = Organisation.objects.create(name="Acme")
    note = Note.objects.create(
        text="Grüße 🔐", number=0, flag=False, document={"a": [1, None]}, short=""
    )
    record = TenantRecord.objects.create(organisation=organisation, secret="tenant", score=7)
    row = RowRecord.objects.create(organisation=organisation, secret="row", national_id="123")
    return note, record, row


def dump(fmt="json"):
    output = io.StringIO()
    call_command(
        "dumpdata",
        "testapp.organisation",
        "testapp.note",
        "testapp.tenantrecord",
        "testapp.rowrecord",
        format=fmt,
        stdout=output,
    )
    return output.getvalue()


def test_dumps_carry_plaintext(data):
    dumped = json.loads(dump())
    by_model = {(item["model"], item["pk"]): item["fields"] for item in dumped}
    note, record, row = data
    assert by_model[("testapp.note", note.pk)]["text"] == "Grüße 🔐"
    assert by_model[("testapp.note", note.pk)]["number"] == 0
    assert by_model[("testapp.note", note.pk)]["flag"] is False
    assert by_model[("testapp.tenantrecord", record.pk)]["secret"] == "tenant"
    assert by_model[("testapp.rowrecord", str(row.pk))]["national_id"] == "123"
    assert "kf1." not in json.dumps(dumped)


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_loaddata_round_trip_encrypts_once(data, fmt, stored, tmp_path):
    note, record, row = data
    fixture = tmp_path / f"dump.{fmt}"
    fixture.write_text(dump(fmt))
    TenantRecord.objects.all().delete()
    RowRecord.objects.all().delete()
    Note.objects.all().delete()
    Organisation.objects.all().delete()
    DataKey.objects.all().delete()

    call_command("loaddata", str(fixture), verbosity=0)

    loaded = Note.objects.get(pk=note.pk)
    assert loaded.text == "Grüße 🔐"
    assert loaded.number == 0
    assert loaded.flag is False
    assert loaded.document == {"a": [1, None]}
    assert loaded.short == ""
    assert TenantRecord.objects.get(pk=record.pk).secret == "tenant"
    assert RowRecord.objects.get(pk=row.pk).national_id == "123"
    for instance, field in ((note, "text"), (record, "secret"), (row, "secret")):
        assert ciphers.looks_like_token(stored(instance, field))
    assert set(DataKey.objects.values_list("scope", flat=True)) == {
        "global",
        f"tenant:{record.organisation_id}",
        f"row:testapp.rowrecord:{row.pk}",
    }


def test_loaddata_over_existing_rows(data, tmp_path):
    note, record, _row = data
    fixture = tmp_path / "dump.json"
    fixture.write_text(dump())
    TenantRecord.objects.filter(pk=record.pk).update(label="changed")
    call_command("loaddata", str(fixture), verbosity=0)
    assert TenantRecord.objects.get(pk=record.pk).secret == "tenant"
    assert Note.objects.get(pk=note.pk).text == "Grüße 🔐"


def test_serializer_of_unsaved_changes():
    note = Note(text="unsaved")
    payload = json.loads(serializers.serialize("json", [note]))
    assert payload[0]["fields"]["text"] == "unsaved"
