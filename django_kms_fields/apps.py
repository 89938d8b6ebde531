from django.apps import AppConfig
from django.core.signals import setting_changed
from django.utils.translation import gettext_lazy as _


class KmsFieldsConfig(AppConfig):
    name = "django_kms_fields"
    verbose_name = _("Encrypted fields")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks

        setting_changed.connect(_reset_on_setting_change, dispatch_uid="django_kms_fields")


def _reset_on_setting_change(*, setting: str, **kwargs: object) -> None:
    if setting != "KMS_FIELDS":
        return
    from .conf import reset_settings
    from .keyring import get_keyring
    from .providers import reset_provider

    reset_settings()
    reset_provider()
    get_keyring().clear()
