"""Values that must round-trip exactly, through the ORM and the database."""

import datetime
import decimal
import zoneinfo

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.test import override_settings

from django_kms_fields import ciphers
from tests.testapp.models import Note

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("kms")]

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def reload(instance):
    return type(instance).objects.get(pk=instance.pk)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("text", ""),
        ("text", "0"),
        ("text", "plain ASCII"),
        ("text", "Grüße, 東京, Київ, مرحبا, 🔐🧬👩🏽‍⚕️"),
        ("text", "line\nbreaks\tand\x00nul"),
        ("text", "kf1.AAAAAAAAAAAlooks-like-a-token-but-is-plaintext-" * 2),
        ("short", "x" * 20),
        ("email", "ana.núñez@example.com"),
        ("number", 0),
        ("number", -1),
        ("number", 2**31 - 1),
        ("day", datetime.date(1, 1, 1)),
        ("day", datetime.date(2024, 2, 29)),
        ("flag", False),
        ("flag", True),
        ("amount", decimal.Decimal("0.00")),
        ("amount", decimal.Decimal("-1234567890.12")),
        ("document", 0),
        ("document", False),
        ("document", ""),
        ("document", []),
        ("document", {}),
        ("document", [None]),
        ("document", {"null": None, "true": True, "false": False}),
        ("document", 2**200),
        ("document", -(2**70)),
        ("document", 1.5e-300),
        ("document", {"ключ": "значение", "キー": ["値", {"深い": {"もっと": [1, 2.5, None]}}]}),
    ],
)
def test_round_trip(field, value, stored):
    note = Note.objects.create(**{field: value})

    loaded = getattr(reload(note), field)
    assert loaded == value
    assert type(loaded) is type(value)
    assert ciphers.looks_like_token(stored(note, field))
    assert list(Note.objects.filter(pk=note.pk).values_list(field, flat=True)) == [value]


@pytest.mark.parametrize(
    "field", ["text", "short", "email", "number", "day", "moment", "document", "flag", "amount"]
)
def test_none_is_sql_null(field, stored):
    note = Note.objects.create(**{field: None})

    assert stored(note, field) is None
    assert getattr(reload(note), field) is None
    assert Note.objects.filter(**{f"{field}__isnull": True}).count() == 1
    assert Note.objects.filter(**{field: None}).count() == 1


def test_empty_string_and_zero_are_not_null(stored):
    note = Note.objects.create(text="", number=0, flag=False, document=0)

    for field in ("text", "number", "flag", "document"):
        assert stored(note, field) is not None
    loaded = reload(note)
    assert loaded.text == ""
    assert loaded.number == 0
    assert loaded.flag is False
    assert loaded.document == 0
    assert Note.objects.filter(text__isnull=False).count() == 1


def test_nested_json_round_trip():
    document = {
        "history": [
            {"at": "2024-01-01", "event": "admitted", "vitals": {"bp": [120, 80], "spo2": 0.97}},
            {"at": "2024-01-03", "event": "discharged", "notes": None, "tags": []},
        ],
        "big": 12345678901234567890123,
        "nested": {"a": {"b": {"c": {"d": {"e": [[[[]]]]}}}}},
    }
    note = Note.objects.create(document=document)
    assert reload(note).document == document


def test_multi_megabyte_text(stored):
    text = ("Résumé 🚑 " * 350_000)[:3_000_000]
    note = Note.objects.create(text=text)

    assert reload(note).text == text
    assert len(stored(note, "text")) <= 4 / 3 * (len(text.encode()) + 40)


def test_aware_datetime_keeps_the_instant():
    moment = datetime.datetime(2024, 3, 31, 3, 30, 15, 123456, tzinfo=PARIS)
    note = Note.objects.create(moment=moment)

    loaded = reload(note).moment
    assert loaded == moment
    # As with DateTimeField under USE_TZ: read back in UTC.
    assert loaded.tzinfo is datetime.timezone.utc
    assert loaded.utcoffset() == datetime.timedelta(0)
    assert loaded == Note.objects.values_list("moment", flat=True).get(pk=note.pk)


@pytest.mark.parametrize(
    "moment",
    [
        datetime.datetime(2030, 10, 27, 2, 30, tzinfo=zoneinfo.ZoneInfo("America/New_York")),
        datetime.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=PARIS),
        datetime.datetime(
            2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=45))
        ),
    ],
)
def test_datetime_handling_matches_django(moment):
    # Django's own DateTimeField on the same database is the reference.
    note = reload(Note.objects.create(moment=moment, plain_moment=moment))

    assert note.moment == note.plain_moment == moment
    assert note.moment.tzinfo == note.plain_moment.tzinfo
    assert note.moment.utcoffset() == note.plain_moment.utcoffset()


