"""The example project, run as a user runs it: its own settings, database and processes."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Flags for a headless Chromium on a machine without network or display.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def project(tmp_path):
    """Run the example project's manage.py with its own SQLite file and secrets folder."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "KMS_FIELDS_", "EXAMPLE_", "AWS_ENDPOINT_URL"))
        and key != "DATABASE_URL"
    }
    environment.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "EXAMPLE_SECRETS_DIR": str(tmp_path / "secrets"),
            "PYTHONPATH": str(ROOT),
        }
    )

    class Project:
        env = environment
        directory = tmp_path

        def manage(self, *args, check=True, extra_env=None):
            result = subprocess.run(
                [sys.executable, "manage.py", *args],
                cwd=EXAMPLE,
                env={**environment, **(extra_env or {})},
                capture_output=True,
                text=True,
                timeout=300,
            )
            if check:
                assert result.returncode == 0, result.stderr[-3000:]
            return result

        def python(self, code, extra_env=None):
            return self.manage("shell", "-v", "0", "-c", code, extra_env=extra_env).stdout

    instance = Project()
    instance.manage("migrate", "--noinput")
    return instance


def test_seed_demo_is_realistic_and_safe_to_run_twice(project):
    first = project.manage("seed_demo", "--organisations", "4", "--people", "30")
    assert "Created 120 people" in first.stdout
    second = project.manage("seed_demo", "--organisations", "4", "--people", "30")
    assert "Created 0 people" in second.stdout
    assert "all 30 people exist already" in second.stdout

    report = json.loads(
        project.python(
            "import json\n"
            "from clinic.models import Organisation, Person, Visit\n"
            "from django_kms_fields.models import DataKey\n"
            "from django.db import connection\n"
            "c = connection.cursor()\n"
            "c.execute('SELECT notes, national_id, history FROM clinic_person')\n"
            "raw = c.fetchall()\n"
            "print(json.dumps({\n"
            "  'people': Person.objects.count(),\n"
            "  'visits': Visit.objects.count(),\n"
            "  'locales': sorted(Organisation.objects.values_list('locale', flat=True)),\n"
            "  'names': list(Person.objects.values_list('full_name', flat=True)),\n"
            "  'scopes': sorted({scope.split(':')[0] for scope in\n"
            "              DataKey.objects.values_list('scope', flat=True)}),\n"
            "  'tokens': all(v.startswith('kf1.') for row in raw for v in row),\n"
            "  'history': next(p.history for p in Person.objects.all() if p.history),\n"
            "  'arabic_notes': [p.notes for p in\n"
            "                   Person.objects.filter(organisation__locale='ar_SA')],\n"
            "  'saudi_ids': [p.national_id for p in\n"
            "                Person.objects.filter(organisation__locale='ar_SA')],\n"
            "}))"
        )
    )
    assert report["people"] == 120
    assert report["visits"] > 0
    assert report["locales"] == ["ar_SA", "de_DE", "en_US", "ja_JP"]
    assert report["scopes"] == ["global", "row", "tenant"]
    assert report["tokens"]
    assert any(any("\u3040" <= ch <= "\u9fff" for ch in name) for name in report["names"])
    assert any(any("\u0600" <= ch <= "\u06ff" for ch in name) for name in report["names"])
    assert {"date", "vitals", "prescriptions"} <= set(report["history"][0])
    # Notes are in the organisation's script, not Faker's Latin fallback.
    assert report["arabic_notes"]
    assert all(any("\u0600" <= ch <= "\u06ff" for ch in notes) for notes in report["arabic_notes"])
    assert all(len(number) == 10 and number.isdigit() for number in report["saudi_ids"])


def test_local_master_key_is_generated_once_and_private(project):
    key_file = project.directory / "secrets" / "local_master_key"
    project.manage("seed_demo", "--organisations", "1", "--people", "2")
    first = key_file.read_text()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    project.manage("seed_demo", "--organisations", "1", "--people", "3")
    assert key_file.read_text() == first
    assert ".dev-secrets/" in (ROOT / ".gitignore").read_text()


