"""Migrations: shipped and clean, and adding encrypted columns to tables with rows."""

import io
import os
import sqlite3
import subprocess
import sys

import pytest
from django.core.exceptions import FieldError
from django.core.management import call_command
from django.db import connection, migrations
from django.db.migrations.state import ProjectState

from django_kms_fields import EncryptedJSONField, EncryptedTextField, ciphers
from tests.testapp.models import Note, Organisation, TenantRecord


@pytest.mark.django_db
def test_makemigrations_is_clean():
    output = io.StringIO()
    call_command(
        "makemigrations", "django_kms_fields", "testapp", "--check", "--dry-run", stdout=output
    )
    assert "No changes detected" in output.getvalue()


def test_field_deconstruction_round_trips():
    field = EncryptedTextField(
        key_scope="tenant", tenant_field="organisation", associated_data_label="a.b.c", null=True
    )
    _name, path, args, kwargs = field.deconstruct()
    assert path == "django_kms_fields.fields.EncryptedTextField"
    assert kwargs == {
        "key_scope": "tenant",
        "tenant_field": "organisation",
        "associated_data_label": "a.b.c",
        "null": True,
    }
    rebuilt = EncryptedTextField(*args, **kwargs)
    assert rebuilt.deconstruct()[3] == kwargs
    assert EncryptedTextField().deconstruct()[3] == {}


def apply_add_field(model_name, field_name, field):
    """Add a column with migration operations, returning the new state and a reverter."""
    from_state = ProjectState.from_apps(__import__("django.apps").apps.apps)
    operation = migrations.AddField(model_name, field_name, field)
    to_state = from_state.clone()
    operation.state_forwards("testapp", to_state)
    with connection.schema_editor() as editor:
        operation.database_forwards("testapp", editor, from_state, to_state)

    def revert():
        with connection.schema_editor() as editor:
            operation.database_backwards("testapp", editor, to_state, from_state)

    return to_state, revert


@pytest.mark.usefixtures("kms")
@pytest.mark.django_db(transaction=True)
def test_add_global_field_with_default_to_table_with_rows():
    notes = [Note.objects.create(title=f"n{i}") for i in range(3)]
    state, revert = apply_add_field(
        "note", "greeting", EncryptedJSONField(default={"hello": "wörld"})
    )
    try:
        historical = state.apps.get_model("testapp", "Note")
        assert (
            list(historical.objects.order_by("pk").values_list("greeting", flat=True))
            == [{"hello": "wörld"}] * 3
        )
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT greeting FROM {Note._meta.db_table}")
            stored = [row[0] for row in cursor.fetchall()]
        assert all(ciphers.looks_like_token(value) for value in stored)
        assert len(notes) == 3
    finally:
        revert()


@pytest.mark.usefixtures("kms")
@pytest.mark.django_db(transaction=True)
def test_add_tenant_field_with_default_to_table_with_rows_fails_clearly():
    organisation = Organisation.objects.create(name="o")
    TenantRecord.objects.create(organisation=organisation)
    with pytest.raises(FieldError, match="add it with null=True and fill it in a data migration"):
        apply_add_field(
            "tenantrecord",
            "motto",
            EncryptedTextField(key_scope="tenant", tenant_field="organisation", default="x"),
        )
    assert TenantRecord.objects.count() == 1


@pytest.mark.usefixtures("kms")
@pytest.mark.django_db(transaction=True)
def test_add_tenant_field_with_default_to_empty_table():
    state, revert = apply_add_field(
        "tenantrecord",
        "motto",
        EncryptedTextField(key_scope="tenant", tenant_field="organisation", default="x"),
    )
    try:
        historical = state.apps.get_model("testapp", "TenantRecord")
        organisation = state.apps.get_model("testapp", "Organisation").objects.create(name="o")
        record = historical.objects.create(organisation=organisation)
        assert historical.objects.get(pk=record.pk).motto == "x"
    finally:
        revert()


@pytest.mark.usefixtures("kms")
@pytest.mark.django_db(transaction=True)
def test_add_field_with_default_to_empty_table_needs_no_data_key():
    from django_kms_fields.models import DataKey

    state, revert = apply_add_field("note", "greeting", EncryptedTextField(default="hello"))
    try:
        assert DataKey.objects.count() == 0
        historical = state.apps.get_model("testapp", "Note")
        note = historical.objects.create(title="after")
        assert historical.objects.get(pk=note.pk).greeting == "hello"
    finally:
        revert()


@pytest.mark.django_db
def test_changing_encryption_options_changes_no_table():
    from tests.testapp.models import EncryptedLegacyPatient

    old = EncryptedLegacyPatient._meta.get_field("notes")
    new = EncryptedTextField(null=True)
    new.set_attributes_from_name("notes")
    new.model = old.model
    # Only the field options differ, so the schema editor alters nothing.
    assert not connection.schema_editor()._field_should_be_altered(old, new)


@pytest.mark.skipif(connection.vendor != "sqlite", reason="runs on its own SQLite file")
@pytest.mark.parametrize("first_app", ["contenttypes", "testapp", "django_kms_fields"])
def test_partial_migrate_of_new_database(tmp_path, first_app):
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'new.sqlite3'}",
    }

    def migrate(*arguments):
        return subprocess.run(
            [sys.executable, "-m", "django", "migrate", *arguments, "--verbosity", "0"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    first = migrate(first_app)
    assert first.returncode == 0, first.stderr
    rest = migrate()
    assert rest.returncode == 0, rest.stderr

    # The permission is created once auth and the app are both migrated.
    database = sqlite3.connect(tmp_path / "new.sqlite3")
    codenames = {row[0] for row in database.execute("SELECT codename FROM auth_permission")}
    database.close()
    assert "view_decrypted_note" in codenames
