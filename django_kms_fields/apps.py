from django.apps import AppConfig
from django.core.signals import setting_changed
from django.db.models.signals import post_delete
from django.utils.translation import gettext_lazy as _


class KmsFieldsConfig(AppConfig):
    name = "django_kms_fields"
    verbose_name = _("Encrypted fields")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks

        setting_changed.connect(_reset_on_setting_change, dispatch_uid="django_kms_fields")
        post_delete.connect(
            _forget_deleted_data_key,
            sender=self.get_model("DataKey"),
            dispatch_uid="django_kms_fields_forget_key",
        )


def _reset_on_setting_change(*, setting: str, **kwargs: object) -> None:
    if setting != "KMS_FIELDS":
        return
    from .conf import reset_settings
    from .keyring import get_keyring
    from .providers import reset_provider

    reset_settings()
    reset_provider()
    get_keyring().clear()


def _forget_deleted_data_key(*, instance: object, using: str, **kwargs: object) -> None:
    # Other processes keep a deleted key until DATA_KEY_CACHE_TTL passes, so
    # delete data keys only through rotate_keys, which first re-encrypts.
    from .keyring import get_keyring

    get_keyring().forget_key(using, instance.pk)  # type: ignore[attr-defined]
