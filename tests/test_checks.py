"""System checks and KMS_FIELDS validation."""

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.test.utils import isolate_apps

from django_kms_fields import EncryptedCharField, EncryptedField, EncryptedTextField
from django_kms_fields.checks import check_deployment, check_models, check_settings
from django_kms_fields.conf import get_settings
from tests.conftest import local_settings


def ids(messages):
    return [message.id for message in messages]


def test_valid_settings_pass():
    assert check_settings() == []


def test_missing_setting(settings):
    del settings.KMS_FIELDS
    assert ids(check_settings()) == ["django_kms_fields.E001"]
    with pytest.raises(ImproperlyConfigured, match="KMS_FIELDS setting is missing"):
        get_settings()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"PROVIDER": "gcp"}, "KMS_FIELDS['PROVIDER'] is 'gcp'"),
        ({"PROVIDER": 3}, "KMS_FIELDS['PROVIDER'] must be"),
        ({"MASTER_KEY_ID": ""}, "KMS_FIELDS['MASTER_KEY_ID'] is missing"),
        ({"MASTER_KEY_ID": "nope"}, "not a key name in LOCAL_MASTER_KEYS"),
        ({"LOCAL_MASTER_KEYS": {"primary": "c2hvcnQ="}}, "must be base64 of 32 random bytes"),
        ({"LOCAL_MASTER_KEYS": {"primary": "not base64!"}}, "must be base64 of 32 random bytes"),
        ({"LOCAL_MASTER_KEYS": ["primary"]}, "must be a dict of key name"),
        ({"AWS_CLIENT": "eu-west-1"}, "KMS_FIELDS['AWS_CLIENT'] must be a dict"),
        ({"DATA_KEY_CACHE_TTL": -1}, "DATA_KEY_CACHE_TTL'] must be a number of seconds"),
        ({"DATA_KEY_CACHE_TTL": "300"}, "DATA_KEY_CACHE_TTL'] must be a number of seconds"),
        ({"DATA_KEY_CACHE_SIZE": 0}, "DATA_KEY_CACHE_SIZE'] must be an integer >= 1"),
        ({"DATA_KEY_MAX_ENCRYPTIONS": 2**33}, "from 1 to 2**32"),
        ({"MASTER_KEYID": "typo"}, "unknown keys ['MASTER_KEYID']"),
    ],
)
def test_malformed_settings(settings, override, message):
    settings.KMS_FIELDS = {**local_settings(), **override}
    messages = check_settings()
    assert any(message in m.msg for m in messages), [m.msg for m in messages]
    assert all(m.id == "django_kms_fields.E002" for m in messages)
    with pytest.raises(ImproperlyConfigured):
        get_settings()


def test_setting_must_be_a_dict(settings):
    settings.KMS_FIELDS = "local"
    assert [m.msg for m in check_settings()] == ["KMS_FIELDS must be a dict, not str."]


def test_local_key_value_is_never_shown(settings):
    secret = "bm90IGEgMzItYnl0ZSBrZXk="
    settings.KMS_FIELDS = {**local_settings(), "LOCAL_MASTER_KEYS": {"primary": secret}}
    for message in check_settings():
        assert secret not in message.msg


def test_unimportable_provider(settings):
    settings.KMS_FIELDS = {**local_settings(), "PROVIDER": "myproject.kms.MissingProvider"}
    assert ids(check_settings()) == ["django_kms_fields.E003"]


def test_provider_must_be_a_key_provider(settings):
    settings.KMS_FIELDS = {**local_settings(), "PROVIDER": "collections.OrderedDict"}
    assert ids(check_settings()) == ["django_kms_fields.E003"]


def test_local_provider_without_debug(settings):
    settings.DEBUG = False
    settings.KMS_FIELDS = {**local_settings(), "ALLOW_LOCAL_PROVIDER": False}
    assert ids(check_settings()) == ["django_kms_fields.E004"]

    settings.DEBUG = True
    assert check_settings() == []

    settings.DEBUG = False
    settings.KMS_FIELDS = {**local_settings(), "ALLOW_LOCAL_PROVIDER": True}
    assert check_settings() == []


def test_aws_provider_without_debug_passes(settings):
    settings.DEBUG = False
    settings.KMS_FIELDS = {"PROVIDER": "aws", "MASTER_KEY_ID": "alias/app"}
    assert check_settings() == []


def test_deploy_warning_without_allowlist(settings):
    settings.KMS_FIELDS = {"PROVIDER": "aws", "MASTER_KEY_ID": "alias/app"}
    assert ids(check_deployment()) == ["django_kms_fields.W005"]

    # Only "manage.py check --deploy" runs it.
    security = [checks.Tags.security]
    assert "django_kms_fields.W005" not in ids(checks.run_checks(tags=security))
    assert "django_kms_fields.W005" in ids(
        checks.run_checks(tags=security, include_deployment_checks=True)
    )

    arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    settings.KMS_FIELDS = {**settings.KMS_FIELDS, "ALLOWED_MASTER_KEY_IDS": [arn]}
    assert check_deployment() == []

    # The local provider has its own check (E004), and a broken setting E002.
    settings.KMS_FIELDS = local_settings()
    assert check_deployment() == []
    settings.KMS_FIELDS = {"PROVIDER": "aws"}
    assert check_deployment() == []


