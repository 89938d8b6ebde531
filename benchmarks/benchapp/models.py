"""One model per storage being compared, all with the same columns.

The tables are created by the benchmark itself, so this app has no migrations.
"""

from django.conf import settings
from django.db import models

from django_kms_fields import EncryptedTextField


class Tenant(models.Model):
    name = models.CharField(max_length=50)


class Plain(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE)
    title = models.CharField(max_length=20, default="")
    text = models.TextField()


class GlobalScope(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE)
    title = models.CharField(max_length=20, default="")
    text = EncryptedTextField()


class TenantScope(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE)
    title = models.CharField(max_length=20, default="")
    text = EncryptedTextField(key_scope="tenant", tenant_field="tenant")


if settings.PEERS["encrypted_fields"]:
    from encrypted_fields.fields import EncryptedTextField as FernetTextField

    class FernetFields(models.Model):
        """django-fernet-encrypted-fields."""

        tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE)
        title = models.CharField(max_length=20, default="")
        text = FernetTextField()


if settings.PEERS["encrypted_model_fields"]:
    from encrypted_model_fields.fields import EncryptedTextField as ModelFieldsTextField

    class EncryptedModelFields(models.Model):
        """django-encrypted-model-fields."""

        tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE)
        title = models.CharField(max_length=20, default="")
        text = ModelFieldsTextField()
