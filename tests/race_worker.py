"""Writes the first value of new tenants from a separate process; used by test_processes.

Usage: python -m tests.race_worker START_AT ORGANISATION_ID [ORGANISATION_ID ...]
"""

import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.db import transaction  # noqa: E402

from django_kms_fields.keyring import get_keyring  # noqa: E402
from tests.testapp.models import TenantRecord  # noqa: E402


def main() -> None:
    start_at = float(sys.argv[1])
    time.sleep(max(0.0, start_at - time.time()))
    for organisation_id in sys.argv[2:]:
        with transaction.atomic():
            TenantRecord.objects.create(
                organisation_id=int(organisation_id), secret=f"from {os.getpid()}"
            )
    print(get_keyring().provider_calls.get("GenerateDataKey", 0))


if __name__ == "__main__":
    main()
