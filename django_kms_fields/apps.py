from django.apps import AppConfig
from django.apps import apps as global_apps
from django.apps.registry import Apps
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, router
from django.db.models.signals import post_delete, post_migrate
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
        post_migrate.connect(
            create_decrypted_permissions, dispatch_uid="django_kms_fields_permissions"
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


def create_decrypted_permissions(
    app_config: AppConfig,
    using: str = DEFAULT_DB_ALIAS,
    apps: Apps = global_apps,
    **kwargs: object,
) -> None:
    """Create ``<app_label>.view_decrypted_<model>`` for each model with encrypted fields.

    The admin shows plaintext to staff with that permission (or with
    ``django_kms_fields.view_decrypted_values``). Runs after each app migrates,
    as Django's own permissions do, on the models of the migration state, so
    that a partial ``migrate`` skips what is not migrated yet.
    """
    from .permissions import decrypted_permission_codename, encrypted_field_names

    try:
        migrated_app = apps.get_app_config(app_config.label)
        content_type_model = apps.get_model("contenttypes", "ContentType")
        permission_model = apps.get_model("auth", "Permission")
    except LookupError:
        return
    if not router.allow_migrate_model(using, permission_model):
        return

    for model in migrated_app.get_models():
        if not encrypted_field_names(model):
            continue
        content_type = content_type_model.objects.db_manager(using).get_for_model(
            model, for_concrete_model=False
        )
        permission_model.objects.db_manager(using).get_or_create(
            content_type=content_type,
            codename=decrypted_permission_codename(model),
            defaults={"name": f"Can view decrypted values of {model._meta.verbose_name}"},
        )
