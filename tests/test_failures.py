"""Key provider failures: raised with their code, before any row is written."""

import os
import shutil
import socket
import subprocess
import sys
import time

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from django.db import transaction

from django_kms_fields import clear_data_key_cache
from django_kms_fields.exceptions import DecryptionError, KeyProviderError
from django_kms_fields.models import DataKey
from django_kms_fields.providers import get_provider
from tests.conftest import AWS_REGION, local_settings
from tests.testapp.models import Note, Organisation, TenantRecord


@pytest.fixture
def fail_provider(kms, monkeypatch):
    """Make the next provider call of ``operation`` fail with ``code``."""

    def arrange(operation, code):
        provider = get_provider()
        if kms.provider == "aws":
            stubber = Stubber(provider.client)
            method = {"GenerateDataKey": "generate_data_key", "Decrypt": "decrypt"}[operation]
            stubber.add_client_error(
                method, service_error_code=code, service_message="injected", http_status_code=400
            )
            stubber.activate()
            return stubber
        method = {"GenerateDataKey": "generate_data_key", "Decrypt": "decrypt_data_key"}[operation]

        def fail(*args, **kwargs):
            raise KeyProviderError("injected", code=code)

        monkeypatch.setattr(provider, method, fail)
        return None

    return arrange


@pytest.mark.django_db
def test_generate_failure_writes_nothing_and_keeps_transaction(kms, fail_provider):
    organisation = Organisation.objects.create(name="o")
    with transaction.atomic():
        fail_provider("GenerateDataKey", "KMSInvalidStateException")
        with pytest.raises(KeyProviderError) as excinfo:
            TenantRecord.objects.create(organisation=organisation, secret="never written")
        assert excinfo.value.code == "KMSInvalidStateException"
        assert TenantRecord.objects.count() == 0
        assert DataKey.objects.count() == 0
        # The transaction is still usable, without a savepoint.
        Organisation.objects.create(name="after the failure")
    assert Organisation.objects.count() == 2


@pytest.mark.django_db
def test_generate_failure_in_bulk_create(kms, fail_provider):
    organisation = Organisation.objects.create(name="o")
    fail_provider("GenerateDataKey", "AccessDeniedException")
    with pytest.raises(KeyProviderError) as excinfo, transaction.atomic():
        TenantRecord.objects.bulk_create(
            [TenantRecord(organisation=organisation, secret="x") for _ in range(3)]
        )
    assert excinfo.value.code == "AccessDeniedException"
    assert TenantRecord.objects.count() == 0


@pytest.mark.django_db
def test_decrypt_failure_is_a_provider_error(kms, fail_provider):
    note = Note.objects.create(text="x")
    clear_data_key_cache()
    fail_provider("Decrypt", "AccessDeniedException")
    with pytest.raises(KeyProviderError) as excinfo:
        Note.objects.get(pk=note.pk).text
    assert excinfo.value.code == "AccessDeniedException"
    assert not isinstance(excinfo.value, DecryptionError)


@pytest.mark.django_db
def test_decrypt_failure_in_values_list(kms, fail_provider):
    Note.objects.create(text="x")
    clear_data_key_cache()
    fail_provider("Decrypt", "DisabledException")
    with pytest.raises(KeyProviderError) as excinfo:
        list(Note.objects.values_list("text", flat=True))
    assert excinfo.value.code == "DisabledException"


@pytest.mark.django_db
def test_corrupt_wrapped_key_is_a_decryption_error(kms):
    note = Note.objects.create(text="x")
    key = DataKey.objects.get()
    wrapped = bytearray(key.wrapped_key)
    wrapped[-1] ^= 1
    DataKey.objects.filter(pk=key.pk).update(wrapped_key=bytes(wrapped))
    clear_data_key_cache()
    with pytest.raises(DecryptionError, match="testapp.Note.text"):
        Note.objects.get(pk=note.pk).text


@pytest.mark.django_db
def test_missing_local_master_key(settings):
    settings.KMS_FIELDS = local_settings("primary")
    note = Note.objects.create(text="x")
    clear_data_key_cache()
    settings.KMS_FIELDS = {
        **local_settings("secondary"),
        "LOCAL_MASTER_KEYS": {"secondary": settings.LOCAL_MASTER_KEYS["secondary"]},
    }
    with pytest.raises(KeyProviderError) as excinfo:
        Note.objects.get(pk=note.pk).text
    assert excinfo.value.code == "NotFoundException"
    assert "'primary'" in str(excinfo.value)


def throttled_response():
    class Raw:
        def stream(self, **kwargs):
            yield b'{"__type": "ThrottlingException", "message": "Rate exceeded"}'

    return AWSResponse(
        "https://kms.eu-west-1.amazonaws.com/",
        400,
        {"x-amzn-RequestId": "1", "Content-Type": "application/x-amz-json-1.1"},
        Raw(),
    )


@pytest.mark.django_db
def test_throttling_is_retried(settings, aws_keys):
    settings.KMS_FIELDS = {
        "PROVIDER": "aws",
        "MASTER_KEY_ID": "alias/tests",
        "AWS_CLIENT": {"region_name": AWS_REGION},
    }
    client = get_provider().client
    assert client.meta.config.retries["mode"] == "standard"
    attempts = []

    def throttle_twice(request, **kwargs):
        attempts.append(1)
        if len(attempts) <= 2:
            return throttled_response()
        return None

    client.meta.events.register_first("before-send.kms.GenerateDataKey", throttle_twice)
    note = Note.objects.create(text="after throttling")
    assert len(attempts) == 3
    assert Note.objects.get(pk=note.pk).text == "after throttling"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def moto_server():
    """A moto_server process on 127.0.0.1 that the test can stop."""
    executable = shutil.which("moto_server") or os.path.join(
        os.path.dirname(sys.executable), "moto_server"
    )
    if not os.path.exists(executable):
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    process = subprocess.Popen(
        [executable, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("moto_server did not start within 30 seconds")
    yield endpoint, process
    process.kill()
    process.wait()


@pytest.mark.django_db
def test_stopped_kms_endpoint(settings, moto_server):
    from botocore.config import Config

    endpoint, process = moto_server
    client = boto3.client("kms", region_name=AWS_REGION, endpoint_url=endpoint)
    key_arn = client.create_key()["KeyMetadata"]["Arn"]
    settings.KMS_FIELDS = {
        "PROVIDER": "aws",
        "MASTER_KEY_ID": key_arn,
        "AWS_CLIENT": {
            "region_name": AWS_REGION,
            "endpoint_url": endpoint,
            "config": Config(retries={"mode": "standard", "max_attempts": 1}),
        },
    }
    organisation = Organisation.objects.create(name="o")
    record = TenantRecord.objects.create(organisation=organisation, secret="written")
    assert TenantRecord.objects.get(pk=record.pk).secret == "written"

    process.kill()
    process.wait()
    clear_data_key_cache()

    with pytest.raises(KeyProviderError) as excinfo:
        TenantRecord.objects.get(pk=record.pk).secret
    assert excinfo.value.code == "EndpointConnectionError"

    other = Organisation.objects.create(name="new tenant")
    with pytest.raises(KeyProviderError) as excinfo:
        TenantRecord.objects.create(organisation=other, secret="never written")
    assert excinfo.value.code == "EndpointConnectionError"
    assert TenantRecord.objects.count() == 1
