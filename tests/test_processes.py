"""Concurrent first writes for new tenants from separate processes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from django_kms_fields import clear_data_key_cache
from django_kms_fields.models import DataKey
from tests.conftest import database_url, local_settings
from tests.testapp.models import Organisation, TenantRecord

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db(transaction=True)
def test_two_processes_create_one_active_key_per_tenant(settings):
    kms_settings = {**local_settings(), "PROVIDER": "tests.custom_provider.SlowProvider"}
    settings.KMS_FIELDS = kms_settings
    organisations = [Organisation.objects.create(name=f"new {i}") for i in range(4)]
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "KMS_FIELDS_TEST_OVERRIDE": json.dumps(kms_settings),
    }
    start_at = time.time() + 3
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.race_worker", str(start_at)]
            + [str(organisation.pk) for organisation in organisations],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    generated = 0
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr
        generated += int(stdout.strip())
    if connection.vendor != "sqlite":
        # Both processes generated a key for at least one tenant, so the race
        # really happened; the database kept one of them. (SQLite runs the
        # two transactions one after the other.)
        assert generated > len(organisations)

    for organisation in organisations:
        keys = DataKey.objects.filter(scope=f"tenant:{organisation.pk}")
        assert keys.count() == 1
        assert keys.get().state == DataKey.State.ACTIVE
    clear_data_key_cache()
    secrets = [record.secret for record in TenantRecord.objects.all()]
    assert len(secrets) == 8
    assert len({secret.split()[1] for secret in secrets}) == 2
