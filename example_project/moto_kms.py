"""Start or stop a moto_server that stands in for AWS KMS and Secrets Manager on 127.0.0.1.

    python moto_kms.py start [--port 5555]
    python moto_kms.py stop

``start`` runs moto_server in the background, creates the KMS key
``alias/demo`` and a Secrets Manager secret ``demo/settings`` holding the
project's SECRET_KEY, and writes ``.dev-secrets/moto.env`` with the variables
that point the example project at them. moto keeps its keys in memory, so
``start`` also removes the database of the previous moto run
(``.dev-secrets/db-aws.sqlite3``), whose data keys would no longer unwrap,
and ``stop`` removes ``moto.env``, whose endpoint no longer answers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from demo.secrets import new_secret_key, secrets_dir  # noqa: E402

REGION = "eu-west-1"


def pid_file() -> Path:
    return secrets_dir() / "moto.pid"


def environment_path() -> Path:
    return secrets_dir() / "moto.env"


def start(port: int) -> None:
    import boto3

    if pid_file().exists():
        sys.exit(f"moto_server already runs (pid file {pid_file()}); run 'stop' first.")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            sys.exit(f"Port {port} on 127.0.0.1 is taken; choose another with --port.")

    secrets_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    log = open(secrets_dir() / "moto.log", "ab")  # noqa: SIM115 - handed to the child
    server = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(  # noqa: S603 - our own virtualenv's moto_server
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        if process.poll() is not None:
            sys.exit(f"moto_server exited; see {secrets_dir() / 'moto.log'}.")
        time.sleep(0.2)
    else:
        process.kill()
        sys.exit("moto_server did not start within 30 seconds.")
    pid_file().write_text(str(process.pid))

    credentials = {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "region_name": REGION,
        "endpoint_url": endpoint,
    }
    kms = boto3.client("kms", **credentials)
    key = kms.create_key(Description="django-kms-fields demo master key")["KeyMetadata"]
    kms.create_alias(AliasName="alias/demo", TargetKeyId=key["KeyId"])
    boto3.client("secretsmanager", **credentials).create_secret(
        Name="demo/settings", SecretString=json.dumps({"SECRET_KEY": new_secret_key()})
    )

    database = secrets_dir() / "db-aws.sqlite3"
    database.unlink(missing_ok=True)
    variables = {
        "KMS_FIELDS_PROVIDER": "aws",
        "KMS_FIELDS_MASTER_KEY_ID": "alias/demo",
        "KMS_FIELDS_AWS_ENDPOINT_URL": endpoint,
        "KMS_FIELDS_ALLOWED_MASTER_KEY_IDS": key["Arn"],
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "EXAMPLE_SECRET_ID": "demo/settings",
        "DATABASE_URL": f"sqlite:///{database}",
    }
    environment_file = environment_path()
    environment_file.unlink(missing_ok=True)
    descriptor = os.open(environment_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write("".join(f"export {name}={value}\n" for name, value in variables.items()))
    print(f"moto_server runs on {endpoint} (pid {process.pid}), with KMS key alias/demo.")
    print(f"Run the demo against it:  (. {environment_file} && make demo)")


def wait_for_exit(pid: int, seconds: float) -> bool:
    """Return whether process group ``pid`` is gone within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def stop() -> None:
    if not pid_file().exists():
        print("moto_server is not running (no pid file).")
        return
    pid = int(pid_file().read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"moto_server (pid {pid}) had already stopped.")
    else:
        if wait_for_exit(pid, seconds=10):
            print(f"Stopped moto_server (pid {pid}).")
        else:
            print(f"Sent SIGTERM to moto_server (pid {pid}); it is still running after 10 s.")
    pid_file().unlink()
    environment_path().unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=5555, help="Port on 127.0.0.1 (default: 5555).")
    arguments = parser.parse_args()
    if arguments.action == "start":
        start(arguments.port)
    else:
        stop()


if __name__ == "__main__":
    main()
