"""Settings of the example project, read from the environment with django-environ.

Every value has a default that works offline: SQLite in ``db.sqlite3`` and the
local key provider with a key generated on first run into ``.dev-secrets/``.
Set ``EXAMPLE_SECRET_ID`` to load variables from an AWS Secrets Manager
secret first; variables set in the environment win over it.

Variables: ``DEBUG``, ``SECRET_KEY``, ``ALLOWED_HOSTS``, ``DATABASE_URL``,
``KMS_FIELDS_PROVIDER`` (``local`` or ``aws``), ``KMS_FIELDS_MASTER_KEY_ID``,
``KMS_FIELDS_AWS_ENDPOINT_URL``, ``KMS_FIELDS_ALLOWED_MASTER_KEY_IDS``,
``AWS_DEFAULT_REGION``,
``KMS_FIELDS_CACHE_TTL`` (seconds).
"""

import os

import environ

from .secrets import (
    BASE_DIR,
    dev_secret,
    load_secret_into_environment,
    new_master_key,
    new_secret_key,
)

load_secret_into_environment(os.environ.get("EXAMPLE_SECRET_ID"))
env = environ.Env()

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env("SECRET_KEY", default=None) or dev_secret("secret_key", new_secret_key)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The development server and seed_demo may write at the same time.
    DATABASES["default"].setdefault("OPTIONS", {})["transaction_mode"] = "IMMEDIATE"

if env("KMS_FIELDS_PROVIDER", default="local") == "aws":
    KMS_FIELDS = {
        "PROVIDER": "aws",
        "MASTER_KEY_ID": env("KMS_FIELDS_MASTER_KEY_ID"),
        "AWS_CLIENT": {
            "region_name": env("AWS_DEFAULT_REGION", default="eu-west-1"),
            "endpoint_url": env("KMS_FIELDS_AWS_ENDPOINT_URL", default=None),
        },
        # Comma-separated key ARNs; unset allows any master key.
        "ALLOWED_MASTER_KEY_IDS": env.list("KMS_FIELDS_ALLOWED_MASTER_KEY_IDS", default=None),
    }
else:
    KMS_FIELDS = {
        "PROVIDER": "local",
        "MASTER_KEY_ID": "dev",
        "LOCAL_MASTER_KEYS": {
            "dev": env("KMS_FIELDS_LOCAL_KEY", default=None)
            or dev_secret("local_master_key", new_master_key)
        },
        # Only with DEBUG = False; the local provider never belongs in production.
        "ALLOW_LOCAL_PROVIDER": env.bool("KMS_FIELDS_ALLOW_LOCAL_PROVIDER", default=False),
    }
KMS_FIELDS["DATA_KEY_CACHE_TTL"] = env.int("KMS_FIELDS_CACHE_TTL", default=300)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_kms_fields",
    "clinic",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"

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

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_kms_fields": {"handlers": ["console"], "level": "INFO"}},
}
