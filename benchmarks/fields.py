"""Field benchmarks: a plain TextField against EncryptedTextField and peer packages.

Run through ``make bench`` (SQLite and PostgreSQL, results in
docs/benchmark-results.inc), or for one database:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kms_fields_bench \\
        python benchmarks/fields.py --rows 1000 10000 --json /tmp/results.json

Every storage gets the same rows: about 100 bytes of multilingual UTF-8 text,
spread over 10 tenants. Each measurement is repeated and the median kept.
Encrypted fields are measured with a warm data key cache (the steady state of
a running site) and, for reads, with a cold one, using the local key
provider: a cold read's KMS Decrypt latency comes on top.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TENANTS = 10
SINGLE_ROW_OPERATIONS = 200
PHRASES = [
    "Patient reports mild headache since Tuesday",
    "Termin verschoben, Rückruf am Freitag",
    "血圧は正常範囲、次回は三か月後",
    "Пациент жалуется на боль в спине",
    "المريض يحتاج إلى متابعة بعد أسبوعين",
    "रोगी को आराम की सलाह दी गई",
    "Allergie à la pénicilline ✓",
]


def sample_text(number: int) -> str:
    """About 100 bytes of UTF-8 in several scripts, different for each row."""
    text = f"{number:07d} "
    index = number
    while len(text.encode()) < 100:
        text += PHRASES[index % len(PHRASES)] + " "
        index += 3
    encoded = text.encode()[:100]
    return encoded.decode(errors="ignore")


def median_seconds(
    action: Callable[[], Any], rounds: int, before: Callable[[], Any] | None = None
) -> float:
    timings = []
    for _ in range(rounds):
        if before is not None:
            before()
        gc.collect()
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def storages() -> dict[str, Any]:
    from benchmarks.benchapp import models

    found = {"plain": models.Plain, "global": models.GlobalScope, "tenant": models.TenantScope}
    if hasattr(models, "FernetFields"):
        found["fernet_fields"] = models.FernetFields
    if hasattr(models, "EncryptedModelFields"):
        found["encrypted_model_fields"] = models.EncryptedModelFields
    return found


def create_tables() -> None:
    from django.db import connection

    from benchmarks.benchapp.models import Tenant

    tables = [Tenant, *storages().values()]
    existing = set(connection.introspection.table_names())
    with connection.schema_editor() as editor:
        for model in reversed(tables):
            if model._meta.db_table in existing:
                editor.delete_model(model)
        for model in tables:
            editor.create_model(model)


def benchmark_storage(name: str, model: Any, rows: int, rounds: int) -> dict[str, Any]:
    from django.db import connection, transaction

    from benchmarks.benchapp.models import Tenant
    from django_kms_fields import clear_data_key_cache
    from django_kms_fields.keyring import get_keyring

    keyring = get_keyring()
    encrypted = name in ("global", "tenant")
    tenants = list(Tenant.objects.order_by("pk"))
    texts = [sample_text(number) for number in range(rows)]
    result: dict[str, Any] = {}

    def reset() -> None:
        model.objects.all().delete()

    def bulk_create() -> None:
        objects = [
            model(tenant=tenants[number % TENANTS], text=text) for number, text in enumerate(texts)
        ]
        with transaction.atomic():
            model.objects.bulk_create(objects, batch_size=1000)

    result["bulk_create"] = median_seconds(bulk_create, rounds, before=reset)
    if encrypted:
        from django_kms_fields.models import DataKey

        DataKey.objects.all().delete()
        clear_data_key_cache()
        reset()
        keyring.reset_provider_calls()
        bulk_create()
        result["kms_calls_bulk_create_new_scopes"] = keyring.provider_calls

    def read_all() -> None:
        for instance in model.objects.all():
            instance.text

    result["load_and_read"] = median_seconds(read_all, rounds)
    result["load_only"] = median_seconds(lambda: list(model.objects.all()), rounds)
    result["values_list"] = median_seconds(
        lambda: list(model.objects.values_list("text", flat=True)), rounds
    )

    def iterate() -> None:
        for instance in model.objects.iterator(chunk_size=2000):
            instance.text

    result["iterator"] = median_seconds(iterate, rounds)

    pks = list(model.objects.order_by("?").values_list("pk", flat=True)[:SINGLE_ROW_OPERATIONS])

    def get_each() -> None:
        for pk in pks:
            model.objects.get(pk=pk).text

    result["get"] = median_seconds(get_each, rounds) / len(pks)

    instances = list(model.objects.filter(pk__in=pks))

    def save_each() -> None:
        for number, instance in enumerate(instances):
            instance.text = sample_text(rows + number)
            instance.save()

    result["save"] = median_seconds(save_each, rounds) / len(instances)

    if encrypted:
        keyring.reset_provider_calls()
        result["load_and_read_cold"] = median_seconds(read_all, rounds, before=clear_data_key_cache)
        clear_data_key_cache()
        keyring.reset_provider_calls()
        read_all()
        result["kms_calls_cold_read"] = keyring.provider_calls
        keyring.reset_provider_calls()
        read_all()
        result["kms_calls_warm_read"] = keyring.provider_calls

        def get_cold() -> None:
            for pk in pks:
                clear_data_key_cache()
                model.objects.get(pk=pk).text

        result["get_cold"] = median_seconds(get_cold, rounds) / len(pks)

    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT text FROM {table}")  # noqa: S608
        stored = [value for (value,) in cursor.fetchall()]
    result["stored_characters"] = statistics.mean(len(value) for value in stored)
    result["plaintext_bytes"] = statistics.mean(len(text.encode()) for text in texts)
    return result


def environment() -> dict[str, str]:
    import cryptography
    import django
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sqlite_version()" if connection.vendor == "sqlite" else "SELECT version()"
        )
        version = cursor.fetchone()[0].split(" on ")[0].split(",")[0]
    return {
        "database": f"{connection.vendor} {version}",
        "python": platform.python_version(),
        "django": django.__version__,
        "cryptography": cryptography.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=5, help="repetitions (3 above 50,000 rows)")
    parser.add_argument("--json", type=Path, required=True, help="file to write the results to")
    arguments = parser.parse_args()

    from benchmarks.common import setup_benchmark_django

    setup_benchmark_django()
    from benchmarks.benchapp.models import Tenant

    results: dict[str, Any] = {"environment": environment(), "runs": []}
    for rows in arguments.rows:
        create_tables()
        Tenant.objects.bulk_create([Tenant(name=f"tenant {i}") for i in range(TENANTS)])
        rounds = arguments.rounds if rows <= 50_000 else min(arguments.rounds, 3)
        run = {"rows": rows, "rounds": rounds, "storages": {}}
        for name, model in storages().items():
            print(f"{results['environment']['database']}: {rows} rows, {name}", file=sys.stderr)
            run["storages"][name] = benchmark_storage(name, model, rows, rounds)
        results["runs"].append(run)
        arguments.json.write_text(json.dumps(results, indent=2))
    print(f"Wrote {arguments.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