def test_demo_users(project):
    output = project.manage(
        "create_demo_users", "--password", "demo-pass-1", "--url", "http://127.0.0.1:8001/admin/"
    ).stdout
    assert "Demo logins (http://127.0.0.1:8001/admin/)" in output
    assert "admin   / demo-pass-1" in output
    assert "auditor / demo-pass-1" in output
    result = project.python(
        "from django.contrib.auth.models import User\n"
        "from clinic.models import Person\n"
        "from django_kms_fields.permissions import can_view_decrypted\n"
        "print(can_view_decrypted(User.objects.get(username='admin'), Person),"
        " can_view_decrypted(User.objects.get(username='auditor'), Person))"
    )
    assert result.split() == ["True", "False"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, process, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None:
            pytest.fail(f"the process exited: {process.communicate()[1][-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"nothing listens on port {port} after {seconds} s")


@pytest.fixture
def moto_endpoint():
    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    process = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_port(port, process)
    yield f"http://127.0.0.1:{port}"
    process.kill()
    process.wait()


def test_settings_from_secrets_manager(project, moto_endpoint):
    import boto3

    boto3.client(
        "secretsmanager",
        endpoint_url=moto_endpoint,
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_secret(Name="demo/test", SecretString=json.dumps({"SECRET_KEY": "from-the-secret"}))
    aws = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "EXAMPLE_SECRET_ID": "demo/test",
    }
    code = "from django.conf import settings; print(settings.SECRET_KEY)"
    assert project.python(code, extra_env=aws).strip() == "from-the-secret"
    # A variable set in the environment wins over the secret.
    overridden = project.python(code, extra_env={**aws, "SECRET_KEY": "from-the-environment"})
    assert overridden.strip() == "from-the-environment"


def test_unreachable_secrets_manager_error(project):
    # What a stale moto.env does once moto_server has stopped.
    dead_endpoint = f"http://127.0.0.1:{free_port()}"
    result = project.manage(
        "check",
        check=False,
        extra_env={
            "AWS_ENDPOINT_URL": dead_endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_MAX_ATTEMPTS": "1",
            "EXAMPLE_SECRET_ID": "demo/settings",
        },
    )

    assert result.returncode != 0
    assert "botocore" not in result.stderr.split("ImproperlyConfigured")[0]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured: Failed to read")
    assert "'demo/settings'" in last_line
    assert "make moto-start" in last_line


def test_moto_kms_script_runs_the_demo_against_kms(project):
    port = free_port()
    env = {**project.env}
    start = subprocess.run(
        [sys.executable, "moto_kms.py", "start", "--port", str(port)],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert start.returncode == 0, start.stderr
    try:
        variables = {}
        for line in (project.directory / "secrets" / "moto.env").read_text().splitlines():
            name, value = line.removeprefix("export ").split("=", 1)
            variables[name] = value
        assert variables["KMS_FIELDS_PROVIDER"] == "aws"
        # The moto database lives with the other development secrets, so
        # that this test never removes the user's own moto demo database.
        assert variables["DATABASE_URL"] == (
            f"sqlite:///{project.directory / 'secrets' / 'db-aws.sqlite3'}"
        )
        environment_file = project.directory / "secrets" / "moto.env"
        assert environment_file.stat().st_mode & 0o777 == 0o600
        variables["DATABASE_URL"] = f"sqlite:///{project.directory / 'aws.sqlite3'}"
        project.manage("migrate", "--noinput", extra_env=variables)
        project.manage("seed_demo", "--organisations", "2", "--people", "5", extra_env=variables)
        output = project.python(
            "from clinic.models import Person\n"
            "from django_kms_fields.models import DataKey\n"
            "print(DataKey.objects.values_list('master_key_id', flat=True).first())\n"
            "print(all(p.national_id for p in Person.objects.all()))",
            extra_env=variables,
        )
        arn, decrypted = output.split()
        assert arn.startswith("arn:aws:kms:eu-west-1:")
        assert variables["KMS_FIELDS_ALLOWED_MASTER_KEY_IDS"] == arn
        assert decrypted == "True"
    finally:
        stop = subprocess.run(
            [sys.executable, "moto_kms.py", "stop"],
            cwd=EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert "Stopped moto_server" in stop.stdout
    assert not (project.directory / "secrets" / "moto.env").exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def chromium_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's chromium package "
            "(.ci/run does) or set CHROMIUM to a Chromium binary"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright)")
    return sync_playwright


def test_browser_edit_in_admin(project):
    sync_playwright = chromium_or_skip()
    project.manage("seed_demo", "--organisations", "2", "--people", "8")
    project.manage("create_demo_users", "--password", "browser-pass-1")
    person = json.loads(
        project.python(
            "import json\n"
            "from clinic.models import Person\n"
            "p = Person.objects.order_by('full_name').first()\n"
            "print(json.dumps({'pk': str(p.pk), 'national_id': p.national_id,"
            " 'name': p.full_name}))"
        )
    )
    raw_notes = (
        "from django.db.models import TextField\n"
        "from django.db.models.functions import Cast\n"
        "from clinic.models import Person\n"
        "rows = Person.objects.annotate(raw=Cast('notes', TextField()))\n"
        f"print(rows.values_list('raw', flat=True).get(pk='{person['pk']}'))"
    )
    old_token = project.python(raw_notes).strip()

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=EXAMPLE,
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    output_folder = ROOT / "test-results" / "browser"
    output_folder.mkdir(parents=True, exist_ok=True)
    edited = "Edited in a real browser: ✓ Grüße 東京"
    try:
        wait_for_port(port, server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            base = f"http://127.0.0.1:{port}"
            page.goto(f"{base}/admin/login/")
            page.fill("#id_username", "admin")
            page.fill("#id_password", "browser-pass-1")
            page.click("input[type=submit]")
            page.wait_for_url(f"{base}/admin/")

            page.goto(f"{base}/admin/clinic/person/")
            page.click(f"text={person['name']}")
            page.wait_for_selector("#id_national_id")
            assert page.input_value("#id_national_id") == person["national_id"]
            page.fill("#id_notes", edited)
            page.screenshot(path=str(output_folder / "person-change-form.png"), full_page=True)
            page.click("input[name=_save]")
            page.wait_for_selector(".messagelist .success")
            page.screenshot(path=str(output_folder / "person-saved.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)

    new_token = project.python(raw_notes).strip()
    assert new_token.startswith("kf1.")
    assert new_token != old_token
    decrypted = project.python(
        f"from clinic.models import Person; print(Person.objects.get(pk='{person['pk']}').notes)"
    )
    assert decrypted.strip() == edited
    assert (output_folder / "person-saved.png").stat().st_size > 10_000


def test_make_demo_target_exists():
    makefile = (ROOT / "Makefile").read_text()
    assert "demo:" in makefile
    assert shutil.which("make") is not None
