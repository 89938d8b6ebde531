"""Settings for the test suite.

SQLite in memory by default; set DATABASE_URL (read with django-environ) to
run on PostgreSQL or MariaDB, for example::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
    DATABASE_URL=mysql://root@127.0.0.1:3306/test
"""

import os
import tempfile

import environ

# A request that escapes moto's mock goes to a closed port on loopback and
# fails at once, instead of reaching AWS. moto_server runs on plain HTTP on
# 127.0.0.1, which this proxy does not affect.
os.environ["HTTPS_PROXY"] = "http://127.0.0.1:9"
os.environ["https_proxy"] = "http://127.0.0.1:9"
os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ["no_proxy"] = "127.0.0.1,localhost"
# Fake credentials for moto; no test talks to AWS.
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_SESSION_TOKEN"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "eu-west-1"
# Variables that would send boto3 elsewhere, left behind in the shell by
# example_project/.dev-secrets/moto.env for example.
for name in list(os.environ):
    if name in ("AWS_PROFILE", "AWS_CONFIG_FILE") or name.startswith("AWS_ENDPOINT_URL"):
        del os.environ[name]

env = environ.Env()

SECRET_KEY = "django-kms-fields-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "Europe/Paris"

DATABASES = {"default": env.db("DATABASE_URL", default="sqlite://:memory:")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes write to the same file in some tests; deferred
    # transactions would fail with "database is locked" instead of waiting.
    DATABASES["default"].setdefault("OPTIONS", {})["transaction_mode"] = "IMMEDIATE"
if DATABASES["default"]["NAME"] == ":memory:":
    # A file, so that tests can share the test database with subprocesses.
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(
            tempfile.gettempdir(), f"django_kms_fields_tests_{os.getpid()}.sqlite3"
        )
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    DATABASES["default"].setdefault("OPTIONS", {})["charset"] = "utf8mb4"
    DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}

# A second database on the same server, for tests of rows copied between
# databases. pytest-django only creates it for tests that ask for it.
DATABASES["other"] = {
    **DATABASES["default"],
    "TEST": {**DATABASES["default"].get("TEST", {}), "NAME": None},
}
if DATABASES["other"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["other"]["TEST"]["NAME"] = os.path.join(
        tempfile.gettempdir(), f"django_kms_fields_tests_other_{os.getpid()}.sqlite3"
    )
else:
    DATABASES["other"]["TEST"]["NAME"] = f"test_{DATABASES['default']['NAME']}_other"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_kms_fields",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# Fast hashing for the users the admin tests log in.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Two local master keys, so that tests can re-wrap data keys from one to the other.
LOCAL_MASTER_KEYS = {
    "primary": "ZGphbmdvLWttcy1maWVsZHMgdGVzdCBrZXkgMDAwMDE=",
    "secondary": "ZGphbmdvLWttcy1maWVsZHMgdGVzdCBrZXkgMDAwMDI=",
}

KMS_FIELDS = {
    "PROVIDER": "local",
    "MASTER_KEY_ID": "primary",
    "LOCAL_MASTER_KEYS": LOCAL_MASTER_KEYS,
    "ALLOW_LOCAL_PROVIDER": True,
}

# Lets tests that start subprocesses give them the same key provider settings.
if "KMS_FIELDS_TEST_OVERRIDE" in os.environ:
    import json

    KMS_FIELDS = json.loads(os.environ["KMS_FIELDS_TEST_OVERRIDE"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_kms_fields": {"handlers": ["console"], "level": "WARNING"}},
}
