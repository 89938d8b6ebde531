"""Every ORM path either works or refuses clearly; none writes plaintext."""

import pytest
from django.core.exceptions import FieldError
from django.db import connection, transaction
from django.db.models import Case, F, Value, When
from django.db.models.functions import Concat, Upper

from django_kms_fields import ciphers
from django_kms_fields.exceptions import DecryptionError
from django_kms_fields.fields import SealedValue
from tests.testapp.models import (
    Child,
    CodedRecord,
    ExternalRecord,
    Note,
    Organisation,
    RowRecord,
    TenantRecord,
    Visit,
    Workspace,
    WorkspaceRecord,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("kms")]


@pytest.fixture
def orgs():
    return Organisation.objects.create(name="Acme"), Organisation.objects.create(name="Globex")


def assert_all_tokens(model, field_name):
    table = connection.ops.quote_name(model._meta.db_table)
    column = connection.ops.quote_name(model._meta.get_field(field_name).column)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")
        values = [row[0] for row in cursor.fetchall()]
    assert values, "expected stored values"
    for value in values:
        assert ciphers.looks_like_token(value), value[:30]


def test_save_and_create(orgs, stored):
    record = TenantRecord(organisation=orgs[0], secret="created by save")
    record.save()
    created = TenantRecord.objects.create(organisation=orgs[1], secret="created by create")

    assert TenantRecord.objects.get(pk=record.pk).secret == "created by save"
    assert TenantRecord.objects.get(pk=created.pk).secret == "created by create"
    assert_all_tokens(TenantRecord, "secret")


def test_get_or_create_and_update_or_create(orgs):
    record, created = TenantRecord.objects.get_or_create(
        label="a", organisation=orgs[0], defaults={"secret": "first"}
    )
    assert created
    again, created = TenantRecord.objects.get_or_create(
        label="a", organisation=orgs[0], defaults={"secret": "ignored"}
    )
    assert not created
    assert again.secret == "first"

    _updated, created = TenantRecord.objects.update_or_create(
        label="a", organisation=orgs[0], defaults={"secret": "second"}
    )
    assert not created
    assert TenantRecord.objects.get(pk=record.pk).secret == "second"


def test_get_or_create_lookup_on_encrypted_field_fails():
    with pytest.raises(FieldError, match="TenantRecord.secret is encrypted"):
        TenantRecord.objects.get_or_create(secret="x")


def test_bulk_create(orgs):
    records = TenantRecord.objects.bulk_create(
        [
            TenantRecord(organisation=orgs[i % 2], secret=f"bulk {i}", details={"i": i}, score=i)
            for i in range(50)
        ]
    )
    assert len(records) == 50
    loaded = {r.score: r for r in TenantRecord.objects.all()}
    for i in range(50):
        assert loaded[i].secret == f"bulk {i}"
        assert loaded[i].details == {"i": i}
        assert loaded[i].organisation_id == orgs[i % 2].pk
    assert_all_tokens(TenantRecord, "secret")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="UNNEST inserts are PostgreSQL's")
def test_bulk_create_keeps_postgresql_unnest(orgs):
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        TenantRecord.objects.bulk_create(
            [TenantRecord(organisation=orgs[i % 2], secret=f"s{i}") for i in range(5)]
        )
        Note.objects.bulk_create([Note(title=f"n{i}", text=f"t{i}") for i in range(5)])
    inserts = [
        query["sql"]
        for query in queries
        if query["sql"].startswith("INSERT") and "django_kms_fields_datakey" not in query["sql"]
    ]
    assert len(inserts) == 2
    for sql in inserts:
        assert "UNNEST" in sql
    assert_all_tokens(TenantRecord, "secret")
    assert_all_tokens(Note, "text")


def test_tenant_guard_keeps_field_deconstruction():
    tenant = TenantRecord._meta.get_field("organisation")
    assert type(tenant).__name__ == "ForeignKey"
    assert tenant.deconstruct()[1] == "django.db.models.ForeignKey"


def test_bulk_create_row_scope():
    rows = RowRecord.objects.bulk_create([RowRecord(secret=f"row {i}") for i in range(5)])
    assert sorted(RowRecord.objects.values_list("secret", flat=True)) == [
        r.secret for r in sorted(rows, key=lambda r: r.secret)
    ]


