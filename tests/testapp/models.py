import uuid

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from django_kms_fields import (
    EncryptedCharField,
    EncryptedDateField,
    EncryptedDateTimeField,
    EncryptedEmailField,
    EncryptedField,
    EncryptedIntegerField,
    EncryptedJSONField,
    EncryptedTextField,
)


class EncryptedBooleanField(EncryptedField, models.BooleanField):
    """An encrypted variant made the documented way, with the generic plaintext codec."""


class EncryptedDecimalField(EncryptedField, models.DecimalField):
    pass


class Organisation(models.Model):
    name = models.CharField(max_length=100)

    def __str__(self):
        return self.name


class Workspace(models.Model):
    """A tenant with a UUID primary key, which databases store in different text forms."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.CharField(max_length=100)


class Note(models.Model):
    """Every field type, global scope."""

    title = models.CharField(max_length=100, default="")
    text = EncryptedTextField(null=True, blank=True)
    short = EncryptedCharField(max_length=20, null=True, blank=True)
    email = EncryptedEmailField(null=True, blank=True)
    number = EncryptedIntegerField(null=True, blank=True)
    day = EncryptedDateField(null=True, blank=True)
    moment = EncryptedDateTimeField(null=True, blank=True)
    document = EncryptedJSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    flag = EncryptedBooleanField(null=True, blank=True)
    amount = EncryptedDecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    plain = models.TextField(null=True, blank=True)
    plain_moment = models.DateTimeField(null=True, blank=True)


class TenantRecord(models.Model):
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, null=True, related_name="records"
    )
    label = models.CharField(max_length=100, default="")
    secret = EncryptedTextField(key_scope="tenant", tenant_field="organisation", null=True)
    details = EncryptedJSONField(
        key_scope="tenant", tenant_field="organisation", null=True, blank=True, default=dict
    )
    score = EncryptedIntegerField(key_scope="tenant", tenant_field="organisation", null=True)


class WorkspaceRecord(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE)
    secret = EncryptedTextField(key_scope="tenant", tenant_field="workspace", null=True)


class CodedRecord(models.Model):
    """A tenant identified by a plain text column instead of a foreign key."""

    secret = EncryptedTextField(key_scope="tenant", tenant_field="tenant_code", null=True)
    tenant_code = models.CharField(max_length=50)


class ExternalRecord(models.Model):
    """A record that another system sends again and again, keyed by tenant and code."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE)
    code = models.CharField(max_length=20)
    secret = EncryptedTextField(key_scope="tenant", tenant_field="organisation", null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation", "code"], name="external_record_key")
        ]


class RowRecord(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, null=True)
    secret = EncryptedTextField(key_scope="row", null=True)
    national_id = EncryptedCharField(key_scope="row", max_length=30, null=True)


class Visit(models.Model):
    """Points at encrypted models, for select_related() and cascades."""

    record = models.ForeignKey(TenantRecord, on_delete=models.CASCADE, related_name="visits")
    row_record = models.ForeignKey(RowRecord, on_delete=models.CASCADE, null=True)
    note = EncryptedTextField(null=True)


class Person(models.Model):
    """The model before a rename: its values are bound to testapp.person.nickname."""

    nickname = EncryptedTextField(null=True)


class RenamedPerson(models.Model):
    """The same table after renaming the model and the field, with the old label pinned."""

    alias = EncryptedTextField(
        null=True, db_column="nickname", associated_data_label="testapp.person.nickname"
    )

    class Meta:
        db_table = "testapp_person"
        managed = False


class RenamedWithoutPin(models.Model):
    alias = EncryptedTextField(null=True, db_column="nickname")

    class Meta:
        db_table = "testapp_person"
        managed = False


class Child(Organisation):
    """Multi-table inheritance: encrypted fields on the child table."""

    motto = EncryptedTextField(null=True)
    diary = EncryptedTextField(key_scope="row", null=True)


class LegacyPatient(models.Model):
    """A table written before encryption: plain columns of several types."""

    notes = models.TextField(null=True)
    age = models.IntegerField(null=True)
    admitted = models.DateTimeField(null=True)
    history = models.JSONField(null=True)


class EncryptedLegacyPatient(models.Model):
    """The same table during the migration window: encrypted fields that accept plaintext."""

    notes = EncryptedTextField(null=True, legacy_plaintext=True)
    age = EncryptedIntegerField(null=True, legacy_plaintext=True)
    admitted = EncryptedDateTimeField(null=True, legacy_plaintext=True)
    history = EncryptedJSONField(null=True, legacy_plaintext=True)

    class Meta:
        db_table = "testapp_legacypatient"
        managed = False


class EncryptedPatient(models.Model):
    """The same table after the migration window."""

    notes = EncryptedTextField(
        null=True, associated_data_label="testapp.encryptedlegacypatient.notes"
    )

    class Meta:
        db_table = "testapp_legacypatient"
        managed = False
