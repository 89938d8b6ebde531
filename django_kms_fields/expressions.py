"""Query expressions for encrypted columns.

Reading
    Decrypting a tenant- or row-scoped value needs the row's tenant or primary
    key, but ``from_db_value()`` only receives the column. ``EncryptedCol``
    therefore selects ``<context> || <marker> || <token>``, where the context
    is the tenant (or primary key) column of the same table. The marker tells
    ``from_db_value()`` what to do:

    - ``~``: the value goes into a model instance and is decrypted on first
      access (``SealedValue``);
    - ``|``: the value goes to ``values()``, ``values_list()`` or an
      annotation and is decrypted at once.

    A global-scope column needs no context and is selected as
    ``<marker> || <token>``. Values that arrive without a marker come from
    ``raw()`` or from SQL functions over the column. Tokens never contain
    ``~`` or ``|``.

Writing
    The database must only ever receive tokens. ``check_write_expression()``
    rejects SQL expressions that would store anything else, such as
    ``Concat()`` or ``F()`` of another column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import FieldError
from django.db.models import Value
from django.db.models.expressions import Case, Col, When
from django.db.models.functions import Cast

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.sql.compiler import SQLCompiler

    from .fields import EncryptedField

LAZY_MARKER = "~"
EAGER_MARKER = "|"


def _as_text(connection: BaseDatabaseWrapper, sql: str) -> str:
    if connection.vendor == "mysql":
        # CONCAT() converts numbers itself. CAST(... AS CHAR) would take the
        # connection's collation, and UNION rejects the mix with the column's.
        return sql
    if connection.vendor == "postgresql":
        return f"({sql})::text"
    return f"CAST({sql} AS TEXT)"


def _concat(connection: BaseDatabaseWrapper, parts: list[str]) -> str:
    # Every form returns NULL when the token column is NULL.
    if connection.vendor == "mysql":
        return "CONCAT({})".format(", ".join(parts))
    return "({})".format(" || ".join(parts))


class EncryptedCol(Col):
    """The column of an encrypted field, selected with its decryption context."""

    target: EncryptedField

    def select_format(
        self, compiler: SQLCompiler, sql: str, params: Any
    ) -> tuple[str, tuple[Any, ...]]:
        field = self.target
        query = compiler.query
        # Model instances (the default columns, select_related included) are
        # decrypted lazily. values(), values_list() and annotations that
        # refer to the column are decrypted while the rows are read.
        eager = not query.default_cols or any(
            annotation is self for annotation in query.annotation_select.values()
        )
        connection = compiler.connection
        context_field = field.context_field
        marker = EAGER_MARKER if eager else LAZY_MARKER
        if context_field is None:
            return _concat(connection, [f"'{marker}'", sql]), tuple(params)

        context_sql, context_params = compiler.compile(Col(self.alias, context_field))
        return (
            _concat(
                connection,
                [f"COALESCE({_as_text(connection, context_sql)}, '')", f"'{marker}'", sql],
            ),
            (*context_params, *params),
        )


def check_write_expression(field: EncryptedField, expression: Any) -> None:
    """Raise ``FieldError`` unless ``expression`` can only store tokens in ``field``.

    Allowed: ``None``; ``Value()`` whose output field is ``field`` (it is
    encrypted like a plain value); the field's own column (a no-op such as
    ``F("notes")`` for ``notes``); and ``Case``/``When`` or ``Cast`` built from
    those, as ``bulk_update()`` builds them.
    """
    if expression is None:
        return
    if isinstance(expression, Cast):
        check_write_expression(field, expression.source_expressions[0])
        return
    if isinstance(expression, Case):
        for case in expression.cases:
            check_write_expression(field, case)
        check_write_expression(field, expression.default)
        return
    if isinstance(expression, When):
        check_write_expression(field, expression.result)
        return
    if isinstance(expression, Value):
        if expression.value is None or getattr(expression, "_output_field_or_none", None) is field:
            return
    elif isinstance(expression, Col) and expression.target is field:
        return
    raise FieldError(
        f"{field.qualified_name} is encrypted, so it cannot be set to the SQL expression "
        f"{expression!r}: the database would store something other than a token. "
        "Assign a Python value instead."
    )
