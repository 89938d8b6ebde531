import datetime
import json
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from django_kms_fields.exceptions import KeyProviderError
from django_kms_fields.fields import EncryptedField
from django_kms_fields.rotation import (
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


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive integer"
_non_negative_float.__name__ = "non-negative number"


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
            "plaintext) with the active key of their scope, then delete unused retired keys.",
        )
        modes.add_argument(
            "--rewrap",
            action="store_true",
            help="Wrap data keys under the master key of --master-key-id (default: "
            "KMS_FIELDS['MASTER_KEY_ID']) with KMS ReEncrypt. Values are not touched.",
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
            help="Only this scope (repeatable): 'global', 'tenant:<id>', 'row:<app>.<model>:"
            "<pk>', or a kind, 'tenant' or 'row'.",
        )
        parser.add_argument(
            "--older-than",
            type=_non_negative_float,
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
            type=_non_negative_float,
            metavar="SECONDS",
            help="Delete an unused retired key only when it was retired more than SECONDS "
            "ago (default: DATA_KEY_CACHE_TTL + 300). Must exceed the time processes cache "
            "keys and your longest transaction.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Report what would change (keys, values, KMS calls) and change nothing.",
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
        if options["database"] not in connections:
            raise CommandError(f"Unknown database {options['database']!r}.")
        self.verbosity = options["verbosity"]
        self.as_json = options["json"]

        rotation_options = RotationOptions(
            using=options["database"],
            models=self._models(options["models"]),
            scopes=self._scopes(options["scopes"]),
            older_than=(
                datetime.timedelta(days=options["older_than"])
                if options["older_than"] is not None
                else None
            ),
            batch_size=options["batch_size"],
            dry_run=options["dry_run"],
            reencrypt=options["reencrypt"],
            rewrap=options["rewrap"],
            master_key_id=options["master_key_id"],
            delete_after=(
                datetime.timedelta(seconds=options["delete_after"])
                if options["delete_after"] is not None
                else None
            ),
        )
        rotation = Rotation(rotation_options, self._progress, self._detail)
        try:
            summary = rotation.run()
        except KeyProviderError as error:
            self._report(rotation.summary)
            raise CommandError(
                f"The key provider failed with {error.code}: {error}. The batch in progress "
                "was rolled back and every value is still readable. Fix the cause and run "
                "the same command again to finish."
            ) from error
        except DatabaseError as error:
            self._report(rotation.summary)
            hint = ""
            if connections[options["database"]].vendor == "sqlite" and "locked" in str(error):
                hint = (
                    " Another process (probably another rotate_keys run) holds SQLite's "
                    "write lock; wait for it to finish."
                )
            raise CommandError(
                f"Database error: {error}.{hint} The batch in progress was rolled back; run "
                "the same command again to finish."
            ) from error
        self._report(summary)
        if summary.values_skipped:
            raise CommandError(
                f"{sum(summary.values_skipped.values())} stored values were left unchanged: "
                f"{self._reasons(summary)}. Their rows are listed above; nothing else was "
                "affected. Inspect them (see the rotate_keys runbook) and run again."
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
                    f"Unknown model {label!r}; use APP_LABEL.ModelName, for example crm.Person."
                ) from None
            if not any(isinstance(f, EncryptedField) for f in model._meta.local_concrete_fields):
                raise CommandError(f"{model._meta.label} has no encrypted fields of its own.")
            chosen.append(model)
        return chosen

    def _scopes(self, scopes: list[str] | None) -> list[str] | None:
        if not scopes:
            return None
        for scope in scopes:
            if scope not in ("global", "tenant", "row") and not scope.startswith(
                ("tenant:", "row:")
            ):
                raise CommandError(
                    f"Unknown scope {scope!r}; use 'global', 'tenant', 'row', "
                    "'tenant:<id>' or 'row:<app>.<model>:<pk>'."
                )
        return scopes

    # Output

    @property
    def _human(self) -> Any:
        # With --json, stdout carries only the JSON document.
        return self.stderr if self.as_json else self.stdout

    def _progress(self, progress: Progress) -> None:
        if self.verbosity < 1:
            return
        left = progress.seconds_left
        left_text = f", about {left:.0f} s left" if left is not None and left >= 1 else ""
        self._human.write(
            f"  {progress.model}: {progress.done}/{progress.total} rows "
            f"({progress.rows_per_second:.0f} rows/s{left_text})"
        )

    def _detail(self, message: str) -> None:
        if self.verbosity >= 2:
            self._human.write(f"  {message}")

    def _reasons(self, summary: RotationSummary) -> str:
        return "; ".join(f"{count} {reason}" for reason, count in summary.values_skipped.items())

    def _report(self, summary: RotationSummary) -> None:
        if self.as_json:
            self.stdout.write(json.dumps(summary.as_dict(), indent=2, sort_keys=True))
            return
        if self.verbosity < 1:
            return
        write = self.stdout.write
        if summary.dry_run:
            write(self.style.MIGRATE_HEADING("Dry run: nothing was changed."))
            for name, count in summary.planned.items():
                label = name.replace("_", " ")
                if name == "kms_calls":
                    label = "KMS calls (estimate)"
                write(f"  {label}: {count}")
            return
        write(self.style.MIGRATE_HEADING("Summary"))
        write(f"  data keys created: {summary.keys_created}")
        write(f"  data keys retired: {summary.keys_retired}")
        write(f"  data keys deleted: {summary.keys_deleted}")
        write(f"  data keys re-wrapped: {summary.keys_rewrapped}")
        for reason, count in summary.keys_kept.items():
            write(f"  retired data keys kept ({reason}): {count}")
        if summary.scopes_resumed:
            write(
                f"  scopes not rotated again, to finish an earlier re-encryption: "
                f"{summary.scopes_resumed}"
            )
        write(f"  rows scanned: {summary.rows_scanned}")
        write(f"  values re-encrypted: {summary.values_reencrypted}")
        write(f"  values encrypted from plaintext: {summary.values_encrypted_from_plaintext}")
        calls = ", ".join(f"{name} {count}" for name, count in sorted(summary.kms_calls.items()))
        write(f"  key provider calls: {calls or 'none'}")
        for reason, count in summary.values_skipped.items():
            write(self.style.WARNING(f"  values skipped ({reason}): {count}"))
        for failure in summary.failures:
            write(
                self.style.WARNING(
                    f"    {failure['model']}.{failure['field']} pk={failure['pk']}: "
                    f"{failure['reason']}"
                )
            )
        if not summary.values_skipped:
            write(self.style.SUCCESS("Done."))