# MariaDB and MySQL take no unique_fields: any unique index may conflict there.
HAS_CONFLICT_TARGET = connection.features.supports_update_conflicts_with_target


def upsert(model, objects, update_fields, unique_fields):
    return model.objects.bulk_create(
        objects,
        update_conflicts=True,
        update_fields=update_fields,
        unique_fields=unique_fields if HAS_CONFLICT_TARGET else None,
    )


@pytest.mark.parametrize("update_fields", [["organisation"], ["secret"]])
def test_upsert_splitting_value_and_tenant_raises(orgs, stored, update_fields):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="original")
    token = stored(record, "secret")
    incoming = TenantRecord(pk=record.pk, organisation=orgs[1], secret="incoming", details={})

    # The check runs inside bulk_create()'s transaction, so it needs a savepoint here.
    with (
        pytest.raises(FieldError, match="must update testapp.TenantRecord.secret and its"),
        transaction.atomic(),
    ):
        upsert(TenantRecord, [incoming], update_fields, ["id"])

    assert stored(record, "secret") == token
    assert TenantRecord.objects.get(pk=record.pk).organisation == orgs[0]


def test_upsert_moving_tenant_with_every_value(orgs):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="original", score=1)
    incoming = TenantRecord(pk=record.pk, organisation=orgs[1], secret="new", details={}, score=2)

    upsert(TenantRecord, [incoming], ["organisation", "secret", "details", "score"], ["id"])

    loaded = TenantRecord.objects.get(pk=record.pk)
    assert loaded.organisation == orgs[1]
    assert loaded.secret == "new"
    assert loaded.score == 2


def test_upsert_keyed_by_tenant_updates_value(orgs):
    ExternalRecord.objects.create(organisation=orgs[0], code="A-1", secret="original")
    incoming = ExternalRecord(organisation=orgs[0], code="A-1", secret="updated")

    if not HAS_CONFLICT_TARGET:
        with (
            pytest.raises(FieldError, match="its tenant field 'organisation' together"),
            transaction.atomic(),
        ):
            upsert(ExternalRecord, [incoming], ["secret"], ["organisation", "code"])
        return
    upsert(ExternalRecord, [incoming], ["secret"], ["organisation", "code"])

    assert ExternalRecord.objects.get().secret == "updated"


def test_upsert_of_row_scoped_value(stored):
    row = RowRecord.objects.create(secret="original")
    incoming = RowRecord(pk=row.pk, secret="updated")

    if not HAS_CONFLICT_TARGET:
        with pytest.raises(FieldError, match="uses key_scope='row'"), transaction.atomic():
            upsert(RowRecord, [incoming], ["secret"], ["id"])
        assert RowRecord.objects.get(pk=row.pk).secret == "original"
        return
    upsert(RowRecord, [incoming], ["secret"], ["id"])

    assert RowRecord.objects.get(pk=row.pk).secret == "updated"


def test_upsert_of_global_value():
    note = Note.objects.create(title="n", text="original")

    upsert(Note, [Note(pk=note.pk, title="n", text="updated")], ["text"], ["id"])

    assert Note.objects.get(pk=note.pk).text == "updated"


def test_bulk_update_each_row_keeps_its_tenant(orgs):
    records = [
        TenantRecord.objects.create(organisation=orgs[i % 2], secret="old") for i in range(6)
    ]
    records = list(TenantRecord.objects.order_by("pk"))
    for i, record in enumerate(records):
        record.secret = f"new {i}"
        record.score = i
    TenantRecord.objects.bulk_update(records, ["secret", "score"], batch_size=4)

    for i, record in enumerate(TenantRecord.objects.order_by("pk")):
        assert record.secret == f"new {i}"
        assert record.score == i
    assert_all_tokens(TenantRecord, "secret")


def test_bulk_update_untouched_values_stay(orgs, stored):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="same", label="a")
    token = stored(record, "secret")
    record = TenantRecord.objects.get(pk=record.pk)
    record.label = "b"
    TenantRecord.objects.bulk_update([record], ["secret", "label"])

    assert stored(record, "secret") == token


