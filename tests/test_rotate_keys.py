"""manage.py rotate_keys in one process: modes, selection, output and failures."""

import datetime
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, migrations, models
from django.db.migrations.state import ProjectState
from django.utils import timezone

from django_kms_fields import ciphers, clear_data_key_cache
from django_kms_fields.exceptions import DecryptionError, KeyProviderError
from django_kms_fields.keyring import get_keyring
from django_kms_fields.models import DataKey
from django_kms_fields.providers import get_provider
from django_kms_fields.rotation import Rotation, RotationOptions
from tests.testapp.models import (
    EncryptedLegacyPatient,
    EncryptedPatient,
    LegacyPatient,
    Note,
    Organisation,
    RowRecord,
    TenantRecord,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("kms")]


def rotate(*args):
    """Run rotate_keys with --json and return the summary."""
    out = io.StringIO()
    call_command("rotate_keys", *args, "--json", stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue())


def rotate_text(*args, verbosity=1):
    out = io.StringIO()
    call_command("rotate_keys", *args, verbosity=verbosity, stdout=out, stderr=out)
    return out.getvalue()


@pytest.fixture
def data():
    """Three tenants, and values in every scope."""
    organisations = [Organisation.objects.create(name=f"org {i}") for i in range(3)]
    for i in range(12):
        Note.objects.create(title=f"note {i}", text=f"text {i} ✓", number=i, document={"i": i})
        TenantRecord.objects.create(
            organisation=organisations[i % 3], label=f"r{i}", secret=f"secret {i}", score=i
        )
    for i in range(5):
        RowRecord.objects.create(secret=f"row {i}", national_id=f"ID{i}")
    return organisations


def plaintexts():
    """Every encrypted value, decrypted from scratch."""
    clear_data_key_cache()
    return {
        "notes": sorted(Note.objects.values_list("pk", "text", "number", "document")),
        "records": sorted(TenantRecord.objects.values_list("pk", "secret", "details", "score")),
        "rows": sorted(
            (str(pk), secret, national_id)
            for pk, secret, national_id in RowRecord.objects.values_list(
                "pk", "secret", "national_id"
            )
        ),
    }


def key_ids(model, field_name):
    """The data key id named by each stored token of a column."""
    return {
        pk: token[4:15]
        for pk, token in model.objects.annotate(
            raw=models.functions.Cast(field_name, models.TextField())
        ).values_list("pk", "raw")
        if token
    }


def active_key_id(scope):
    return DataKey.objects.get(scope=scope, state="active").key_id


def test_rotate_creates_keys_and_touches_no_rows(data):
    before = plaintexts()
    tokens = {
        "text": key_ids(Note, "text"),
        "secret": key_ids(TenantRecord, "secret"),
        "row": key_ids(RowRecord, "secret"),
    }
    old_global = active_key_id("global")
    get_keyring().reset_provider_calls()

    summary = rotate()

    # global and three tenants; per-row keys rotate only with --reencrypt.
    assert summary["keys_created"] == 4
    assert summary["keys_retired"] == 4
    assert summary["rows_scanned"] == 0
    assert summary["kms_calls"] == {"GenerateDataKey": 4}
    assert DataKey.objects.get(pk=ciphers.decode_key_id(old_global)).state == "retired"
    assert active_key_id("global") != old_global
    assert key_ids(Note, "text") == tokens["text"]
    assert key_ids(TenantRecord, "secret") == tokens["secret"]
    assert key_ids(RowRecord, "secret") == tokens["row"]
    assert plaintexts() == before

    note = Note.objects.create(text="after rotation")
    assert key_ids(Note, "text")[note.pk] == active_key_id("global")


