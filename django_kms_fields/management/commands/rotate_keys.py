import datetime
import json
import math
from typing import Any

from django.apps import apps
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from django_kms_fields.conf import get_settings
from django_kms_fields.exceptions import EncryptionError, KeyProviderError
from django_kms_fields.fields import EncryptedField
from django_kms_fields.models import DataKey
from django_kms_fields.rotation import (
    MAX_REPORTED_FAILURES,
    Progress,
    Rotation,
    RotationOptions,
    RotationSummary,
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _non_negative_number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


# argparse names the type in its error message.
_positive_int.__name__ = "positive integer"
_non_negative_number.__name__ = "non-negative number"


class Command(BaseCommand):
    help = (
        "Rotate data keys: create a new active key for each selected scope and retire the "
        "old one. With --reencrypt, also move every stored value to its scope's active key "
        "and delete retired keys that no value uses. With --rewrap, wrap data keys under "
        "another master key instead."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        modes = parser.add_mutually_exclusive_group()
        modes.add_argument(
            "--reencrypt",
            action="store_true",
            help="Also re-encrypt stored values that use a retired data key (or legacy "
            "plaintext) with the active key of their scope, give rows new per-row keys, and "
            "delete retired keys that no value uses any more.",
        )
        modes.add_argument(
            "--rewrap",
            action="store_true",
            help="Wrap data keys under the master key of --master-key-id (default: "
            "KMS_FIELDS['MASTER_KEY_ID']) with KMS ReEncrypt. Values are not touched.",
        )
        parser.add_argument(
            "--no-rotate",
            action="store_false",
            dest="rotate",
            help="With --reencrypt: do not rotate any key; only move values (and legacy "
            "plaintext) to the current active keys and delete unused retired keys.",
        )
        parser.add_argument(
            "--master-key-id",
            help="With --rewrap: the destination master key (key id, ARN, alias name or "
            "alias ARN for AWS KMS; a LOCAL_MASTER_KEYS name for the local provider).",
        )
        parser.add_argument(
            "--model",
            action="append",
            dest="models",
            metavar="APP_LABEL.MODEL",
            help="Only this model (repeatable). Default: every model with encrypted fields.",
        )
        parser.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            metavar="SCOPE",
            help="Only this scope (repeatable): 'global', 'tenant:<id>', "
            "'row:<app_label>.<model>:<pk>', or every scope of a kind, 'tenant' or 'row'.",
        )
        parser.add_argument(
            "--older-than",
            type=_non_negative_number,
            metavar="DAYS",
            help="Only rotate or re-wrap data keys created more than DAYS days ago.",
        )
        parser.add_argument(
            "--batch-size",
            type=_positive_int,
            default=500,
            metavar="ROWS",
            help="Rows re-encrypted per transaction (default: 500).",
        )
        parser.add_argument(
            "--delete-after",
            type=_non_negative_number,
            metavar="SECONDS",
            help="Delete an unused retired key only when it was retired more than SECONDS "
            "ago (default: DATA_KEY_CACHE_TTL + 300). Keys retired by the same run are never "
            "deleted by it.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Report what would change (keys, values, an estimate of KMS calls) and "
            "change nothing. Reads, and decrypts, every value that would move.",
        )
        parser.add_argument(
            "--json", action="store_true", help="Print the summary as JSON on stdout."
        )
        parser.add_argument(
            "--database",
            default=DEFAULT_DB_ALIAS,
            help='Database to rotate in (default: "default").',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["master_key_id"] and not options["rewrap"]:
            raise CommandError("--master-key-id only applies to --rewrap.")
        if not options["rotate"] and not options["reencrypt"]:
            raise CommandError("--no-rotate only applies to --reencrypt.")
        if options["database"] not in connections:
            raise CommandError(f"Unknown database {options['database']!r}.")
        self.verbosity = options["verbosity"]
        self.as_json = options["json"]
        self.database = options["database"]

        scopes = self._scopes(options["scopes"])
        kinds = {scope.split(":", 1)[0] for scope in scopes or ()}
        if "row" in kinds and not (options["reencrypt"] or options["rewrap"]):
            self._warn(
                self.style.WARNING(
                    "Per-row keys rotate with their rows: add --reencrypt to rotate them."
                )
            )
        ttl = get_settings().data_key_cache_ttl
        delete_after = options["delete_after"]
        if options["reencrypt"] and delete_after is not None and delete_after < ttl:
            self._warn(
                self.style.WARNING(
                    f"--delete-after {delete_after:g} is shorter than DATA_KEY_CACHE_TTL "
                    f"({ttl:g} seconds): a process that still caches a deleted key as active "
                    "would write values that nothing can decrypt. Use it only when every "
                    "process has restarted since the keys were retired."
                )
            )
        rotation_options = RotationOptions(
            using=self.database,
            models=self._models(options["models"]),
            scopes=scopes,
            older_than=_days(options["older_than"]),
            batch_size=options["batch_size"],
            dry_run=options["dry_run"],
            reencrypt=options["reencrypt"],
            rotate=options["rotate"],
            rewrap=options["rewrap"],
            master_key_id=options["master_key_id"],
            delete_after=_seconds(options["delete_after"]),
        )
        rotation = Rotation(rotation_options, self._progress, self._detail)
        try:
            summary = rotation.run()
        except KeyProviderError as error:
            self._report(rotation.summary, finished=False)
            raise CommandError(
                f"The key provider failed with {error.code}: {_sentence(error)} "
                f"{self._stopped(options)} Fix the cause and run the same command again."
            ) from error
        except EncryptionError as error:
            self._report(rotation.summary, finished=False)
            raise CommandError(
                f"{_sentence(error)} {self._stopped(options)} Fix the cause and run the "
                "same command again."
            ) from error
        except DatabaseError as error:
            self._report(rotation.summary, finished=False)
            hint = ""
            if connections[self.database].vendor == "sqlite" and "locked" in str(error):
                hint = (
                    " Another process (probably another rotate_keys run) holds SQLite's "
                    "write lock; wait for it to finish."
                )
            raise CommandError(
                f"Database error: {_sentence(error)}{hint} {self._stopped(options)} "
                "Run the same command again to finish."
            ) from error
        self._report(summary, finished=True)
        if summary.values_skipped and not summary.dry_run:
            skipped = sum(summary.values_skipped.values())
            listed = min(skipped, MAX_REPORTED_FAILURES)
            raise CommandError(
                f"{skipped} stored values were left unchanged: {self._reasons(summary)}. "
                f"The first {listed} are listed above with their rows; everything else was "
                "done, and the data keys those values name are kept. See the rotate_keys "
                "runbook, then run the same command again."
            )

    # Options

    def _models(self, labels: list[str] | None) -> list[Any] | None:
        if not labels:
            return None
        chosen = []
        for label in labels:
            try:
                model = apps.get_model(label)
            except (LookupError, ValueError):
                raise CommandError(
                    f"Unknown model {label!r}. Use APP_LABEL.ModelName; the models with "
                    f"encrypted fields are: {', '.join(_encrypted_model_labels())}."
                ) from None
            if not _has_encrypted_fields(model):
                raise CommandError(f"{model._meta.label} has no encrypted fields of its own.")
            chosen.append(model)
        return chosen

    def _scopes(self, scopes: list[str] | None) -> list[str] | None:
        """Validate scopes, write them as the data keys do, and require that each exists."""
        if not scopes:
            return None
        normalized = []
        for scope in scopes:
            if scope in ("global", "tenant", "row"):
                normalized.append(scope)
                continue
            kind, _, rest = scope.partition(":")
            if kind == "tenant" and rest:
                canonical = scope
            elif kind == "row" and rest:
                canonical = self._row_scope(scope, rest)
            else:
                raise CommandError(
                    f"Unknown scope {scope!r}; use 'global', 'tenant', 'row', "
                    "'tenant:<id>' or 'row:<app_label>.<model>:<pk>'."
                )
            if not DataKey.objects.using(self.database).filter(scope=canonical).exists():
                raise CommandError(
                    f"No data key has the scope {canonical!r}. Scopes look like "
                    "'tenant:42' or 'row:crm.person:<pk>'; the DataKey admin lists them."
                )
            normalized.append(canonical)
        return normalized

    def _row_scope(self, scope: str, rest: str) -> str:
        label, _, pk_text = rest.rpartition(":")
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            raise CommandError(
                f"Unknown model in scope {scope!r}; use 'row:<app_label>.<model>:<pk>'."
            ) from None
        row_fields = [
            f
            for f in model._meta.local_concrete_fields
            if isinstance(f, EncryptedField) and f.key_scope == "row"
        ]
        if not row_fields:
            raise CommandError(f"{model._meta.label} has no fields with key_scope='row'.")
        try:
            return row_fields[0]._scope_from_context(pk_text)
        except (ValueError, TypeError, ValidationError) as error:
            raise CommandError(
                f"Invalid primary key {pk_text!r} in scope {scope!r}: {error}"
            ) from None

    # Output

    @property
    def _human(self) -> Any:
        # With --json, stdout carries only the JSON document.
        return self.stderr if self.as_json else self.stdout

    def _warn(self, message: str) -> None:
        if self.verbosity >= 1:
            self._human.write(message)

    def _stopped(self, options: dict[str, Any]) -> str:
        if options["dry_run"]:
            return "This was a dry run: nothing was changed."
        if options["rewrap"]:
            return "Keys re-wrapped so far keep their new wrapping; the others are unchanged."
        return (
            "The batch in progress was rolled back; values already moved stay readable, "
            "and the others are as they were."
        )

    def _progress(self, progress: Progress) -> None:
        if self.verbosity < 1:
            return
        left = progress.seconds_left
        left_text = f", about {left:.0f} s left" if left is not None and left >= 1 else ""
        self._human.write(
            f"  {progress.task}: {progress.done}/{progress.total} {progress.unit} "
            f"({progress.per_second:.0f} {progress.unit}/s{left_text})"
        )

    def _detail(self, message: str, verbosity: int) -> None:
        if self.verbosity >= verbosity:
            self._human.write(f"  {message}")

    def _reasons(self, summary: RotationSummary) -> str:
        return "; ".join(f"{count} {reason}" for reason, count in summary.values_skipped.items())

    def _report(self, summary: RotationSummary, *, finished: bool) -> None:
        if self.as_json:
            self.stdout.write(json.dumps(summary.as_dict(), indent=2, sort_keys=True))
            return
        if self.verbosity < 1:
            return
        write = self._human.write
        if summary.dry_run:
            # After a failure, the CommandError states that nothing was changed.
            heading = "Dry run: nothing was changed." if finished else "Dry run, until the failure"
            write(self.style.MIGRATE_HEADING(heading))
            for name, count in summary.planned.items():
                label = name.replace("_", " ")
                if name == "kms_calls":
                    label = "KMS calls (estimate)"
                write(f"  {label}: {count}")
            self._report_failures(summary)
            return
        heading = "Summary" if finished else "Summary of the work done before the failure"
        write(self.style.MIGRATE_HEADING(heading))
        write(f"  data keys created: {summary.keys_created}")
        write(f"  data keys retired: {summary.keys_retired}")
        write(f"  data keys deleted: {summary.keys_deleted}")
        write(f"  data keys re-wrapped: {summary.keys_rewrapped}")
        for reason, count in summary.keys_kept.items():
            write(f"  retired data keys kept ({reason}): {count}")
        if summary.scopes_resumed:
            write(
                "  scopes not rotated again, to finish an earlier rotation: "
                f"{summary.scopes_resumed}"
            )
        write(f"  rows scanned: {summary.rows_scanned}")
        if summary.rows_waited_for:
            held = summary.rows_waited_for
            write(f"  rows that other transactions held, done after waiting: {held}")
        write(f"  values re-encrypted: {summary.values_reencrypted}")
        write(f"  values encrypted from plaintext: {summary.values_encrypted_from_plaintext}")
        calls = ", ".join(f"{name} {count}" for name, count in sorted(summary.kms_calls.items()))
        write(f"  key provider calls: {calls or 'none'}")
        self._report_failures(summary)
        if finished and not summary.values_skipped:
            write(self.style.SUCCESS("Done."))

    def _report_failures(self, summary: RotationSummary) -> None:
        write = self._human.write
        for reason, count in summary.values_skipped.items():
            write(self.style.WARNING(f"  values left unchanged ({reason}): {count}"))
        for failure in summary.failures:
            write(
                self.style.WARNING(
                    f"    {failure['model']}.{failure['field']} pk={failure['pk']}: "
                    f"{failure['reason']}"
                )
            )


def _days(value: float | None) -> datetime.timedelta | None:
    return None if value is None else datetime.timedelta(days=value)


def _seconds(value: float | None) -> datetime.timedelta | None:
    return None if value is None else datetime.timedelta(seconds=value)


def _has_encrypted_fields(model: Any) -> bool:
    return any(isinstance(f, EncryptedField) for f in model._meta.local_concrete_fields)


def _encrypted_model_labels() -> list[str]:
    return sorted(model._meta.label for model in apps.get_models() if _has_encrypted_fields(model))


def _sentence(error: Exception) -> str:
    """The error's message as one sentence that ends with a period."""
    text = str(error).strip()
    return text if text.endswith((".", "!", "?")) else f"{text}."