def test_bulk_update_moves_tenant_with_values(orgs):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="moving")
    record = TenantRecord.objects.get(pk=record.pk)
    record.organisation = orgs[1]
    TenantRecord.objects.bulk_update([record], ["organisation", "secret", "details", "score"])

    moved = TenantRecord.objects.get(pk=record.pk)
    assert moved.organisation_id == orgs[1].pk
    assert moved.secret == "moving"


def test_bulk_update_row_scope():
    rows = [RowRecord.objects.create(secret="a") for _ in range(3)]
    for i, row in enumerate(rows):
        row.secret = f"b{i}"
    RowRecord.objects.bulk_update(rows, ["secret"])
    assert {r.pk: r.secret for r in RowRecord.objects.all()} == {r.pk: r.secret for r in rows}


def test_queryset_update_global_scope():
    Note.objects.create(text="a")
    Note.objects.create(text="b")
    assert Note.objects.update(text="same for all") == 2

    assert set(Note.objects.values_list("text", flat=True)) == {"same for all"}
    assert_all_tokens(Note, "text")


def test_queryset_update_to_null(orgs):
    TenantRecord.objects.create(organisation=orgs[0], secret="x")
    TenantRecord.objects.update(secret=None)
    assert TenantRecord.objects.get().secret is None


def test_queryset_update_tenant_scope_refuses(orgs, stored):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="keep")
    token = stored(record, "secret")
    # QuerySet.update() marks the transaction for rollback on any error, so
    # the test uses a savepoint to read the table afterwards.
    with (
        pytest.raises(FieldError, match=r"TenantRecord.secret uses key_scope='tenant'"),
        transaction.atomic(),
    ):
        TenantRecord.objects.update(secret="plain")

    assert stored(record, "secret") == token


def test_queryset_update_of_tenant_refuses(orgs, stored):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="keep")
    with (
        pytest.raises(FieldError, match="also write secret, details, score would leave them"),
        transaction.atomic(),
    ):
        TenantRecord.objects.update(organisation=orgs[1])

    assert TenantRecord.objects.get(pk=record.pk).organisation_id == orgs[0].pk
    # Moving the tenant while clearing every tenant-scoped value is safe.
    TenantRecord.objects.update(organisation=orgs[1], secret=None, details=None, score=None)
    assert TenantRecord.objects.get(pk=record.pk).organisation_id == orgs[1].pk


def test_save_moves_values_to_the_new_tenant(orgs, stored):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="moves", details={"a": 1})
    record = TenantRecord.objects.get(pk=record.pk)
    record.organisation = orgs[1]
    record.save()

    moved = TenantRecord.objects.get(pk=record.pk)
    assert moved.secret == "moves"
    assert moved.details == {"a": 1}
    assert list(TenantRecord.objects.values_list("secret", flat=True)) == ["moves"]


@pytest.mark.parametrize(
    "expression",
    [
        lambda: Concat(F("secret"), Value("x")),
        lambda: F("label"),
        lambda: Upper("secret"),
        lambda: Value("raw plaintext"),
        lambda: Case(When(pk=1, then=Value("plaintext")), default=F("secret")),
    ],
)
def test_update_with_unsupported_expression_raises(orgs, expression, stored):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="keep", label="l")
    token = stored(record, "secret")
    with (
        pytest.raises(FieldError, match="cannot be set to the SQL expression"),
        transaction.atomic(),
    ):
        TenantRecord.objects.update(secret=expression())
    assert stored(record, "secret") == token


def test_update_with_own_column_is_a_no_op(orgs, stored):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="keep")
    token = stored(record, "secret")
    TenantRecord.objects.update(secret=F("secret"))
    assert stored(record, "secret") == token


def test_copying_between_encrypted_fields_raises():
    Note.objects.create(text="a", short="b")
    with pytest.raises(FieldError, match="cannot be set to the SQL expression"):
        Note.objects.update(text=F("short"))


def test_save_with_value_expression_encrypts(orgs):
    record = TenantRecord.objects.create(organisation=orgs[0], secret=Value("wrapped"))
    assert TenantRecord.objects.get(pk=record.pk).secret == "wrapped"
    assert_all_tokens(TenantRecord, "secret")


