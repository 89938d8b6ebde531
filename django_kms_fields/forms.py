"""Form fields for encrypted values."""

from __future__ import annotations

import json
from typing import Any

from django import forms


class PrettyJSONField(forms.JSONField):
    """A ``JSONField`` form field that shows documents indented, in a monospaced text area.

    Invalid JSON is rejected with the usual "Enter a valid JSON." error. With
    ``allow_null=False`` (a model field without ``null=True``), an empty input
    or ``null`` is a form error too, instead of an ``IntegrityError`` on save.
    """

    default_error_messages = {
        "null": "This field cannot be empty or null. Enter a JSON value, such as [] or {}.",
    }

    def __init__(self, *, allow_null: bool = True, **kwargs: Any) -> None:
        self.allow_null = allow_null
        kwargs.setdefault(
            "widget",
            forms.Textarea(
                attrs={
                    "rows": 14,
                    "class": "vLargeTextField kms-json",
                    "style": "font-family: monospace; white-space: pre;",
                    "spellcheck": "false",
                }
            ),
        )
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=False, indent=2, cls=self.encoder)

    def validate(self, value: Any) -> None:
        super().validate(value)
        if value is None and not self.allow_null:
            raise forms.ValidationError(self.error_messages["null"], code="null")
