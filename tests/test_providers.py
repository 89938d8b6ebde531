"""Key providers: the AWS KMS provider (on moto) and the local provider."""

import threading

import pytest
from botocore.config import Config

from django_kms_fields.conf import get_settings
from django_kms_fields.exceptions import KeyProviderError
from django_kms_fields.providers import (
    AwsKmsProvider,
    GeneratedDataKey,
    LocalProvider,
    get_provider,
)
from tests.conftest import AWS_REGION, aws_settings, local_settings
from tests.testapp.models import Note

CONTEXT = {"scope": "tenant:42"}


@pytest.fixture
def local(settings):
    settings.KMS_FIELDS = local_settings()
    return get_provider()


@pytest.fixture
def aws(settings, aws_keys):
    settings.KMS_FIELDS = aws_settings("alias/tests")
    return get_provider()


def test_local_round_trip(local):
    generated = local.generate_data_key("primary", CONTEXT)
    assert len(generated.plaintext) == 32
    assert generated.master_key_id == "primary"
    assert local.decrypt_data_key(generated.wrapped, "primary", CONTEXT) == generated.plaintext


@pytest.mark.parametrize("provider_name", ["local", "aws"])
def test_encryption_context_is_enforced(request, provider_name):
    provider = request.getfixturevalue(provider_name)
    master = get_settings().master_key_id
    generated = provider.generate_data_key(master, CONTEXT)
    with pytest.raises(KeyProviderError) as excinfo:
        provider.decrypt_data_key(
            generated.wrapped, generated.master_key_id, {"scope": "tenant:43"}
        )
    assert excinfo.value.code == "InvalidCiphertextException"


@pytest.mark.parametrize("provider_name", ["local", "aws"])
def test_rewrap_under_another_master_key(request, provider_name, aws_keys):
    provider = request.getfixturevalue(provider_name)
    master = get_settings().master_key_id
    destination = "secondary" if provider_name == "local" else aws_keys.secondary_arn
    generated = provider.generate_data_key(master, CONTEXT)

    wrapped, key_id = provider.rewrap_data_key(
        generated.wrapped, generated.master_key_id, destination, CONTEXT
    )
    assert key_id == destination
    assert wrapped != generated.wrapped
    assert provider.decrypt_data_key(wrapped, destination, CONTEXT) == generated.plaintext


def test_local_unknown_master_key(local):
    with pytest.raises(KeyProviderError) as excinfo:
        local.generate_data_key("missing", CONTEXT)
    assert excinfo.value.code == "NotFoundException"


def test_local_rejects_foreign_blob(local):
    with pytest.raises(KeyProviderError) as excinfo:
        local.decrypt_data_key(b"not a wrapped key", "primary", CONTEXT)
    assert excinfo.value.code == "InvalidCiphertextException"


def test_aws_stores_the_key_arn(aws, aws_keys):
    generated = aws.generate_data_key("alias/tests", CONTEXT)
    assert generated.master_key_id == aws_keys.primary_arn
    assert aws.decrypt_data_key(generated.wrapped, generated.master_key_id, CONTEXT) == (
        generated.plaintext
    )


def test_aws_error_carries_kms_code(aws):
    with pytest.raises(KeyProviderError) as excinfo:
        aws.generate_data_key("alias/does-not-exist", CONTEXT)
    assert excinfo.value.code == "NotFoundException"
    assert "alias/does-not-exist" in str(excinfo.value)
    assert excinfo.value.__cause__ is not None


def test_aws_client_is_lazy_and_shared(aws):
    assert aws._client is None
    clients = []
    barrier = threading.Barrier(8)

    def get_client():
        barrier.wait()
        clients.append(aws.client)

    threads = [threading.Thread(target=get_client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in clients}) == 1


def test_aws_client_options(settings, aws_keys):
    settings.KMS_FIELDS = {
        **aws_settings("alias/tests"),
        "AWS_CLIENT": {
            "region_name": AWS_REGION,
            "config": Config(retries={"mode": "adaptive", "max_attempts": 2}, read_timeout=3),
        },
    }
    client = get_provider().client
    assert client.meta.region_name == AWS_REGION
    # botocore counts max_attempts as retries after the first attempt.
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 3}
    assert client.meta.config.read_timeout == 3
    assert client.meta.config.connect_timeout == 5


def test_aws_default_retries(aws):
    assert aws.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 5}


def test_provider_classes_by_name(settings, aws_keys):
    settings.KMS_FIELDS = local_settings()
    assert type(get_provider()) is LocalProvider
    settings.KMS_FIELDS = aws_settings("alias/tests")
    assert type(get_provider()) is AwsKmsProvider


@pytest.mark.django_db
def test_custom_provider_by_dotted_path(settings):
    settings.KMS_FIELDS = {**local_settings(), "PROVIDER": "tests.custom_provider.TaggingProvider"}
    assert get_provider().name == "tagging"
    note = Note.objects.create(text="custom")
    from django_kms_fields import clear_data_key_cache

    clear_data_key_cache()
    assert Note.objects.get(pk=note.pk).text == "custom"


def test_generated_key_length_is_checked():
    with pytest.raises(KeyProviderError) as excinfo:
        GeneratedDataKey(b"short", b"wrapped", "key")
    assert excinfo.value.code == "InvalidDataKey"
