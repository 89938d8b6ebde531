"""Settings for the benchmarks.

DATABASE_URL selects the database; by default SQLite in a temporary file.
"""

import base64
import importlib.util
import os
import tempfile

import environ

from tests.settings import LOCAL_MASTER_KEYS

env = environ.Env()

SECRET_KEY = "django-kms-fields-benchmarks"  # noqa: S105
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": env.db(
        "DATABASE_URL",
        default=f"sqlite:///{tempfile.gettempdir()}/django_kms_fields_fields_bench.sqlite3",
    )
}

KMS_FIELDS = {
    "PROVIDER": "local",
    "MASTER_KEY_ID": "primary",
    "LOCAL_MASTER_KEYS": LOCAL_MASTER_KEYS,
    "ALLOW_LOCAL_PROVIDER": True,
}

INSTALLED_APPS = ["django.contrib.contenttypes", "django_kms_fields", "benchmarks.benchapp"]

# The peer packages compared with, where they are installed (pip install -e ".[bench]").
PEERS = {
    "encrypted_fields": importlib.util.find_spec("encrypted_fields") is not None,
    "encrypted_model_fields": importlib.util.find_spec("encrypted_model_fields") is not None,
}
# django-fernet-encrypted-fields derives its key from SECRET_KEY and SALT_KEY.
SALT_KEY = ["django-kms-fields-benchmark-salt"]
# django-encrypted-model-fields takes a Fernet key.
FIELD_ENCRYPTION_KEY = base64.urlsafe_b64encode(b"benchmark key 0123456789abcdef!!").decode()
if PEERS["encrypted_model_fields"]:
    INSTALLED_APPS.append("encrypted_model_fields")

os.environ.setdefault("HTTPS_PROXY", "http://127.0.0.1:9")
