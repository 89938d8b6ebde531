"""rotate_keys as separate processes: killed runs, concurrent writers, several runs at once."""

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import connection, connections, models, transaction

from django_kms_fields import ciphers, clear_data_key_cache
from django_kms_fields.models import DataKey
from tests.conftest import database_url, local_settings
from tests.testapp.models import Note, Organisation, RowRecord, TenantRecord

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def local_provider(settings):
    """The subprocesses read tests.settings, so this process uses the same local keys."""
    settings.KMS_FIELDS = local_settings()
    clear_data_key_cache()


def start(*args, pause=0.0):
    """Start rotate_keys in a subprocess with a pause inside each batch."""
    env = {**os.environ, "DATABASE_URL": database_url()}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.slow_rotate", str(pause), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def seed(notes=60, records=60, rows=20):
    organisations = [Organisation.objects.create(name=f"org {i}") for i in range(4)]
    Note.objects.bulk_create(
        [Note(title=str(i), text=f"note {i} ✓", number=i) for i in range(notes)]
    )
    TenantRecord.objects.bulk_create(
        [
            TenantRecord(organisation=organisations[i % 4], secret=f"secret {i}", score=i)
            for i in range(records)
        ]
    )
    RowRecord.objects.bulk_create([RowRecord(secret=f"row {i}") for i in range(rows)])
    return organisations


def plaintexts():
    clear_data_key_cache()
    return {
        "notes": sorted(Note.objects.values_list("pk", "text", "number")),
        "records": sorted(TenantRecord.objects.values_list("pk", "secret", "details", "score")),
        "rows": sorted((str(pk), s) for pk, s in RowRecord.objects.values_list("pk", "secret")),
    }


def stale_key_ids():
    """Key ids named by stored values that are not their scope's active key."""
    active = {
        ciphers.encode_key_id(pk)
        for pk in DataKey.objects.filter(state="active").values_list("pk", flat=True)
    }
    stale = set()
    for model, name in (
        (Note, "text"),
        (Note, "number"),
        (TenantRecord, "secret"),
        (TenantRecord, "score"),
        (RowRecord, "secret"),
    ):
        tokens = model.objects.annotate(raw=models.functions.Cast(name, models.TextField()))
        for token in tokens.values_list("raw", flat=True):
            if token and token[4:15] not in active:
                stale.add(token[4:15])
    return stale


def test_killed_runs_lose_nothing():
    seed()
    originals = plaintexts()
    randomness = random.Random(os.environ.get("ROTATION_KILL_SEED", "rotate"))

    for attempt in range(8):
        run = start("--reencrypt", "--batch-size", "7", "--delete-after", "0", pause=0.02)
        time.sleep(randomness.uniform(0.3, 2.0))
        run.kill()
        run.wait()
        assert plaintexts() == originals, f"after kill {attempt}"

    finished = start("--reencrypt", "--batch-size", "7", "--delete-after", "0")
    _stdout, stderr = finished.communicate(timeout=300)
    assert finished.returncode == 0, stderr
    assert plaintexts() == originals
    assert stale_key_ids() == set()
    # A run that does not rotate again deletes the keys that the finished run
    # retired. (Without --no-rotate it would retire keys of its own whenever
    # the killed runs had rotated every scope and the finished run had
    # deleted all retired keys.)
    assert start("--reencrypt", "--no-rotate", "--delete-after", "0").wait(timeout=300) == 0
    assert DataKey.objects.filter(state="retired").count() == 0
    assert plaintexts() == originals


def test_application_writes_during_a_run_are_kept():
    seed(notes=80, records=80, rows=10)
    # This process plays the application. Its cache keeps the old active
    # keys, as a web server's would until DATA_KEY_CACHE_TTL passes, so the
    # run must not delete retired keys yet.
    run = start("--reencrypt", "--batch-size", "5", "--delete-after", "3600", pause=0.05)
    expected = {}
    randomness = random.Random(1)
    pks = list(TenantRecord.objects.values_list("pk", flat=True))
    deadline = time.monotonic() + 60
    writes = 0
    while run.poll() is None and time.monotonic() < deadline:
        record = TenantRecord.objects.get(pk=randomness.choice(pks))
        record.secret = f"written by the application {writes}"
        record.save()
        expected[record.pk] = record.secret
        writes += 1
    _stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    assert writes > 20

    clear_data_key_cache()
    for pk, secret in expected.items():
        assert TenantRecord.objects.get(pk=pk).secret == secret
    # Once the application's caches have expired (cleared above), a second
    # run moves the values written with the old keys and deletes those keys.
    finished = start("--reencrypt", "--delete-after", "0")
    assert finished.wait(timeout=120) == 0
    assert stale_key_ids() == set()
    clear_data_key_cache()
    for pk, secret in expected.items():
        assert TenantRecord.objects.get(pk=pk).secret == secret


