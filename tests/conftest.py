from __future__ import annotations

import dataclasses

import boto3
import pytest
from django.conf import settings as django_settings
from django.db import connection
from moto import mock_aws

from django_kms_fields import clear_data_key_cache
from django_kms_fields.keyring import get_keyring

AWS_REGION = "eu-west-1"


@dataclasses.dataclass
class KmsSetup:
    """The key provider a test runs against."""

    provider: str
    master_key_id: str
    kms_client: object | None = None
    secondary_master_key_id: str | None = None

    @property
    def calls(self) -> dict[str, int]:
        return get_keyring().provider_calls


def local_settings(master_key_id: str = "primary") -> dict:
    return {
        "PROVIDER": "local",
        "MASTER_KEY_ID": master_key_id,
        "LOCAL_MASTER_KEYS": django_settings.LOCAL_MASTER_KEYS,
        "ALLOW_LOCAL_PROVIDER": True,
    }


def aws_settings(master_key_id: str) -> dict:
    return {
        "PROVIDER": "aws",
        "MASTER_KEY_ID": master_key_id,
        "AWS_CLIENT": {"region_name": AWS_REGION},
    }


@dataclasses.dataclass
class AwsKeys:
    client: object
    primary_arn: str
    secondary_arn: str


@pytest.fixture(scope="session")
def aws_keys():
    """Start moto's in-process KMS once, with two master keys and an alias."""
    with mock_aws():
        client = boto3.client("kms", region_name=AWS_REGION)
        primary = client.create_key(Description="django-kms-fields tests")["KeyMetadata"]
        secondary = client.create_key(Description="django-kms-fields tests 2")["KeyMetadata"]
        client.create_alias(AliasName="alias/tests", TargetKeyId=primary["KeyId"])
        yield AwsKeys(client, primary["Arn"], secondary["Arn"])


@pytest.fixture(params=["local", "aws"])
def kms(request, settings):
    """Run the test once with the local provider and once with AWS KMS (moto)."""
    clear_data_key_cache()
    if request.param == "local":
        settings.KMS_FIELDS = local_settings()
        setup = KmsSetup("local", "primary", secondary_master_key_id="secondary")
    else:
        keys = request.getfixturevalue("aws_keys")
        settings.KMS_FIELDS = aws_settings("alias/tests")
        setup = KmsSetup("aws", keys.primary_arn, keys.client, keys.secondary_arn)
    get_keyring().reset_provider_calls()
    yield setup
    clear_data_key_cache()


def database_url() -> str:
    """The URL of the current test database, for subprocesses."""
    database = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{database['NAME']}"
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[connection.vendor]
    password = f":{database['PASSWORD']}" if database["PASSWORD"] else ""
    return (
        f"{scheme}://{database['USER']}{password}@{database['HOST']}:{database['PORT']}/"
        f"{database['NAME']}"
    )


@pytest.fixture
def stored():
    """Return the raw text stored in a column, read with plain SQL."""

    def read(instance, field_name: str):
        field = instance._meta.get_field(field_name)
        table = connection.ops.quote_name(instance._meta.db_table)
        column = connection.ops.quote_name(field.column)
        pk_column = connection.ops.quote_name(instance._meta.pk.column)
        pk = instance._meta.pk.get_db_prep_value(instance.pk, connection)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {column} FROM {table} WHERE {pk_column} = %s", [pk])
            row = cursor.fetchone()
        return row[0] if row else None

    return read


@pytest.fixture
def write_raw():
    """Overwrite a column with plain SQL, as an attacker with database access would."""

    def write(instance, field_name: str, value):
        field = instance._meta.get_field(field_name)
        table = connection.ops.quote_name(instance._meta.db_table)
        column = connection.ops.quote_name(field.column)
        pk_column = connection.ops.quote_name(instance._meta.pk.column)
        pk = instance._meta.pk.get_db_prep_value(instance.pk, connection)
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {table} SET {column} = %s WHERE {pk_column} = %s", [value, pk])

    return write


@pytest.fixture(scope="session", autouse=True)
def _forget_counts_at_end():
    """Drop unwritten encryption counts before the test database goes away.

    Otherwise the keyring's exit handler would try to write them to a
    database that pytest-django has already destroyed.
    """
    yield
    get_keyring()._reset_state()