def test_settings_are_reread_when_overridden(settings):
    assert get_settings().master_key_id == "primary"
    settings.KMS_FIELDS = local_settings("secondary")
    assert get_settings().master_key_id == "secondary"


def field_errors(field):
    return ids(field.check())


@isolate_apps("tests.testapp")
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"unique": True}, "django_kms_fields.E101"),
        ({"db_index": True}, "django_kms_fields.E102"),
        ({"primary_key": True}, "django_kms_fields.E103"),
        ({"key_scope": "per-tenant"}, "django_kms_fields.E104"),
        ({"key_scope": "tenant"}, "django_kms_fields.E105"),
        ({"tenant_field": "owner"}, "django_kms_fields.E105"),
        ({"key_scope": "tenant", "tenant_field": "missing"}, "django_kms_fields.E106"),
        ({"key_scope": "tenant", "tenant_field": "other_secret"}, "django_kms_fields.E107"),
        ({"db_default": "x"}, "django_kms_fields.E109"),
        ({"associated_data_label": "no dots"}, "django_kms_fields.E110"),
    ],
)
def test_field_checks(options, expected):
    class Model(models.Model):
        owner = models.CharField(max_length=10)
        other_secret = EncryptedTextField(null=True)
        field = EncryptedTextField(null=True, **options)

        class Meta:
            app_label = "testapp"

    assert expected in field_errors(Model._meta.get_field("field"))


@isolate_apps("tests.testapp")
def test_row_scope_needs_pk_before_insert():
    class AutoPk(models.Model):
        secret = EncryptedTextField(key_scope="row")

        class Meta:
            app_label = "testapp"

    class DefaultPk(models.Model):
        id = models.CharField(primary_key=True, max_length=10, default="x")
        secret = EncryptedTextField(key_scope="row")

        class Meta:
            app_label = "testapp"

    assert field_errors(AutoPk._meta.get_field("secret")) == ["django_kms_fields.E108"]
    assert field_errors(DefaultPk._meta.get_field("secret")) == []


@isolate_apps("tests.testapp")
def test_tenant_field_on_parent_table_is_rejected():
    class Parent(models.Model):
        tenant = models.CharField(max_length=10)

        class Meta:
            app_label = "testapp"

    class Child(Parent):
        secret = EncryptedTextField(key_scope="tenant", tenant_field="tenant")

        class Meta:
            app_label = "testapp"

    assert field_errors(Child._meta.get_field("secret")) == ["django_kms_fields.E107"]


@isolate_apps("tests.testapp")
def test_mixin_must_come_first():
    class WrongOrder(models.TextField, EncryptedField):
        pass

    class Model(models.Model):
        field = WrongOrder(null=True)

        class Meta:
            app_label = "testapp"

    assert "django_kms_fields.E111" in field_errors(Model._meta.get_field("field"))


@isolate_apps("tests.testapp")
def test_char_field_without_max_length_is_allowed():
    class Model(models.Model):
        field = EncryptedCharField(null=True)

        class Meta:
            app_label = "testapp"

    assert field_errors(Model._meta.get_field("field")) == []


@isolate_apps("tests.testapp")
def test_indexes_constraints_and_ordering_on_encrypted_fields():
    class Model(models.Model):
        plain = models.CharField(max_length=10)
        secret = EncryptedTextField()

        class Meta:
            app_label = "testapp"
            unique_together = [("plain", "secret")]
            indexes = [models.Index(fields=["secret"], name="secret_idx")]
            constraints = [models.UniqueConstraint(fields=["secret"], name="secret_unique")]
            ordering = ["-secret"]

    messages = check_models(app_configs=[Model._meta.apps.get_app_config("testapp")])
    assert ids([m for m in messages if m.obj is Model]) == [
        "django_kms_fields.E120",
        "django_kms_fields.E120",
        "django_kms_fields.E120",
        "django_kms_fields.E121",
    ]


@pytest.mark.django_db
def test_project_checks_pass():
    # Without a list of databases, Django 6.1 checks JSON support on all of them.
    messages = checks.run_checks(databases=["default"])
    assert [m for m in messages if m.level >= checks.ERROR] == []


def test_malformed_master_key_is_reported_once(settings):
    settings.KMS_FIELDS = {**local_settings(), "LOCAL_MASTER_KEYS": {"primary": "c2hvcnQ="}}
    messages = [m.msg for m in check_settings()]
    assert len(messages) == 1
    assert "must be base64 of 32 random bytes" in messages[0]


def test_local_provider_refused_at_runtime_without_debug(settings):
    from django_kms_fields.providers import get_provider

    settings.DEBUG = False
    settings.KMS_FIELDS = {**local_settings(), "ALLOW_LOCAL_PROVIDER": False}
    with pytest.raises(ImproperlyConfigured, match="refused with DEBUG = False"):
        get_provider()
    settings.DEBUG = True
    assert get_provider().name == "local"
