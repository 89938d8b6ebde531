from django.contrib import admin

from django_kms_fields.admin import EncryptedFieldsAdminMixin

from .models import Note, Organisation, RowRecord, TenantRecord, Visit


class VisitInline(EncryptedFieldsAdminMixin, admin.TabularInline):
    model = Visit
    fields = ["note"]
    extra = 0


@admin.register(TenantRecord)
class TenantRecordAdmin(EncryptedFieldsAdminMixin, admin.ModelAdmin):
    list_display = ["label", "secret", "score", "organisation"]
    search_fields = ["label"]
    list_filter = ["organisation"]
    inlines = [VisitInline]


@admin.register(Note)
class NoteAdmin(EncryptedFieldsAdminMixin, admin.ModelAdmin):
    list_display = ["title", "text", "day"]
    readonly_fields = ["moment"]
    fields = ["title", "text", "short", "number", "day", "moment", "document"]


@admin.register(RowRecord)
class RowRecordAdmin(EncryptedFieldsAdminMixin, admin.ModelAdmin):
    list_display = ["id", "national_id"]


admin.site.register(Organisation)