def test_save_with_sql_expression_raises(orgs):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="x", label="y")
    record.secret = Concat(F("label"), Value("!"))
    with (
        pytest.raises(FieldError, match="cannot be set to the SQL expression"),
        transaction.atomic(),
    ):
        record.save()
    assert TenantRecord.objects.get(pk=record.pk).secret == "x"


def test_refresh_from_db(orgs):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="v1")
    TenantRecord.objects.filter(pk=record.pk).update(label="changed")
    other = TenantRecord.objects.get(pk=record.pk)
    other.secret = "v2"
    other.save()

    record.refresh_from_db()
    assert record.secret == "v2"
    record.refresh_from_db(fields=["secret"])
    assert record.secret == "v2"


def test_values_and_values_list(orgs):
    TenantRecord.objects.create(organisation=orgs[0], secret="a", details={"k": 1}, score=1)
    TenantRecord.objects.create(organisation=orgs[1], secret="b", details={"k": 2}, score=2)

    assert sorted(TenantRecord.objects.values_list("secret", flat=True)) == ["a", "b"]
    rows = sorted(
        TenantRecord.objects.values("secret", "details", "score"), key=lambda r: r["score"]
    )
    assert rows == [
        {"secret": "a", "details": {"k": 1}, "score": 1},
        {"secret": "b", "details": {"k": 2}, "score": 2},
    ]
    everything = TenantRecord.objects.order_by("pk").values()
    assert [row["secret"] for row in everything] == ["a", "b"]
    named = TenantRecord.objects.order_by("pk").values_list("secret", named=True)
    assert [row.secret for row in named] == ["a", "b"]


def test_values_across_a_join(orgs):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="joined")
    Visit.objects.create(record=record, note="visit note")

    assert list(Visit.objects.values_list("record__secret", "note")) == [("joined", "visit note")]
    assert list(orgs[0].records.values_list("secret", flat=True)) == ["joined"]
    assert list(
        Organisation.objects.filter(pk=orgs[0].pk).values_list("records__secret", flat=True)
    ) == ["joined"]


def test_annotation_of_encrypted_column(orgs):
    TenantRecord.objects.create(organisation=orgs[0], secret="annotated")
    record = TenantRecord.objects.annotate(copy=F("secret")).get()
    assert record.copy == "annotated"
    assert record.secret == "annotated"


def test_sql_function_error_names_cause():
    Note.objects.create(text="shouted")

    with pytest.raises(DecryptionError, match=r"SQL expression Upper\(\), which may have"):
        list(Note.objects.annotate(loud=Upper("text")).values_list("loud", flat=True))


def test_aggregate_of_tenant_scoped_column_raises(orgs):
    from django.db.models import Max

    TenantRecord.objects.create(organisation=orgs[0], secret="x")
    with pytest.raises(FieldError, match="cannot be"):
        TenantRecord.objects.aggregate(Max("secret"))


def test_only_and_defer(orgs):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="deferred", label="l")

    only_label = TenantRecord.objects.only("label").get(pk=record.pk)
    assert only_label.get_deferred_fields() >= {"secret", "organisation_id"}
    assert only_label.secret == "deferred"

    only_secret = TenantRecord.objects.only("secret").get(pk=record.pk)
    assert "organisation_id" in only_secret.get_deferred_fields()
    assert only_secret.secret == "deferred"

    deferred = TenantRecord.objects.defer("secret").get(pk=record.pk)
    assert deferred.secret == "deferred"
    deferred.label = "m"
    deferred.save()
    assert TenantRecord.objects.get(pk=record.pk).secret == "deferred"


def test_moving_deferred_values_raises(orgs, stored):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="stays")
    token = stored(record, "secret")
    only_tenant = TenantRecord.objects.only("organisation").get(pk=record.pk)
    only_tenant.organisation = orgs[1]

    with (
        pytest.raises(FieldError, match=r"not deferred by only\(\) or defer\(\)"),
        transaction.atomic(),
    ):
        only_tenant.save()

    assert stored(record, "secret") == token
    assert TenantRecord.objects.get(pk=record.pk).organisation == orgs[0]


def test_select_related(orgs):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="related")
    row = RowRecord.objects.create(secret="row related")
    Visit.objects.create(record=record, row_record=row, note="n")

    visit = Visit.objects.select_related("record", "row_record").get()
    assert visit.record.secret == "related"
    assert visit.row_record.secret == "row related"
    assert visit.note == "n"


