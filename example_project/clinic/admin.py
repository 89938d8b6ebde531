from django.contrib import admin

from django_kms_fields.admin import EncryptedFieldsAdminMixin

from .models import Organisation, Person, Visit


class VisitInline(EncryptedFieldsAdminMixin, admin.TabularInline):
    model = Visit
    extra = 0


@admin.register(Person)
class PersonAdmin(EncryptedFieldsAdminMixin, admin.ModelAdmin):
    list_display = ["full_name", "organisation", "email", "date_of_birth", "national_id"]
    list_filter = ["organisation"]
    search_fields = ["full_name"]
    readonly_fields = ["created_at"]
    fieldsets = [
        (None, {"fields": ["organisation", "full_name", "created_at"]}),
        ("Tenant-scoped", {"fields": ["notes", "email", "date_of_birth"]}),
        ("Row-scoped", {"fields": ["national_id", "history"]}),
        ("Global", {"fields": ["risk_score", "last_reviewed_at"]}),
    ]
    inlines = [VisitInline]
    list_per_page = 50


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "locale"]
    prepopulated_fields = {"slug": ["name"]}
