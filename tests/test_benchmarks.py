"""The benchmark scripts still run, and count what the docs say they count.

They run as subprocesses on a SQLite file of their own, with a few rows, so
these tests check the scripts and their figures' invariants, never speed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_script(script: str, *arguments: str, database: Path) -> str:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "DJANGO_SETTINGS_MODULE", "DATABASE_URL"))
    }
    environment["DATABASE_URL"] = f"sqlite:///{database}"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *arguments],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@pytest.fixture
def field_results(tmp_path):
    output = tmp_path / "results.json"
    run_script(
        "fields.py",
        "--rows",
        "40",
        "--rounds",
        "1",
        "--json",
        str(output),
        database=tmp_path / "fields.sqlite3",
    )
    return output


def test_field_benchmark_counts_kms_calls(field_results):
    results = json.loads(field_results.read_text())
    (run,) = results["runs"]
    tenant = run["storages"]["tenant"]
    global_scope = run["storages"]["global"]

    assert run["rows"] == 40
    assert tenant["kms_calls_bulk_create_new_scopes"] == {"GenerateDataKey": 10}
    assert tenant["kms_calls_cold_read"] == {"Decrypt": 10}
    assert tenant["kms_calls_warm_read"] == {}
    assert global_scope["kms_calls_bulk_create_new_scopes"] == {"GenerateDataKey": 1}
    assert global_scope["kms_calls_cold_read"] == {"Decrypt": 1}
    assert global_scope["kms_calls_warm_read"] == {}


def test_field_benchmark_storage_within_limit(field_results):
    results = json.loads(field_results.read_text())
    (run,) = results["runs"]

    for name in ("global", "tenant"):
        storage = run["storages"][name]
        limit = 4 / 3 * (storage["plaintext_bytes"] + 40)
        assert storage["stored_characters"] <= limit, name
    for name, storage in run["storages"].items():
        assert storage["load_and_read"] > 0, name
        assert storage["values_list"] > 0, name


def test_render_writes_tables(field_results):
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "render.py"), str(field_results)],
        capture_output=True,
        text=True,
        check=True,
    )

    assert "40 rows, 1 round" in completed.stdout
    assert ".. list-table::" in completed.stdout
    assert "10 ``Decrypt``" in completed.stdout


def test_reencrypt_benchmark_reports_calls(tmp_path):
    output = run_script(
        "reencrypt.py", "--rows", "300", "--rounds", "1", database=tmp_path / "re.sqlite3"
    )

    assert "| `rotate_keys --reencrypt` |" in output
    assert "on a cold cache: 2 (one Decrypt per data key involved)" in output
