"""Re-encryption speed: rotate_keys --reencrypt against a plain bulk_update of the same rows.

Run from the repository root:

    python benchmarks/reencrypt.py                      # SQLite in a temporary file
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kms_fields_bench python benchmarks/reencrypt.py

The database named by DATABASE_URL is created if needed and its tables are
emptied. Each round updates every row's plain 200-byte text column with
``bulk_update()`` (1,000 rows per call and transaction), then rotates the
global data key and re-encrypts every row's encrypted 200-byte text column
with ``rotate_keys --reencrypt --batch-size 1000``. The script prints the
median of the rounds as a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the table")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per operation")
    arguments = parser.parse_args()

    os.environ.setdefault(
        "DATABASE_URL", f"sqlite:///{tempfile.gettempdir()}/django_kms_fields_bench.sqlite3"
    )
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    from benchmarks.common import ensure_database

    ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()

    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    results = measure(arguments.rows, arguments.rounds)
    report(arguments.rows, arguments.rounds, results)


def measure(rows: int, rounds: int) -> dict[str, list[float]]:
    import io
    import json
    import random
    import string

    from django.core.management import call_command
    from django.db import transaction

    from django_kms_fields import clear_data_key_cache
    from django_kms_fields.models import DataKey
    from tests.testapp.models import Note

    Note.objects.all().delete()
    DataKey.objects.all().delete()
    randomness = random.Random(42)  # noqa: S311 - sample text, not key material
    alphabet = string.ascii_letters + string.digits + " éß✓"

    def text() -> str:
        return "".join(randomness.choices(alphabet, k=200))

    for start in range(0, rows, 5000):
        with transaction.atomic():
            Note.objects.bulk_create(
                [
                    Note(title="bench", text=text(), plain=text())
                    for _ in range(min(5000, rows - start))
                ]
            )

    results: dict[str, list[float]] = {"bulk_update": [], "reencrypt": [], "kms_calls": []}
    for _round in range(rounds):
        notes = list(Note.objects.only("pk", "plain").order_by("pk"))
        for note in notes:
            note.plain = text()
        started = time.perf_counter()
        for start in range(0, len(notes), 1000):
            with transaction.atomic():
                Note.objects.bulk_update(notes[start : start + 1000], ["plain"])
        results["bulk_update"].append(time.perf_counter() - started)
        del notes

        call_command("rotate_keys", verbosity=0)
        # Start cold, as a fresh process would: every data key costs one Decrypt.
        clear_data_key_cache()
        output = io.StringIO()
        started = time.perf_counter()
        call_command(
            "rotate_keys",
            "--reencrypt",
            "--batch-size",
            "1000",
            "--delete-after",
            "0",
            "--json",
            stdout=output,
            verbosity=0,
        )
        results["reencrypt"].append(time.perf_counter() - started)
        summary = json.loads(output.getvalue())
        assert summary["values_reencrypted"] == rows, summary
        results["kms_calls"].append(sum(summary["kms_calls"].values()))
    return results


def report(rows: int, rounds: int, results: dict[str, list[float]]) -> None:
    import cryptography
    import django
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sqlite_version()" if connection.vendor == "sqlite" else "SELECT version()"
        )
        database_version = cursor.fetchone()[0].split(" on ")[0].split(",")[0]
    bulk_update = statistics.median(results["bulk_update"])
    reencrypt = statistics.median(results["reencrypt"])
    print(
        f"{connection.vendor} {database_version}; Python {platform.python_version()}, "
        f"Django {django.__version__}, cryptography {cryptography.__version__}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs; {rows} rows, median of {rounds} rounds"
    )
    print()
    print("| Operation | Seconds | Rows per second | Ratio to bulk_update |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| plain `bulk_update` | {bulk_update:.2f} | {rows / bulk_update:,.0f} | 1.00 |")
    print(
        f"| `rotate_keys --reencrypt` | {reencrypt:.2f} | {rows / reencrypt:,.0f} | "
        f"{reencrypt / bulk_update:.2f} |"
    )
    print()
    print(
        "KMS calls per re-encryption run, on a cold cache: "
        f"{statistics.median(results['kms_calls']):.0f} (one Decrypt per data key involved)"
    )


if __name__ == "__main__":
    main()