def test_reencrypt_moves_every_value_and_deletes_old_keys(data):
    before = plaintexts()
    old_keys = set(DataKey.objects.values_list("pk", flat=True))

    summary = rotate("--reencrypt", "--delete-after", "0")

    assert summary["keys_created"] == 4 + 5
    assert summary["values_reencrypted"] == 12 * 3 + 12 * 3 + 5 * 2
    assert summary["values_skipped"] == {}
    # Other processes may still encrypt with the keys this run retired.
    assert summary["keys_deleted"] == 0
    assert summary["keys_kept"] == {"retired too recently, see --delete-after": 9}

    second = rotate("--reencrypt", "--delete-after", "0")
    assert second["keys_created"] == 0
    # The global and tenant scopes, and the 5 rows.
    assert second["scopes_resumed"] == 4 + 5
    assert second["values_reencrypted"] == 0
    assert second["keys_deleted"] == len(old_keys)
    assert not DataKey.objects.filter(pk__in=old_keys).exists()
    assert DataKey.objects.filter(state="retired").count() == 0
    for pk, key_id in key_ids(Note, "text").items():
        assert key_id == active_key_id("global"), pk
    for record in TenantRecord.objects.all():
        scope = f"tenant:{record.organisation_id}"
        assert key_ids(TenantRecord, "secret")[record.pk] == active_key_id(scope)
    for pk, key_id in key_ids(RowRecord, "national_id").items():
        assert key_id == active_key_id(f"row:testapp.rowrecord:{pk}")
    assert plaintexts() == before


def test_reencrypt_output_reports_deleted_keys(data):
    output = rotate_text("--reencrypt", "--delete-after", "0", verbosity=2)
    assert "values re-encrypted: 82" in output
    assert "retired data keys kept (retired too recently, see --delete-after): 9" in output
    assert "Rotated global:" in output
    assert "Done." in output
    output = rotate_text("--reencrypt", "--delete-after", "0", verbosity=2)
    assert "Deleted unused retired data key" in output
    assert "data keys deleted: 9" in output
    assert "scopes not rotated again, to finish an earlier rotation: 9" in output


def test_short_delete_after_warns(data):
    output = rotate_text("--reencrypt", "--delete-after", "10")
    assert "--delete-after 10 is shorter than DATA_KEY_CACHE_TTL (300 seconds)" in output
    assert "shorter than" not in rotate_text("--reencrypt", "--delete-after", "600")
    assert rotate_text("--reencrypt", "--delete-after", "0", verbosity=0) == ""


def test_kms_calls_follow_keys_not_rows(data, kms):
    for i in range(50):
        Note.objects.create(text=f"extra {i}")
    clear_data_key_cache()
    get_keyring().reset_provider_calls()

    summary = rotate("--reencrypt", "--delete-after", "0", "--scope", "global", "--scope", "tenant")

    # One new key per scope; one unwrap per old key (the new keys are
    # created in this process and need none).
    assert summary["kms_calls"] == {"GenerateDataKey": 4, "Decrypt": 4}
    assert summary["values_reencrypted"] == (62 + 12 + 12) + 12 * 3


def test_rerun_after_plain_rotation_finishes_without_rotating_again(data):
    rotate()
    new_global = active_key_id("global")

    summary = rotate("--reencrypt", "--delete-after", "0")

    assert summary["scopes_resumed"] == 4
    assert active_key_id("global") == new_global
    assert set(key_ids(Note, "text").values()) == {new_global}
    # The keys retired by the plain rotation are deleted; the per-row keys
    # this run retired are kept until the next run.
    assert summary["keys_deleted"] == 4
    assert DataKey.objects.filter(state="retired").exclude(scope__startswith="row:").count() == 0


def test_recently_retired_keys_are_kept(data):
    summary = rotate("--reencrypt")
    assert summary["keys_deleted"] == 0
    assert summary["keys_kept"] == {"retired too recently, see --delete-after": 9}
    output = rotate_text("--reencrypt", "--scope", "global")
    assert "retired data keys kept (retired too recently, see --delete-after): 1" in output


def test_key_named_by_a_late_value_is_kept(data, write_raw):
    note = Note.objects.first()
    old_token = (
        Note.objects.annotate(raw=models.functions.Cast("text", models.TextField()))
        .values_list("raw", flat=True)
        .get(pk=note.pk)
    )
    rotate("--reencrypt", "--delete-after", "3600", "--scope", "global")
    # A process whose cache still holds the old key wrote after the scan.
    write_raw(note, "text", old_token)

    rotation = Rotation(RotationOptions(delete_after=datetime.timedelta(0), scopes=["global"]))
    rotation._delete_unused_retired_keys(retired_before=timezone.now())

    assert rotation.summary.keys_kept == {"still used by stored values": 1}
    assert rotation.summary.keys_deleted == 0
    clear_data_key_cache()
    assert Note.objects.get(pk=note.pk).text == note.text