def test_naive_datetime_warns_like_django():
    naive = datetime.datetime(2024, 6, 1, 12, 0)
    with pytest.warns(RuntimeWarning, match="testapp.Note.moment received a naive") as caught:
        note = Note.objects.create(moment=naive)
    # Interpreted in the default time zone (Europe/Paris, UTC+2 in June).
    assert reload(note).moment == datetime.datetime(2024, 6, 1, 10, 0, tzinfo=datetime.timezone.utc)
    for warning in caught:
        assert "2024" not in str(warning.message)


def test_date_warning_omits_value():
    with pytest.warns(RuntimeWarning, match="naive datetime") as caught:
        note = Note.objects.create(moment=datetime.date(2024, 6, 1))
    midnight_in_paris = datetime.datetime(2024, 5, 31, 22, 0, tzinfo=datetime.timezone.utc)
    assert reload(note).moment == midnight_in_paris
    for warning in caught:
        assert "2024" not in str(warning.message)


@override_settings(USE_TZ=False)
def test_without_use_tz_naive_round_trips_and_aware_fails():
    naive = datetime.datetime(2024, 6, 1, 12, 0, 1)
    note = Note.objects.create(moment=naive)
    assert reload(note).moment == naive

    with pytest.raises(ValueError, match="timezone-aware"):
        Note.objects.create(moment=datetime.datetime(2024, 6, 1, tzinfo=datetime.timezone.utc))


def test_max_length_applies_to_plaintext():
    note = Note(title="t", short="x" * 21)
    with pytest.raises(ValidationError) as excinfo:
        note.full_clean()
    assert "short" in excinfo.value.message_dict

    note.short = "x" * 20
    note.full_clean()


def test_email_validator_applies_to_plaintext():
    with pytest.raises(ValidationError) as excinfo:
        Note(title="t", email="not an email").full_clean()
    assert "email" in excinfo.value.message_dict


def test_integer_range_validation():
    with pytest.raises(ValidationError):
        Note(title="t", number=2**70).full_clean()


@pytest.mark.parametrize(
    ("field", "value"),
    [("number", "SECRET-twelve"), ("day", "SECRET-not-a-date"), ("document", {1j: "SECRET"})],
)
def test_invalid_value_error_does_not_quote_it(field, value):
    with pytest.raises((ValueError, TypeError, ValidationError)) as excinfo, transaction.atomic():
        Note.objects.create(**{field: value})
    assert f"testapp.Note.{field} cannot store this" in str(excinfo.value)
    assert "SECRET" not in str(excinfo.value)
    assert excinfo.value.__cause__ is None
    assert Note.objects.count() == 0


@pytest.mark.parametrize("number", [2**31, -(2**31) - 1, 2**70])
def test_integer_out_of_range_is_rejected_on_save(number):
    # The same range on every database, SQLite's 64-bit integers included.
    with pytest.raises(ValueError, match="only stores integers from"), transaction.atomic():
        Note.objects.create(number=number)
    assert Note.objects.count() == 0


def test_max_length_enforced_on_save():
    with (
        pytest.raises(ValueError, match="cannot store 21 characters") as excinfo,
        transaction.atomic(),
    ):
        Note.objects.create(short="S" * 21)
    assert "SSS" not in str(excinfo.value)
    assert Note.objects.count() == 0

    Note.objects.create(short="é" * 20)  # characters, not bytes


def test_integer_range_is_validated():
    with pytest.raises(ValidationError) as excinfo:
        Note(title="t", number=2**31).full_clean()
    assert list(excinfo.value.message_dict) == ["number"]
    Note(title="t", number=-(2**31)).full_clean()


def test_assignment_after_load_is_encrypted_again(stored):
    note = Note.objects.create(text="first")
    first_token = stored(note, "text")

    note = reload(note)
    note.text = "second"
    note.save()

    assert stored(note, "text") != first_token
    assert reload(note).text == "second"


def test_untouched_value_is_written_back_unchanged(stored):
    note = Note.objects.create(text="kept", title="a")
    token = stored(note, "text")

    note = reload(note)
    note.title = "b"
    note.save()

    assert stored(note, "text") == token
    assert reload(note).text == "kept"
