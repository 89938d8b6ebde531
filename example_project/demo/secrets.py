"""Where the example project's settings come from, besides the environment.

- ``dev_secret()`` keeps development secrets (the local master key, the
  ``SECRET_KEY``) in ``.dev-secrets/``, generated on first use and ignored by
  git. ``EXAMPLE_SECRETS_DIR`` moves that folder.
- ``load_secret_into_environment()`` copies the keys of an AWS Secrets Manager
  secret into the environment, so that credentials stay out of files.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def secrets_dir() -> Path:
    return Path(os.environ.get("EXAMPLE_SECRETS_DIR", BASE_DIR / ".dev-secrets"))


def dev_secret(name: str, generate: callable) -> str:  # type: ignore[valid-type]
    """Read a development secret from ``.dev-secrets/<name>``, creating it on first use."""
    directory = secrets_dir()
    path = directory / name
    if not path.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(generate())
    return path.read_text().strip()


def new_master_key() -> str:
    """Base64 of 32 random bytes, the form LOCAL_MASTER_KEYS expects."""
    return base64.b64encode(os.urandom(32)).decode()


def new_secret_key() -> str:
    return secrets.token_urlsafe(50)


def load_secret_into_environment(secret_id: str | None) -> list[str]:
    """Copy the keys of a Secrets Manager JSON secret into ``os.environ``.

    Variables already set in the environment win. Returns the names that were
    copied (never their values). The boto3 client honours ``AWS_ENDPOINT_URL``,
    which points it at moto_server in development.
    """
    if not secret_id:
        return []
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError
    from django.core.exceptions import ImproperlyConfigured

    client = boto3.session.Session().client(
        "secretsmanager", region_name=os.environ.get("AWS_DEFAULT_REGION", "eu-west-1")
    )
    try:
        payload = json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"])
    except (BotoCoreError, ClientError) as error:
        raise ImproperlyConfigured(
            f"Failed to read the Secrets Manager secret {secret_id!r} named by "
            f"EXAMPLE_SECRET_ID: {error}. If moto.env set it, start moto_server with "
            "'make moto-start' or run the demo without moto.env."
        ) from None  # The message includes botocore's text, and its traceback would bury it.
    copied = []
    for name, value in payload.items():
        if name not in os.environ:
            os.environ[name] = str(value)
            copied.append(name)
    return copied
