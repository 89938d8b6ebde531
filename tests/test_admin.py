"""The admin, through Django's test client: decrypted values, masks, bad values, checks."""

import logging

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.db import models
from django.test.utils import isolate_apps
from django.urls import reverse

from django_kms_fields import EncryptedTextField, clear_data_key_cache
from django_kms_fields.admin import EncryptedFieldsAdminMixin
from django_kms_fields.checks import _check_model_admin
from django_kms_fields.models import DataKey
from tests.testapp.models import Note, Organisation, RowRecord, TenantRecord, Visit

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("kms")]

SECRET = "PLAINTEXT-CANARY-0017"


@pytest.fixture
def records():
    organisation = Organisation.objects.create(name="Acme")
    record = TenantRecord.objects.create(
        organisation=organisation, label="first", secret=SECRET, score=7
    )
    TenantRecord.objects.create(organisation=organisation, label="second", secret="other")
    Visit.objects.create(record=record, note="inline note")
    return record


def staff(client, *permissions):
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    for codename in permissions:
        app_label, codename = codename.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client.force_login(user)
    return user


MODEL_PERMISSIONS = (
    "testapp.view_tenantrecord",
    "testapp.change_tenantrecord",
    "testapp.view_visit",
    "testapp.change_visit",
    "testapp.view_note",
    "testapp.change_note",
)


def change_url(instance):
    meta = instance._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[instance.pk])


def changelist_url(model):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def form_data(response):
    """The change form's current values, as the browser would post them back."""
    form = response.context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if value is None:
            continue
        data[name] = (
            field.widget.format_value(value) if hasattr(field.widget, "format_value") else value
        )
    for formset in response.context["inline_admin_formsets"]:
        management = formset.formset.management_form
        for name in management.fields:
            data[f"{management.prefix}-{name}"] = management[name].value()
        for inline_form in formset.formset.forms:
            for name in inline_form.fields:
                value = inline_form[name].value()
                if value is not None:
                    data[f"{inline_form.prefix}-{name}"] = value
    return data


def test_permissions_are_created_per_model():
    codenames = set(
        Permission.objects.filter(codename__startswith="view_decrypted_").values_list(
            "content_type__app_label", "codename"
        )
    )
    assert ("testapp", "view_decrypted_tenantrecord") in codenames
    assert ("testapp", "view_decrypted_note") in codenames
    assert ("testapp", "view_decrypted_organisation") not in codenames
    assert ("django_kms_fields", "view_decrypted_values") in codenames


def test_superuser_sees_plaintext(admin_client, records):
    response = admin_client.get(changelist_url(TenantRecord))
    assert response.status_code == 200
    assert SECRET in response.content.decode()

    response = admin_client.get(change_url(records))
    content = response.content.decode()
    assert SECRET in content
    assert "inline note" in content
    assert "kf1." not in content


def test_editing_re_encrypts(admin_client, records, stored):
    old_token = stored(records, "secret")
    response = admin_client.get(change_url(records))
    data = form_data(response)
    data["secret"] = "edited in the admin"
    response = admin_client.post(change_url(records), data)
    assert response.status_code == 302, response.content.decode()[:2000]

    new_token = stored(records, "secret")
    assert new_token != old_token
    assert new_token.startswith("kf1.")
    clear_data_key_cache()
    assert TenantRecord.objects.get(pk=records.pk).secret == "edited in the admin"


def test_widgets_fit_the_types(admin_client):
    note = Note.objects.create(title="n", text="long text", document={"b": [1, {"c": None}]})
    response = admin_client.get(change_url(note))
    form = response.context["adminform"].form
    assert "Textarea" in type(form.fields["text"].widget).__name__
    assert "Date" in type(form.fields["day"].widget).__name__
    content = response.content.decode()
    assert "kms-json" in content
    assert "{\n  &quot;b&quot;: [\n    1," in content


def test_invalid_json_is_a_form_error(admin_client, stored):
    note = Note.objects.create(title="n", document={"a": 1})
    token = stored(note, "document")
    data = form_data(admin_client.get(change_url(note)))
    data["document"] = '{"a": 1,'
    response = admin_client.post(change_url(note), data)
    assert response.status_code == 200
    assert "Enter a valid JSON." in response.content.decode()
    assert stored(note, "document") == token