def test_several_runs_share_the_work():
    if not connection.features.has_select_for_update_skip_locked:
        pytest.skip("needs SELECT ... FOR UPDATE SKIP LOCKED (PostgreSQL, MariaDB)")
    seed(notes=150, records=150, rows=0)
    total_values = 150 * 2 + 150 * 3
    runs = [
        start("--reencrypt", "--batch-size", "10", "--delete-after", "0", "--json", pause=0.05)
        for _ in range(3)
    ]
    summaries = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        summaries.append(json.loads(stdout))

    # One new key per scope (global and four tenants), whichever run made it.
    assert sum(summary["keys_created"] for summary in summaries) == 5
    # Each value was re-encrypted by exactly one run, and the runs overlapped.
    assert sum(summary["values_reencrypted"] for summary in summaries) == total_values
    helpers = [summary for summary in summaries if summary["values_reencrypted"]]
    assert len(helpers) >= 2, [(s["rows_scanned"], s["values_reencrypted"]) for s in summaries]
    assert stale_key_ids() == set()


def hold_sqlite_write_lock(seconds):
    """Hold SQLite's write lock from another thread for ``seconds``."""
    ready = threading.Event()

    def hold():
        try:
            with transaction.atomic():
                Organisation.objects.create(name="lock holder")
                ready.set()
                time.sleep(seconds)
                transaction.set_rollback(True)
        finally:
            connections.close_all()

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait(10)
    return thread


def test_sqlite_run_waits_for_the_write_lock():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite only")
    seed(notes=10, records=0, rows=0)
    holder = hold_sqlite_write_lock(1.5)
    run = start("--reencrypt", "--delete-after", "0", "--skip-checks")
    _stdout, stderr = run.communicate(timeout=60)
    holder.join()
    assert run.returncode == 0, stderr


def test_sqlite_run_stops_clearly_when_the_lock_stays_taken():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite only")
    seed(notes=10, records=0, rows=0)
    holder = hold_sqlite_write_lock(9)
    # Django 6.1's system checks query SQLite, which the lock would block.
    run = start("--reencrypt", "--delete-after", "0", "--skip-checks")
    _stdout, stderr = run.communicate(timeout=60)
    holder.join()
    assert run.returncode == 1
    assert "holds SQLite's write lock" in stderr
    assert "Run the same command again" in stderr
    assert plaintexts()["notes"][0][1] == "note 0 ✓"


def insert_copies(token, count, chunk=20_000):
    """Insert ``count`` notes that all hold ``token`` (valid: global values name no row)."""
    table = connection.ops.quote_name(Note._meta.db_table)
    with transaction.atomic(), connection.cursor() as cursor:
        for start_at in range(0, count, chunk):
            rows = [("bulk", token)] * min(chunk, count - start_at)
            cursor.executemany(f"INSERT INTO {table} (title, text) VALUES (%s, %s)", rows)


@pytest.mark.slow
def test_memory_stays_flat_for_a_million_rows():
    note = Note.objects.create(title="first", text="x" * 200)
    token = Note.objects.annotate(raw=models.functions.Cast("text", models.TextField()))
    insert_copies(token.values_list("raw", flat=True).get(pk=note.pk), 999_999)
    assert Note.objects.count() == 1_000_000
    assert start().wait(timeout=600) == 0  # rotate, so that every row needs re-encrypting

    run = start("--reencrypt", "--batch-size", "2000", "--delete-after", "0", "--json")
    stdout, stderr = run.communicate(timeout=3600)
    assert run.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["values_reencrypted"] == 1_000_000
    peak_kb = int(stderr.rsplit("peak_rss_kb=", 1)[1])
    print(f"peak memory of the run: {peak_kb / 1024:.0f} MB")
    assert peak_kb < 200 * 1024, f"peak memory {peak_kb / 1024:.0f} MB"
    assert stale_key_ids() == set()
    clear_data_key_cache()
    assert set(Note.objects.values_list("text", flat=True)[:1000]) == {"x" * 200}


def test_rows_held_by_the_application_are_waited_for():
    if not connection.features.has_select_for_update_skip_locked:
        pytest.skip("needs SELECT ... FOR UPDATE SKIP LOCKED (PostgreSQL, MariaDB)")
    seed(notes=40, records=0, rows=0)
    held = list(Note.objects.order_by("pk").values_list("pk", flat=True)[5:8])
    locked = threading.Event()
    release = threading.Event()

    def hold_rows():
        try:
            with transaction.atomic():
                list(Note.objects.select_for_update().filter(pk__in=held))
                locked.set()
                release.wait(30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_rows)
    holder.start()
    locked.wait(10)
    run = start("--reencrypt", "--batch-size", "10", "--json")
    time.sleep(3)  # the first pass skips the held rows, the second waits for them
    release.set()
    stdout, stderr = run.communicate(timeout=120)
    holder.join()
    assert run.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["rows_waited_for"] >= 3
    assert summary["values_reencrypted"] == 40 * 2
    assert stale_key_ids() == set()