def test_rewrap_under_another_master_key(data, kms, settings):
    before = plaintexts()
    wrapped_before = dict(DataKey.objects.values_list("pk", "wrapped_key"))
    get_keyring().reset_provider_calls()

    summary = rotate("--rewrap", "--master-key-id", kms.secondary_master_key_id)

    assert summary["keys_rewrapped"] == len(wrapped_before)
    assert summary["kms_calls"] == {"DescribeKey": 1, "ReEncrypt": len(wrapped_before)}
    assert set(DataKey.objects.values_list("master_key_id", flat=True)) == {
        kms.secondary_master_key_id
    }
    for pk, wrapped in DataKey.objects.values_list("pk", "wrapped_key"):
        assert wrapped != wrapped_before[pk]

    settings.KMS_FIELDS = {**settings.KMS_FIELDS, "MASTER_KEY_ID": kms.secondary_master_key_id}
    assert plaintexts() == before
    assert rotate("--rewrap")["keys_rewrapped"] == 0


def test_rewrap_defaults_to_the_configured_master_key(data, kms, settings):
    settings.KMS_FIELDS = {**settings.KMS_FIELDS, "MASTER_KEY_ID": kms.secondary_master_key_id}
    summary = rotate("--rewrap")
    assert summary["keys_rewrapped"] == DataKey.objects.count()


def test_rewrap_to_unknown_master_key_fails(data, kms):
    missing = "alias/missing" if kms.provider == "aws" else "missing"
    with pytest.raises(CommandError, match="NotFoundException"):
        rotate_text("--rewrap", "--master-key-id", missing)


def test_dry_run_failure_says_nothing_changed(data, kms):
    missing = "alias/missing" if kms.provider == "aws" else "missing"
    output = io.StringIO()
    with pytest.raises(CommandError) as raised:
        call_command(
            "rotate_keys", "--rewrap", "--dry-run", "--master-key-id", missing, stdout=output
        )

    message = str(raised.value)
    assert "NotFoundException" in message
    assert "dry run: nothing was changed" in message
    assert "re-wrapped so far" not in message
    assert "Dry run, until the failure" in output.getvalue()
    assert "nothing was changed" not in output.getvalue()


def test_select_by_model(data):
    old_global = active_key_id("global")
    summary = rotate("--reencrypt", "--model", "testapp.TenantRecord", "--delete-after", "0")
    # Tenant keys are shared by every model of the tenant, so the run moves
    # TenantRecord's values and leaves the global key (not used) alone.
    assert summary["keys_created"] == 3
    assert active_key_id("global") == old_global
    assert summary["rows_scanned"] == 12


def test_select_by_scope(data):
    tenant = f"tenant:{data[1].pk}"
    old = {scope: active_key_id(scope) for scope in ("global", tenant, f"tenant:{data[0].pk}")}
    summary = rotate("--reencrypt", "--scope", tenant, "--delete-after", "0")
    assert summary["keys_created"] == 1
    assert active_key_id(tenant) != old[tenant]
    assert active_key_id("global") == old["global"]
    assert active_key_id(f"tenant:{data[0].pk}") == old[f"tenant:{data[0].pk}"]
    assert summary["values_reencrypted"] == 4 * 3


def test_select_row_scope(data):
    summary = rotate("--reencrypt", "--scope", "row", "--delete-after", "0")
    assert summary["keys_created"] == 5
    assert summary["values_reencrypted"] == 10


def test_older_than(data):
    DataKey.objects.filter(scope="global").update(
        created_at=timezone.now() - datetime.timedelta(days=100)
    )
    summary = rotate("--older-than", "90")
    assert summary["keys_created"] == 1
    assert rotate("--older-than", "90")["keys_created"] == 0


def test_dry_run_changes_nothing(data):
    keys = list(DataKey.objects.order_by("pk").values_list("pk", "state", "wrapped_key"))
    tokens = key_ids(Note, "text")

    summary = rotate("--reencrypt", "--dry-run")

    assert summary["dry_run"] is True
    assert summary["planned"]["keys_to_rotate"] == 4
    assert summary["planned"]["row_keys_to_rotate"] == 5
    assert summary["planned"]["values_to_reencrypt"] == 82
    assert summary["planned"]["values_left_unchanged"] == 0
    assert summary["planned"]["kms_calls"] > 0
    assert list(DataKey.objects.order_by("pk").values_list("pk", "state", "wrapped_key")) == keys
    assert key_ids(Note, "text") == tokens

    output = rotate_text("--dry-run")
    assert "Dry run: nothing was changed." in output
    assert "keys to rotate: 4" in output


