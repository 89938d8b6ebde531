"""Form fields for encrypted values."""

from __future__ import annotations

import json
from typing import Any

from django import forms


class PrettyJSONField(forms.JSONField):
    """A ``JSONField`` form field that shows documents indented, in a monospaced text area.

    Invalid JSON is rejected with the usual "Enter a valid JSON." error.
    """

    def __init__(self, **kwargs: Any) -> None:
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
