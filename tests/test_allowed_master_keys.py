"""KMS_FIELDS['ALLOWED_MASTER_KEY_IDS']: data keys under other master keys are never used.

The tests write values under the primary master key, then allow only the
secondary one: to the application, the primary key now plays the part of a
KMS key that an attacker with write access to the DataKey table controls.
"""

import io

import pytest
from django.core.management import CommandError, call_command

from django_kms_fields import clear_data_key_cache
from django_kms_fields.conf import validate
from django_kms_fields.exceptions import DecryptionError, EncryptionError
from django_kms_fields.keyring import get_keyring
from django_kms_fields.models import DataKey
from tests.testapp.models import Note, Organisation, TenantRecord

pytestmark = pytest.mark.django_db


def allow(settings, *master_key_ids, master_key_id=None):
    changed = {**settings.KMS_FIELDS, "ALLOWED_MASTER_KEY_IDS": list(master_key_ids)}
    if master_key_id is not None:
        changed["MASTER_KEY_ID"] = master_key_id
    settings.KMS_FIELDS = changed
    clear_data_key_cache()
    get_keyring().reset_provider_calls()


def rotate_text(*args):
    out = io.StringIO()
    call_command("rotate_keys", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def written(kms):
    """A global-scope note and a tenant-scope record, under the primary master key."""
    note = Note.objects.create(text="allergic to penicillin")
    organisation = Organisation.objects.create(name="Clinic")
    record = TenantRecord.objects.create(organisation=organisation, secret="diagnosis")
    return note, record


def test_allowed_master_key_reads(kms, settings, written):
    note, record = written
    allow(settings, kms.master_key_id)

    assert Note.objects.get(pk=note.pk).text == "allergic to penicillin"
    assert TenantRecord.objects.get(pk=record.pk).secret == "diagnosis"
    assert kms.calls == {"Decrypt": 2}


def test_other_master_key_is_never_unwrapped(kms, settings, written):
    note, _record = written
    allow(settings, kms.secondary_master_key_id, master_key_id=kms.secondary_master_key_id)

    with pytest.raises(DecryptionError) as raised:
        Note.objects.get(pk=note.pk).text

    message = str(raised.value)
    assert f"testapp.Note.text of the row with pk={note.pk!r}" in message
    assert repr(kms.master_key_id) in message
    assert "ALLOWED_MASTER_KEY_IDS" in message
    assert "penicillin" not in message
    assert kms.calls == {}


def test_values_list_refuses_other_master_key(kms, settings, written):
    allow(settings, kms.secondary_master_key_id, master_key_id=kms.secondary_master_key_id)

    with pytest.raises(DecryptionError, match="ALLOWED_MASTER_KEY_IDS"):
        list(TenantRecord.objects.values_list("secret", flat=True))
    assert kms.calls == {}


def test_write_with_unlisted_active_key_fails(kms, settings, written):
    allow(settings, kms.secondary_master_key_id, master_key_id=kms.secondary_master_key_id)

    with pytest.raises(EncryptionError, match="ALLOWED_MASTER_KEY_IDS"):
        Note.objects.create(text="new value")
    assert Note.objects.count() == 1
    assert kms.calls == {}


def test_new_key_under_unlisted_master_key_discarded(kms, settings):
    if kms.provider != "aws":
        pytest.skip("the settings check rejects a local MASTER_KEY_ID outside the list")
    # MASTER_KEY_ID is an alias, which only KMS resolves to the primary key's ARN.
    allow(settings, kms.secondary_master_key_id)

    with pytest.raises(EncryptionError, match="was discarded"):
        Note.objects.create(text="new value")
    assert Note.objects.count() == 0
    assert DataKey.objects.count() == 0


def test_rewrap_refuses_unlisted_source_key(kms, settings, written):
    allow(settings, kms.secondary_master_key_id, master_key_id=kms.secondary_master_key_id)

    with pytest.raises(CommandError, match="ALLOWED_MASTER_KEY_IDS"):
        rotate_text("--rewrap")
    assert set(DataKey.objects.values_list("master_key_id", flat=True)) == {kms.master_key_id}
    assert "ReEncrypt" not in kms.calls


def test_rewrap_refuses_unlisted_destination(kms, settings, written):
    allow(settings, kms.master_key_id)

    with pytest.raises(CommandError) as raised:
        rotate_text("--rewrap", "--master-key-id", kms.secondary_master_key_id)

    message = str(raised.value)
    assert "is not in KMS_FIELDS['ALLOWED_MASTER_KEY_IDS']" in message
    assert "Traceback" not in message
    assert set(DataKey.objects.values_list("master_key_id", flat=True)) == {kms.master_key_id}


def test_master_key_rollout_with_allowlist(kms, settings, written):
    note, record = written

    # 1. Every process allows both master keys.
    allow(settings, kms.master_key_id, kms.secondary_master_key_id)
    rotate_text("--rewrap", "--master-key-id", kms.secondary_master_key_id)
    assert set(DataKey.objects.values_list("master_key_id", flat=True)) == {
        kms.secondary_master_key_id
    }

    # 2. Every process switches to the new master key and drops the old one.
    allow(settings, kms.secondary_master_key_id, master_key_id=kms.secondary_master_key_id)
    assert Note.objects.get(pk=note.pk).text == "allergic to penicillin"
    assert TenantRecord.objects.get(pk=record.pk).secret == "diagnosis"
    assert Note.objects.create(text="after the rollout").text == "after the rollout"


def test_reencrypt_skips_values_under_unlisted_key(kms, settings, written, stored):
    note, _record = written
    token = stored(note, "text")
    allow(settings, kms.secondary_master_key_id, master_key_id=kms.secondary_master_key_id)
    unlisted_keys = set(DataKey.objects.values_list("pk", flat=True))

    with pytest.raises(CommandError, match="master key is not in ALLOWED_MASTER_KEY_IDS"):
        rotate_text("--reencrypt", "--delete-after", "0")

    assert stored(note, "text") == token
    assert unlisted_keys <= set(DataKey.objects.values_list("pk", flat=True))


def test_admin_rotate_action_reports_failure(kms, settings, written, admin_client, caplog):
    if kms.provider != "aws":
        pytest.skip("the settings check rejects a local MASTER_KEY_ID outside the list")
    key = DataKey.objects.get(scope="global")
    # MASTER_KEY_ID stays an alias of the primary key, which is not listed.
    allow(settings, kms.secondary_master_key_id)

    response = admin_client.post(
        "/admin/django_kms_fields/datakey/",
        {"action": "rotate_selected", "_selected_action": [key.pk]},
        follow=True,
    )

    content = response.content.decode()
    assert response.status_code == 200
    assert f"Rotating data key {key.key_id} (scope global) failed" in content
    assert f"Rotating data key {key.key_id} (scope 'global') failed" in caplog.text
    key.refresh_from_db()
    assert key.state == "active"


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"ALLOWED_MASTER_KEY_IDS": "primary"}, "must be a non-empty list"),
        ({"ALLOWED_MASTER_KEY_IDS": []}, "must be a non-empty list"),
        ({"ALLOWED_MASTER_KEY_IDS": ["primary", ""]}, "must be a non-empty list"),
        ({"ALLOWED_MASTER_KEY_IDS": ["primary", "nosuch"]}, "'nosuch', which is not a name"),
        ({"ALLOWED_MASTER_KEY_IDS": ["secondary"]}, "does not contain KMS_FIELDS['MASTER_KEY_ID']"),
    ],
)
def test_local_allowlist_checks(settings, overrides, error):
    raw = {
        "PROVIDER": "local",
        "MASTER_KEY_ID": "primary",
        "LOCAL_MASTER_KEYS": settings.LOCAL_MASTER_KEYS,
        **overrides,
    }

    parsed, errors = validate(raw)

    assert parsed is None
    assert any(error in message for message in errors), errors


ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_ARN = "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab"


