"""Profile reading encrypted values, and time the C-level work every value needs.

Run: python benchmarks/profile_reads.py [--rows 10000]

Fills the benchmark tables on SQLite (or the database of DATABASE_URL), then
prints:

- the per-value cost of the steps that no implementation can skip: base64
  decoding, AES-256-GCM decryption and UTF-8 decoding of a real token;
- the per-row cost of a plain TextField and of EncryptedTextField (global
  scope, warm key cache), for loading instances and reading the field, and
  for values_list();
- the functions that dominate the encrypted read, from cProfile.

docs/performance.rst records what this printed.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def per_row_microseconds(statement: str, rows: int, namespace: dict[str, object]) -> float:
    timer = timeit.Timer(statement, globals=namespace)
    return min(timer.repeat(repeat=5, number=1)) / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    arguments = parser.parse_args()

    from benchmarks.common import setup_benchmark_django

    setup_benchmark_django()
    from django.db import connection

    from benchmarks.benchapp.models import GlobalScope, Plain, Tenant
    from benchmarks.fields import TENANTS, create_tables, sample_text
    from django_kms_fields import ciphers
    from django_kms_fields.keyring import get_keyring

    create_tables()
    tenants = Tenant.objects.bulk_create([Tenant(name=f"tenant {i}") for i in range(TENANTS)])
    for model in (Plain, GlobalScope):
        model.objects.bulk_create(
            [
                model(tenant=tenants[number % TENANTS], text=sample_text(number))
                for number in range(arguments.rows)
            ],
            batch_size=1000,
        )

    # The unavoidable work for one value, on a real token.
    with connection.cursor() as cursor:
        cursor.execute("SELECT text FROM benchapp_globalscope LIMIT 1")
        (token,) = cursor.fetchone()
    GlobalScope.objects.first().text  # warm the key cache
    entry = next(iter(get_keyring()._entries.values()))
    payload = token[ciphers.HEADER_LENGTH :]
    padded = payload + ciphers._PADDING[len(payload) % 4]
    raw = ciphers._b64decode(padded)
    associated = entry.associated_data("global", GlobalScope._meta.get_field("text").label)
    nonce, sealed = raw[: ciphers.NONCE_LENGTH], raw[ciphers.NONCE_LENGTH :]
    plaintext = entry.aead.decrypt(nonce, sealed, associated)
    namespace = {**globals(), **locals()}
    floor = {
        "base64 decoding": "ciphers._b64decode(padded)",
        "AES-256-GCM decryption": "entry.aead.decrypt(nonce, sealed, associated)",
        "UTF-8 decoding": "plaintext.decode()",
    }
    print(f"Work every value needs ({len(plaintext)}-byte plaintext, microseconds):")
    total = 0.0
    for name, statement in floor.items():
        cost = min(timeit.repeat(statement, globals=namespace, number=100_000, repeat=5)) * 10
        total += cost
        print(f"  {name:24} {cost:5.2f}")
    print(f"  {'total':24} {total:5.2f}")

    def read_all(model: type) -> None:
        for instance in model.objects.all():
            instance.text

    namespace.update(read_all=read_all)
    print("Per row, microseconds (best of 5):")
    for label, statement in (
        ("load instances, read", "read_all({model})"),
        ("values_list", "list({model}.objects.values_list('text', flat=True))"),
    ):
        plain = per_row_microseconds(statement.format(model="Plain"), arguments.rows, namespace)
        encrypted = per_row_microseconds(
            statement.format(model="GlobalScope"), arguments.rows, namespace
        )
        print(
            f"  {label:22} plain {plain:5.2f}  encrypted {encrypted:5.2f}  "
            f"difference {encrypted - plain:5.2f}  floor ratio {(plain + total) / plain:4.2f}x"
        )

    print("cProfile of loading instances and reading the encrypted field:")
    profile = cProfile.Profile()
    profile.runcall(read_all, GlobalScope)
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
