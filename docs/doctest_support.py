"""Helpers for the hidden set-up of the documentation's examples."""

from typing import Any

from django.apps import apps
from django.db import connection

_database_ready = False


def setup_database() -> None:
    """Create the in-memory test database once per build, with every migration applied."""
    global _database_ready
    if not _database_ready:
        connection.creation.create_test_db(verbosity=0, serialize=False)
        _database_ready = True


def create_tables(*models: Any) -> None:
    """Create the tables of models that an example just defined."""
    with connection.schema_editor() as editor:
        for model in models:
            editor.create_model(model)


def forget_models(*models: Any, drop_tables: bool = True) -> None:
    """Remove an example's models from the app registry, and drop their tables.

    Another page can then define a model of the same name without Django's
    "already registered" warning.
    """
    if drop_tables:
        with connection.schema_editor() as editor:
            for model in models:
                editor.delete_model(model)
    for model in models:
        del apps.all_models[model._meta.app_label][model._meta.model_name]
    apps.clear_cache()
