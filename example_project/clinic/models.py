"""A small multi-tenant records app: organisations (the tenants) and their people.

The encrypted fields use all three key scopes:

- per tenant: notes, email and date of birth share their organisation's key,
  so deleting that key makes one organisation's data unreadable;
- per row: the national id and the history get a key per person;
- global: the risk score and the review time share one key.
"""

import uuid

from django.db import models

from django_kms_fields import (
    EncryptedCharField,
    EncryptedDateField,
    EncryptedDateTimeField,
    EncryptedEmailField,
    EncryptedIntegerField,
    EncryptedJSONField,
    EncryptedTextField,
)


class Organisation(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(unique=True)
    locale = models.CharField(max_length=10, help_text="Faker locale of its demo data.")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Person(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="people")
    full_name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    notes = EncryptedTextField(blank=True, key_scope="tenant", tenant_field="organisation")
    email = EncryptedEmailField(blank=True, key_scope="tenant", tenant_field="organisation")
    date_of_birth = EncryptedDateField(
        null=True, blank=True, key_scope="tenant", tenant_field="organisation"
    )
    national_id = EncryptedCharField(max_length=32, blank=True, key_scope="row")
    history = EncryptedJSONField(default=list, blank=True, key_scope="row")
    risk_score = EncryptedIntegerField(null=True, blank=True)
    last_reviewed_at = EncryptedDateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["full_name"]
        verbose_name_plural = "people"

    def __str__(self) -> str:
        return self.full_name


class Visit(models.Model):
    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="visits")
    day = models.DateField()
    summary = EncryptedTextField(blank=True)

    class Meta:
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"{self.person} on {self.day}"
