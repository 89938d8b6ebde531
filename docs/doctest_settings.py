"""Settings for the documentation build: the test settings, an in-memory database
and the examples' app."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}
INSTALLED_APPS = [*INSTALLED_APPS, "clinics"]