def test_json_without_null_rejects_empty_input():
    from django import forms

    from django_kms_fields import EncryptedJSONField

    required = EncryptedJSONField(blank=True, default=list).formfield()
    for empty in ("", "null"):
        with pytest.raises(forms.ValidationError) as error:
            required.clean(empty)
        assert error.value.code == "null"
    assert required.clean("[]") == []

    nullable = EncryptedJSONField(blank=True, null=True).formfield()
    assert nullable.clean("") is None
    assert nullable.clean("null") is None


def test_staff_without_permission_sees_masks(client, records):
    staff(client, *MODEL_PERMISSIONS)

    changelist = client.get(changelist_url(TenantRecord)).content.decode()
    assert SECRET not in changelist
    assert "••••••••" in changelist

    response = client.get(change_url(records))
    content = response.content.decode()
    assert SECRET not in content
    assert "inline note" not in content
    assert "••••••••" in content
    form = response.context["adminform"].form
    assert "secret" not in form.fields
    assert "score" not in form.fields


def test_masked_save_leaves_tokens_unchanged(client, records, stored):
    staff(client, *MODEL_PERMISSIONS)
    tokens = {name: stored(records, name) for name in ("secret", "details", "score")}
    visit = Visit.objects.get()
    visit_token = stored(visit, "note")

    response = client.get(change_url(records))
    data = form_data(response)
    data["label"] = "relabelled"
    data["secret"] = "attempt to overwrite"
    response = client.post(change_url(records), data)
    assert response.status_code == 302, response.content.decode()[:2000]

    assert TenantRecord.objects.get(pk=records.pk).label == "relabelled"
    for name, token in tokens.items():
        assert stored(records, name) == token, name
    assert stored(visit, "note") == visit_token
    clear_data_key_cache()
    assert TenantRecord.objects.get(pk=records.pk).secret == SECRET