def test_text_output_and_progress(data):
    output = rotate_text("--reencrypt", "--delete-after", "0")
    assert "testapp.Note: 12/12 rows" in output
    assert "rows/s" in output
    assert "data keys created: 9" in output
    assert rotate_text("--reencrypt", verbosity=0) == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "testapp.Nope"], "Unknown model 'testapp.Nope'"),
        (["--model", "Nope"], r"encrypted fields are: .*testapp\.Note, "),
        (["--model", "testapp.Organisation"], "has no encrypted fields"),
        (["--scope", "tenants:1"], "Unknown scope 'tenants:1'"),
        (["--scope", "tenant:"], "Unknown scope 'tenant:'"),
        (["--scope", "tenant:999999"], "No data key has the scope 'tenant:999999'"),
        (["--scope", "row:testapp.nope:1"], "Unknown model in scope"),
        (["--scope", "row:testapp.note:1"], "has no fields with key_scope='row'"),
        (["--no-rotate"], "--no-rotate only applies to --reencrypt"),
        (["--master-key-id", "x"], "--master-key-id only applies to --rewrap"),
        (["--database", "missing"], "Unknown database 'missing'"),
    ],
)
def test_invalid_options(args, message):
    with pytest.raises(CommandError, match=message):
        rotate_text(*args)


def test_invalid_numbers_are_rejected():
    with pytest.raises(CommandError, match="positive integer"):
        rotate_text("--batch-size", "0")
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(CommandError, match="non-negative number"):
            rotate_text("--older-than", bad)
        with pytest.raises(CommandError, match="non-negative number"):
            rotate_text("--delete-after", bad)


def test_kms_failure_mid_run_stops_cleanly(data, kms, monkeypatch):
    before = plaintexts()
    rotate()  # retire the keys, so that --reencrypt has to unwrap old ones
    clear_data_key_cache()
    provider = get_provider()
    original = provider.decrypt_data_key
    calls = []

    def decrypt_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyProviderError("injected", code="ThrottlingException")
        return original(*args, **kwargs)

    monkeypatch.setattr(provider, "decrypt_data_key", decrypt_then_fail)
    with pytest.raises(CommandError) as excinfo:
        rotate_text("--reencrypt", "--batch-size", "5", "--delete-after", "0")
    assert "ThrottlingException" in str(excinfo.value)
    assert "run the same command again" in str(excinfo.value)
    monkeypatch.setattr(provider, "decrypt_data_key", original)

    assert plaintexts() == before
    summary = rotate("--reencrypt", "--delete-after", "0")
    assert summary["values_skipped"] == {}
    assert summary["scopes_resumed"] == 4
    assert summary["keys_deleted"] == 4
    assert plaintexts() == before


def test_undecryptable_value_is_reported_and_left_alone(data, stored, write_raw):
    rotate()
    victim = TenantRecord.objects.filter(organisation=data[0]).first()
    other = TenantRecord.objects.filter(organisation=data[1]).first()
    # A token copied from another tenant: it cannot decrypt here.
    copied = stored(other, "secret")
    write_raw(victim, "secret", copied)

    with pytest.raises(CommandError) as excinfo:
        rotate_text("--reencrypt", "--delete-after", "0")
    assert "1 stored values were left unchanged: 1 cannot be decrypted" in str(excinfo.value)
    assert "The first 1 are listed above" in str(excinfo.value)

    assert stored(victim, "secret") == copied
    output = io.StringIO()
    with pytest.raises(CommandError):
        call_command("rotate_keys", "--reencrypt", stdout=output, stderr=output)
    assert f"testapp.TenantRecord.secret pk={victim.pk}: cannot be decrypted" in output.getvalue()
    assert "Done." not in output.getvalue()
    # The other tenant's key is still used by the copied token, so it stays.
    clear_data_key_cache()
    with pytest.raises(DecryptionError):
        TenantRecord.objects.get(pk=victim.pk).secret
    assert TenantRecord.objects.get(pk=other.pk).secret.startswith("secret")