@pytest.mark.parametrize(
    ("master_key_id", "allowed", "error"),
    [
        ("alias/crm", ["alias/crm"], "'alias/crm', which is not a KMS key ARN"),
        ("alias/crm", ["1234abcd-12ab-34cd-56ef-1234567890ab"], "not a KMS key ARN"),
        ("alias/crm", [ARN.replace(":key/", ":alias/")], "not a KMS key ARN"),
        (ARN, [OTHER_ARN], "does not contain KMS_FIELDS['MASTER_KEY_ID']"),
    ],
)
def test_aws_allowlist_checks(master_key_id, allowed, error):
    raw = {"PROVIDER": "aws", "MASTER_KEY_ID": master_key_id, "ALLOWED_MASTER_KEY_IDS": allowed}

    parsed, errors = validate(raw)

    assert parsed is None
    assert any(error in message for message in errors), errors


def test_valid_allowlist_is_parsed():
    raw = {"PROVIDER": "aws", "MASTER_KEY_ID": "alias/crm", "ALLOWED_MASTER_KEY_IDS": [ARN]}

    parsed, errors = validate(raw)

    assert errors == []
    assert parsed.allowed_master_key_ids == frozenset([ARN])
    assert parsed.allows_master_key(ARN)
    assert not parsed.allows_master_key(OTHER_ARN)
    assert validate({**raw, "ALLOWED_MASTER_KEY_IDS": None})[0].allows_master_key(OTHER_ARN)