def test_masked_user_may_enter_values_for_new_rows(client):
    staff(client, "testapp.add_note", "testapp.view_note", "testapp.change_note")
    response = client.post(
        reverse("admin:testapp_note_add"),
        {"title": "new", "text": "typed once", "document": "null"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    note = Note.objects.get(title="new")
    assert note.text == "typed once"
    assert "typed once" not in client.get(change_url(note)).content.decode()


def test_model_permission_reveals_that_model_only(client, records):
    note = Note.objects.create(title="n", text="note secret")
    staff(client, *MODEL_PERMISSIONS, "testapp.view_decrypted_tenantrecord")
    assert SECRET in client.get(changelist_url(TenantRecord)).content.decode()
    assert "note secret" not in client.get(change_url(note)).content.decode()


def test_global_permission_reveals_every_model(client, records):
    note = Note.objects.create(title="n", text="note secret")
    staff(client, *MODEL_PERMISSIONS, "django_kms_fields.view_decrypted_values")
    assert SECRET in client.get(changelist_url(TenantRecord)).content.decode()
    assert "note secret" in client.get(change_url(note)).content.decode()


def test_encrypted_columns_are_not_sortable(admin_client, records):
    response = admin_client.get(changelist_url(TenantRecord))
    sortable = {
        header["text"] for header in response.context["result_headers"] if header["sortable"]
    }
    assert "label" in sortable
    assert "secret" not in sortable


def test_bad_value_shows_a_marker_and_is_logged_once(
    admin_client, records, stored, write_raw, caplog
):
    other = TenantRecord.objects.get(label="second")
    write_raw(other, "secret", stored(records, "secret")[:-6])
    caplog.set_level(logging.ERROR, logger="django_kms_fields.admin")

    for _ in range(2):
        response = admin_client.get(changelist_url(TenantRecord))
        assert response.status_code == 200
        content = response.content.decode()
        assert SECRET in content
        assert "⚠ cannot be decrypted" in content
    logged = [r for r in caplog.records if r.name == "django_kms_fields.admin"]
    assert len(logged) == 1
    assert f"pk={other.pk}" in logged[0].getMessage()
    assert SECRET not in logged[0].getMessage()

    response = admin_client.get(change_url(other))
    assert "⚠ cannot be decrypted" in response.content.decode()
    assert "secret" not in response.context["adminform"].form.fields


def test_form_does_not_save_over_a_bad_value(admin_client, records, stored, write_raw):
    broken = stored(records, "secret")[:-6]
    write_raw(records, "secret", broken)
    data = form_data(admin_client.get(change_url(records)))
    data["secret"] = "overwrite"
    data["label"] = "still saved"
    response = admin_client.post(change_url(records), data)
    assert response.status_code == 302
    assert stored(records, "secret") == broken
    assert TenantRecord.objects.get(pk=records.pk).label == "still saved"


def test_row_scope_in_the_admin(admin_client):
    row = RowRecord.objects.create(national_id="X-1234")
    assert "X-1234" in admin_client.get(changelist_url(RowRecord)).content.decode()
    assert "X-1234" in admin_client.get(change_url(row)).content.decode()


def test_data_key_admin_is_read_only_and_shows_no_key_material(admin_client, records):
    import base64

    row = RowRecord.objects.create(national_id="X")
    response = admin_client.get(changelist_url(DataKey))
    content = response.content.decode()
    assert response.status_code == 200
    for key in DataKey.objects.all():
        assert key.key_id in content
        assert base64.b64encode(key.wrapped_key).decode()[:16] not in content
        assert key.wrapped_key.hex()[:16] not in content
    assert f"row:testapp.rowrecord:{row.pk}" in content
    assert "Encryptions (shared keys)" in content
    assert "Values using it (per-row keys)" in content
    assert (
        content.count('<td class="field-encryptions">-</td>')
        == DataKey.objects.filter(scope__startswith="row:").count()
    )
    assert (
        content.count('<td class="field-values_using_it">-</td>')
        == DataKey.objects.exclude(scope__startswith="row:").count()
    )
    assert admin_client.get(reverse("admin:django_kms_fields_datakey_add")).status_code == 403

    key = (
        DataKey.objects.get(scope="global")
        if DataKey.objects.filter(scope="global").exists()
        else DataKey.objects.first()
    )
    page = admin_client.get(change_url(key))
    assert page.status_code == 200
    assert "wrapped" not in page.content.decode().lower()


def test_rotate_action(admin_client, client, records):
    scope = f"tenant:{records.organisation_id}"
    key = DataKey.objects.get(scope=scope)
    url = changelist_url(DataKey)
    response = admin_client.post(
        url, {"action": "rotate_selected", "_selected_action": [key.pk]}, follow=True
    )
    assert "Rotated 1 data key" in response.content.decode()
    key.refresh_from_db()
    assert key.state == "retired"
    assert DataKey.objects.get(scope=scope, state="active").pk != key.pk

    response = admin_client.post(
        url, {"action": "rotate_selected", "_selected_action": [key.pk]}, follow=True
    )
    content = response.content.decode()
    assert "Skipped 1 selected key that was already retired." in content
    assert "Rotated" not in content

    staff(client, "django_kms_fields.view_datakey")
    response = client.get(url)
    assert "rotate_selected" not in response.content.decode()


@isolate_apps("tests.testapp")
def test_admin_checks_reject_queries_on_encrypted_fields():
    class Owner(models.Model):
        name = models.CharField(max_length=10)
        secret = EncryptedTextField()

        class Meta:
            app_label = "testapp"

    class Item(models.Model):
        owner = models.ForeignKey(Owner, models.CASCADE)
        secret = EncryptedTextField()
        day = models.DateField()

        class Meta:
            app_label = "testapp"

    class ItemAdmin(EncryptedFieldsAdminMixin, admin.ModelAdmin):
        search_fields = ["^secret", "owner__secret__icontains", "owner__name"]
        list_filter = ["secret", ("owner__secret", admin.AllValuesFieldListFilter), "day"]
        ordering = ["-secret", "day"]
        date_hierarchy = "day"

    class PlainAdmin(admin.ModelAdmin):
        pass

    site = admin.AdminSite(name="isolated")
    messages = _check_model_admin(Item, ItemAdmin(Item, site))
    assert [m.id for m in messages] == [
        "django_kms_fields.E130",
        "django_kms_fields.E130",
        "django_kms_fields.E131",
        "django_kms_fields.E131",
        "django_kms_fields.E132",
    ]
    assert "testapp.Owner" in messages[1].msg
    assert [m.id for m in _check_model_admin(Owner, PlainAdmin(Owner, site))] == [
        "django_kms_fields.W130"
    ]


def test_project_admin_checks_pass():
    from django.core import checks

    assert [m for m in checks.run_checks(tags=["admin"]) if m.id.startswith("django_kms")] == []