def test_plaintext_without_legacy_flag_is_reported(data, write_raw):
    note = Note.objects.first()
    write_raw(note, "text", "left in plaintext")
    with pytest.raises(CommandError, match="does not set legacy_plaintext=True"):
        rotate_text("--reencrypt")


# Migrating a plaintext column


def alter_legacy_columns():
    """Apply the schema migration of the docs: plain columns become encrypted fields."""
    from_state = ProjectState.from_apps(__import__("django.apps").apps.apps)
    to_state = from_state.clone()
    operations = [
        migrations.AlterField(
            "legacypatient",
            name,
            field,
        )
        for name, field in (
            ("notes", EncryptedLegacyPatient._meta.get_field("notes").clone()),
            ("age", EncryptedLegacyPatient._meta.get_field("age").clone()),
            ("admitted", EncryptedLegacyPatient._meta.get_field("admitted").clone()),
            ("history", EncryptedLegacyPatient._meta.get_field("history").clone()),
        )
    ]
    with connection.schema_editor() as editor:
        for operation in operations:
            state_before = to_state.clone()
            operation.state_forwards("testapp", to_state)
            operation.database_forwards("testapp", editor, state_before, to_state)


@pytest.fixture
def legacy_table():
    """LegacyPatient's table, restored to its plain columns afterwards."""
    yield
    with connection.schema_editor() as editor:
        editor.delete_model(LegacyPatient)
        editor.create_model(LegacyPatient)


def test_migrate_plaintext_column(legacy_table):
    admitted = timezone.now().replace(microsecond=0)
    originals = {}
    for i in range(7):
        patient = LegacyPatient.objects.create(
            notes=f"plain note {i} ~|",
            age=30 + i,
            admitted=admitted + datetime.timedelta(hours=i),
            history={"visits": [i, None], "name": "Zoë"},
        )
        originals[patient.pk] = (
            patient.notes,
            patient.age,
            patient.admitted,
            patient.history,
        )
    LegacyPatient.objects.create(notes=None)

    alter_legacy_columns()

    def values():
        clear_data_key_cache()
        return {
            p.pk: (p.notes, p.age, p.admitted, p.history)
            for p in EncryptedLegacyPatient.objects.exclude(notes=None)
        }

    # During the window, plaintext and new encrypted values read the same.
    assert values() == originals
    new = EncryptedLegacyPatient.objects.create(notes="written encrypted", age=1)
    assert EncryptedLegacyPatient.objects.get(pk=new.pk).notes == "written encrypted"
    originals[new.pk] = (new.notes, new.age, None, None)

    keys_before = set(DataKey.objects.values_list("pk", "state"))
    summary = rotate("--reencrypt", "--no-rotate", "--model", "testapp.EncryptedLegacyPatient")
    assert summary["values_encrypted_from_plaintext"] == 7 * 4
    assert summary["keys_created"] == 0
    assert keys_before <= set(DataKey.objects.values_list("pk", "state"))
    assert summary["values_skipped"] == {}
    assert values() == originals
    with connection.cursor() as cursor:
        cursor.execute("SELECT notes, age FROM testapp_legacypatient WHERE notes IS NOT NULL")
        for notes, age in cursor.fetchall():
            assert ciphers.looks_like_token(notes)
            assert age is None or ciphers.looks_like_token(age)

    # After the window, plaintext is a DecryptionError again.
    assert sorted(EncryptedPatient.objects.exclude(notes=None).values_list("notes", flat=True)) == (
        sorted(value[0] for value in originals.values())
    )
    with connection.cursor() as cursor:
        cursor.execute("UPDATE testapp_legacypatient SET notes = 'injected plaintext'")
    with pytest.raises(DecryptionError):
        list(EncryptedPatient.objects.exclude(notes=None).values_list("notes", flat=True))


def test_invalid_plaintext_is_reported_and_kept(legacy_table, write_raw, stored):
    patients = [LegacyPatient.objects.create(notes=f"note {i}", age=40) for i in range(3)]
    alter_legacy_columns()
    write_raw(patients[0], "age", "forty")
    write_raw(patients[1], "age", str(2**40))

    with pytest.raises(CommandError, match="plaintext that is not a valid value of the field"):
        rotate_text("--reencrypt", "--no-rotate", "--model", "testapp.EncryptedLegacyPatient")

    assert stored(patients[0], "age") == "forty"
    assert stored(patients[1], "age") == str(2**40)
    assert ciphers.looks_like_token(stored(patients[2], "age"))
    for patient in patients:
        assert ciphers.looks_like_token(stored(patient, "notes"))


