import secrets
from typing import Any

from demo.secrets import dev_secret
from django.contrib.auth.models import Permission, User
from django.core.management.base import BaseCommand, CommandParser

# Sees everything a clinic user can see, but encrypted values stay masked.
AUDITOR_PERMISSIONS = [
    ("clinic", "view_organisation"),
    ("clinic", "view_person"),
    ("clinic", "change_person"),
    ("clinic", "view_visit"),
    ("clinic", "change_visit"),
]


class Command(BaseCommand):
    help = (
        "Create or update two demo logins and print them: 'admin' (superuser, sees "
        "decrypted values) and 'auditor' (staff without view_decrypted_person, sees masks)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--password",
            help="Password for both users (default: one generated on first run and kept "
            "in .dev-secrets/demo_password).",
        )
        parser.add_argument(
            "--url",
            default="http://127.0.0.1:8000/admin/",
            help="Admin address to print with the logins (default: %(default)s).",
        )

    def handle(self, *args: Any, password: str | None, url: str, **options: Any) -> None:
        password = password or dev_secret("demo_password", lambda: secrets.token_urlsafe(12))

        admin, _created = User.objects.get_or_create(username="admin")
        admin.is_staff = admin.is_superuser = True
        admin.set_password(password)
        admin.save()

        auditor, _created = User.objects.get_or_create(username="auditor")
        auditor.is_staff = True
        auditor.is_superuser = False
        auditor.set_password(password)
        auditor.save()
        auditor.user_permissions.set(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
            for app_label, codename in AUDITOR_PERMISSIONS
        )

        self.stdout.write(self.style.SUCCESS(f"Demo logins ({url}):"))
        self.stdout.write(f"  admin   / {password}   sees decrypted values")
        self.stdout.write(f"  auditor / {password}   sees masked values")