def test_prefetch_related(orgs):
    for i in range(3):
        TenantRecord.objects.create(organisation=orgs[i % 2], secret=f"p{i}")
    organisations = Organisation.objects.prefetch_related("records").order_by("pk")
    assert [sorted(r.secret for r in o.records.all()) for o in organisations] == [
        ["p0", "p2"],
        ["p1"],
    ]


def test_iterator(orgs):
    for i in range(30):
        TenantRecord.objects.create(organisation=orgs[i % 2], secret=f"it {i}", score=i)
    secrets = [r.secret for r in TenantRecord.objects.order_by("pk").iterator(chunk_size=7)]
    assert secrets == [f"it {i}" for i in range(30)]
    values = list(TenantRecord.objects.order_by("pk").values_list("secret", flat=True).iterator(5))
    assert values == secrets


def test_raw(orgs):
    record = TenantRecord.objects.create(organisation=orgs[0], secret="raw read")
    table = TenantRecord._meta.db_table
    loaded = list(TenantRecord.objects.raw(f"SELECT * FROM {table}"))
    assert [r.secret for r in loaded] == ["raw read"]

    note = Note.objects.create(text="global raw")
    assert [n.text for n in Note.objects.raw(f"SELECT * FROM {Note._meta.db_table}")] == [
        "global raw"
    ]

    # A raw-loaded instance saves its untouched value back after checking it.
    raw_record = next(iter(TenantRecord.objects.raw(f"SELECT * FROM {table}")))
    raw_record.label = "x"
    raw_record.save()
    assert TenantRecord.objects.get(pk=record.pk).secret == "raw read"
    assert note.pk


def test_raw_instance_moved_to_another_tenant(orgs, stored):
    record = TenantRecord.objects.create(
        organisation=orgs[0], secret="moves", details={"a": 1}, score=3
    )
    old_token = stored(record, "secret")
    table = TenantRecord._meta.db_table

    raw_record = next(iter(TenantRecord.objects.raw(f"SELECT * FROM {table}")))
    raw_record.organisation = orgs[1]
    assert raw_record.details == {"a": 1}  # read after the move, before the save
    raw_record.save()

    loaded = TenantRecord.objects.get(pk=record.pk)
    assert loaded.organisation == orgs[1]
    assert (loaded.secret, loaded.details, loaded.score) == ("moves", {"a": 1}, 3)
    assert stored(record, "secret") != old_token


def test_raw_instance_with_foreign_token_fails(orgs, stored, write_raw):
    first = TenantRecord.objects.create(organisation=orgs[0], secret="first")
    third_tenant = Organisation.objects.create(name="Initech")
    other = TenantRecord.objects.create(organisation=third_tenant, secret="other")
    write_raw(first, "secret", stored(other, "secret"))
    table = TenantRecord._meta.db_table

    raw_first = TenantRecord.objects.raw(f"SELECT * FROM {table} WHERE id = %s", [first.pk])[0]
    raw_first.organisation = orgs[1]

    with pytest.raises(DecryptionError):
        raw_first.save()


def test_lazy_instances_hold_sealed_values(orgs):
    TenantRecord.objects.create(organisation=orgs[0], secret="lazy")
    record = TenantRecord.objects.get()
    assert isinstance(record.__dict__["secret"], SealedValue)
    assert repr(record.__dict__["secret"]) == "<SealedValue>"
    assert record.secret == "lazy"
    assert record.__dict__["secret"] == "lazy"


@pytest.mark.parametrize(
    ("lookup", "value"),
    [
        ("secret", "x"),
        ("secret__exact", "x"),
        ("secret__iexact", "x"),
        ("secret__contains", "x"),
        ("secret__startswith", "x"),
        ("secret__in", ["x"]),
        ("secret__gt", "x"),
        ("details__key", "x"),
        ("score__lt", 3),
    ],
)
def test_lookups_raise_field_error(lookup, value):
    with pytest.raises(FieldError) as excinfo:
        list(TenantRecord.objects.filter(**{lookup: value}))
    message = str(excinfo.value)
    assert "TenantRecord." in message
    assert "is encrypted" in message