def test_retired_row_key_named_by_a_late_value_is_kept(data, write_raw, stored):
    row = RowRecord.objects.first()
    old_token = stored(row, "secret")
    rotate("--reencrypt", "--delete-after", "3600", "--scope", "row")
    old_key = DataKey.objects.get(pk=ciphers.decode_key_id(old_token[4:15]))
    assert old_key.state == "retired"
    # An application process whose cache still held the old row key saved the row.
    write_raw(row, "secret", old_token)

    rotation = Rotation(RotationOptions(delete_after=datetime.timedelta(0), scopes=["row"]))
    rotation._delete_unused_retired_keys(retired_before=timezone.now())

    assert DataKey.objects.filter(pk=old_key.pk).exists()
    assert rotation.summary.keys_kept == {"still used by stored values": 1}
    assert rotation.summary.keys_deleted == 4
    clear_data_key_cache()
    assert RowRecord.objects.get(pk=row.pk).secret == row.secret


def test_row_scope_is_written_as_data_keys_are(data):
    row = RowRecord.objects.first()
    summary = rotate(
        "--reencrypt",
        "--scope",
        f"row:testapp.RowRecord:{row.pk.hex.upper()}",
        "--delete-after",
        "0",
    )
    assert summary["keys_created"] == 1
    assert summary["values_reencrypted"] == 2


def test_no_rotate_only_moves_values(data):
    rotate()
    keys = set(DataKey.objects.values_list("pk", flat=True))
    summary = rotate("--reencrypt", "--no-rotate", "--delete-after", "0")
    assert summary["keys_created"] == 0
    assert summary["values_reencrypted"] == 12 * 3 + 12 * 3
    assert summary["keys_deleted"] == 4
    assert set(DataKey.objects.values_list("pk", flat=True)) < keys


@pytest.mark.parametrize(
    "before",
    [
        [],
        [["--scope", "global"]],
        [["--reencrypt", "--scope", "row", "--delete-after", "3600"]],
    ],
)
def test_dry_run_predicts_the_run(data, before):
    for args in before:
        rotate(*args)
    plan = rotate("--reencrypt", "--dry-run")["planned"]
    summary = rotate("--reencrypt")
    assert plan["keys_to_rotate"] + plan["row_keys_to_rotate"] == summary["keys_created"]
    assert plan["values_to_reencrypt"] == summary["values_reencrypted"]
    assert plan["values_left_unchanged"] == sum(summary["values_skipped"].values())


def test_dry_run_with_older_than(data):
    DataKey.objects.filter(scope="global").update(
        created_at=timezone.now() - datetime.timedelta(days=3)
    )
    plan = rotate("--reencrypt", "--dry-run", "--older-than", "1")["planned"]
    summary = rotate("--reencrypt", "--older-than", "1")
    assert plan["keys_to_rotate"] == summary["keys_created"] == 1
    assert plan["row_keys_to_rotate"] == 0
    assert plan["values_to_reencrypt"] == summary["values_reencrypted"] == 12 * 3


def test_dry_run_finds_undecryptable_values(data, stored, write_raw):
    note = Note.objects.first()
    write_raw(note, "text", stored(note, "text")[:-5])
    summary = rotate("--reencrypt", "--dry-run")
    assert summary["planned"]["values_left_unchanged"] == 1
    assert summary["failures"][0]["pk"] == str(note.pk)


def test_failed_run_reports_only_committed_work(data, monkeypatch):
    rotate()
    clear_data_key_cache()
    provider = get_provider()

    def fail(*args, **kwargs):
        raise KeyProviderError("injected", code="AccessDeniedException")

    monkeypatch.setattr(provider, "decrypt_data_key", fail)
    output = io.StringIO()
    with pytest.raises(CommandError, match="AccessDeniedException: injected. The batch"):
        call_command("rotate_keys", "--reencrypt", stdout=output, stderr=output)
    text = output.getvalue()
    assert "Summary of the work done before the failure" in text
    assert "values re-encrypted: 0" in text
    assert "data keys created: 0" in text
    assert "Done." not in text
