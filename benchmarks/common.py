"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os


def ensure_database(url: str) -> None:
    """Create the PostgreSQL or MariaDB database of ``url`` if it does not exist."""
    import environ

    settings = environ.Env.db_url_config(url)
    engine = settings["ENGINE"]
    if engine.endswith("postgresql"):
        import psycopg

        with psycopg.connect(
            host=settings["HOST"],
            port=settings["PORT"] or 5432,
            user=settings["USER"],
            dbname="postgres",
            autocommit=True,
        ) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [settings["NAME"]]
            ).fetchone()
            if not exists:
                connection.execute(f'CREATE DATABASE "{settings["NAME"]}"')
    elif engine.endswith("mysql"):
        import MySQLdb

        connection = MySQLdb.connect(
            host=settings["HOST"],
            port=int(settings["PORT"] or 3306),
            user=settings["USER"],
            passwd=settings["PASSWORD"] or "",
        )
        connection.cursor().execute(
            f"CREATE DATABASE IF NOT EXISTS `{settings['NAME']}` CHARACTER SET utf8mb4"
        )
        connection.close()


def setup_benchmark_django() -> None:
    """Configure Django with benchmarks.settings and migrate its database."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    if "DATABASE_URL" in os.environ:
        ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