def test_isnull_lookup_works(orgs):
    TenantRecord.objects.create(organisation=orgs[0], secret=None)
    TenantRecord.objects.create(organisation=orgs[0], secret="set")
    assert TenantRecord.objects.filter(secret__isnull=True).count() == 1
    assert TenantRecord.objects.filter(secret__isnull=False).count() == 1
    assert TenantRecord.objects.exclude(secret=None).count() == 1


def test_uuid_tenant(kms):
    workspace = Workspace.objects.create(name="w")
    record = WorkspaceRecord.objects.create(workspace=workspace, secret="uuid tenant")
    assert WorkspaceRecord.objects.get(pk=record.pk).secret == "uuid tenant"
    assert list(WorkspaceRecord.objects.values_list("secret", flat=True)) == ["uuid tenant"]
    # The scope is the canonical form of the UUID, whatever the database stores.
    from django_kms_fields.models import DataKey

    assert DataKey.objects.filter(scope=f"tenant:{workspace.pk}").count() == 1

    # Assigning the id as an uppercase string names the same tenant.
    record.workspace_id = str(workspace.pk).upper()
    record.secret = "again"
    record.save()
    assert DataKey.objects.filter(scope__startswith="tenant:").count() == 1


def test_plain_text_tenant_field():
    CodedRecord.objects.create(tenant_code="acme-eu", secret="coded ~|~ value")
    CodedRecord.objects.create(tenant_code="globex", secret="other")
    assert sorted(CodedRecord.objects.values_list("secret", flat=True)) == [
        "coded ~|~ value",
        "other",
    ]
    assert CodedRecord.objects.get(tenant_code="acme-eu").secret == "coded ~|~ value"


def test_tenant_ids_with_markers_are_rejected():
    from django_kms_fields.exceptions import EncryptionError

    with pytest.raises(EncryptionError, match="must not contain"), transaction.atomic():
        CodedRecord.objects.create(tenant_code="acme|weird", secret="x")
    assert CodedRecord.objects.count() == 0


def test_multi_table_inheritance():
    child = Child.objects.create(name="child", motto="carpe diem", diary="dear diary")
    loaded = Child.objects.get(pk=child.pk)
    assert loaded.motto == "carpe diem"
    assert loaded.diary == "dear diary"
    assert loaded.name == "child"
    assert list(Child.objects.values_list("diary", flat=True)) == ["dear diary"]


def test_tenant_none_raises_before_writing():
    from django_kms_fields.exceptions import EncryptionError

    with pytest.raises(EncryptionError, match="TenantRecord.organisation is None"):
        TenantRecord.objects.create(organisation=None, secret="orphan")
    assert TenantRecord.objects.count() == 0
    # NULL values need no tenant.
    TenantRecord.objects.create(organisation=None, secret=None, details=None)


def test_transaction_usable_after_encryption_error(orgs):
    from django_kms_fields.exceptions import EncryptionError

    with transaction.atomic():
        with pytest.raises(EncryptionError):
            TenantRecord.objects.create(organisation=None, secret="orphan")
        TenantRecord.objects.create(organisation=orgs[0], secret="after")
    assert TenantRecord.objects.get().secret == "after"


def test_subquery_of_encrypted_column(orgs):
    from django.db.models import OuterRef, Subquery

    record = TenantRecord.objects.create(organisation=orgs[0], secret="from a subquery")
    Visit.objects.create(record=record, note="n")
    newest = TenantRecord.objects.filter(pk=OuterRef("record")).values("secret")[:1]
    visit = Visit.objects.annotate(record_secret=Subquery(newest)).get()
    assert visit.record_secret == "from a subquery"
    assert list(Visit.objects.annotate(s=Subquery(newest)).values_list("s", flat=True)) == [
        "from a subquery"
    ]


def test_union_of_querysets(orgs):
    TenantRecord.objects.create(organisation=orgs[0], secret="first", label="a")
    TenantRecord.objects.create(organisation=orgs[1], secret="second", label="b")
    first = TenantRecord.objects.filter(label="a")
    second = TenantRecord.objects.filter(label="b")
    assert sorted(r.secret for r in first.union(second)) == ["first", "second"]
    assert sorted(
        first.values_list("secret", flat=True).union(second.values_list("secret", flat=True))
    ) == [
        "first",
        "second",
    ]
