import datetime
import importlib
import random
import sys
import time
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from faker import Faker

from clinic.models import Organisation, Person, Visit

# One Faker locale per organisation, with the organisation's name; several
# use non-Latin scripts. Each locale has names and a lorem provider in Faker,
# so that notes are in its script too. The names are fixed because Faker's
# company names, drawn from family names, can be unfortunate in a demo.
ORGANISATIONS = {
    "en_US": "Riverside Family Clinic",
    "ja_JP": "さくら総合クリニック",
    "de_DE": "Praxis am Stadtpark",
    "ar_SA": "عيادة النخيل الطبية",
    "ru_RU": "Клиника «Здоровье»",
    "bn_BD": "সেবা ক্লিনিক",
    "fr_FR": "Clinique des Lilas",
    "zh_CN": "安康诊所",
    "el_GR": "Κλινική Ασκληπιός",
    "he_IL": "מרפאת השקמים",
}
LOCALES = list(ORGANISATIONS)
# Faker's ssn() for these locales returns US social security numbers. These
# formats give the shapes of the Saudi national id and the Japanese My Number.
NATIONAL_ID_FORMATS = {"ar_SA": "1#########", "ja_JP": "############"}
# Faker has no lorem provider for ar_SA, so its text would be Latin; ar_AA's is Arabic.
LOREM_PROVIDERS = {"ar_SA": "faker.providers.lorem.ar_AA"}
# Fixed, so that a second run recreates the same ids and skips existing people.
NAMESPACE = uuid.UUID("4b1f6a44-62f1-4e61-9d57-44e2f33a3d0c")
BATCH_SIZE = 200


class Command(BaseCommand):
    help = (
        "Create demo organisations and people with realistic data in several languages. "
        "Running it again only adds what is missing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--organisations",
            type=int,
            default=6,
            help=f"Number of organisations (tenants), 1 to {len(LOCALES)} (default: 6).",
        )
        parser.add_argument(
            "--people", type=int, default=500, help="People per organisation (default: 500)."
        )

    def handle(self, *args: Any, organisations: int, people: int, **options: Any) -> None:
        if not 1 <= organisations <= len(LOCALES):
            raise CommandError(f"--organisations must be from 1 to {len(LOCALES)}.")
        if people < 0:
            raise CommandError("--people must be 0 or more.")
        self.verbosity = options["verbosity"]
        created_total = 0
        started = time.monotonic()
        for index, locale in enumerate(LOCALES[:organisations]):
            created_total += self.seed_organisation(index, locale, people)
        elapsed = time.monotonic() - started
        if self.verbosity:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created {created_total} people in {elapsed:.1f} s; "
                    f"{Person.objects.count()} people in {Organisation.objects.count()} "
                    "organisations now."
                )
            )

    def seed_organisation(self, index: int, locale: str, count: int) -> int:
        fake = Faker(locale)
        if locale in LOREM_PROVIDERS:
            fake.add_provider(importlib.import_module(LOREM_PROVIDERS[locale]).Provider)
        fake.seed_instance(index)
        organisation, _created = Organisation.objects.get_or_create(
            slug=f"org-{index + 1}",
            defaults={"name": ORGANISATIONS[locale], "locale": locale},
        )
        ids = [uuid.uuid5(NAMESPACE, f"{organisation.slug}/{n}") for n in range(count)]
        existing = set(Person.objects.filter(pk__in=ids).values_list("pk", flat=True))
        missing = [(n, person_id) for n, person_id in enumerate(ids) if person_id not in existing]
        randomness = random.Random(index)  # noqa: S311 - demo data, not secrets
        started = time.monotonic()
        for start in range(0, len(missing), BATCH_SIZE):
            batch = missing[start : start + BATCH_SIZE]
            people = [self.person(fake, randomness, organisation, n, pk) for n, pk in batch]
            visits = [visit for person in people for visit in self.visits(fake, randomness, person)]
            with transaction.atomic():
                Person.objects.bulk_create(people)
                Visit.objects.bulk_create(visits)
            self.progress(organisation, locale, start + len(batch), len(missing), started)
        if not missing and self.verbosity:
            self.stdout.write(f"{organisation.name} ({locale}): all {count} people exist already.")
        return len(missing)

    def progress(
        self, organisation: Organisation, locale: str, done: int, total: int, started: float
    ) -> None:
        if not self.verbosity:
            return
        rate = done / max(time.monotonic() - started, 1e-6)
        line = f"{organisation.name} ({locale}): {done}/{total} people ({rate:.0f}/s)"
        if sys.stdout.isatty() and done < total:
            self.stdout.write(line, ending="\r")
        else:
            self.stdout.write(line)

    def person(
        self,
        fake: Faker,
        randomness: random.Random,
        organisation: Organisation,
        number: int,
        pk: uuid.UUID,
    ) -> Person:
        fake.seed_instance(f"{organisation.slug}/{number}")
        if organisation.locale in NATIONAL_ID_FORMATS:
            national_id = fake.numerify(NATIONAL_ID_FORMATS[organisation.locale])
        else:
            try:
                national_id = fake.ssn()
            except AttributeError:
                national_id = fake.bothify("??########").upper()
        return Person(
            id=pk,
            organisation=organisation,
            full_name=fake.name(),
            notes="\n\n".join(fake.paragraphs(nb=randomness.randint(1, 3))),
            email=fake.free_email(),
            date_of_birth=fake.date_of_birth(minimum_age=1, maximum_age=95),
            national_id=national_id[:32],
            history=self.history(fake, randomness),
            risk_score=randomness.randint(0, 100),
            last_reviewed_at=fake.date_time_between(start_date="-2y", tzinfo=datetime.timezone.utc),
        )

    def history(self, fake: Faker, randomness: random.Random) -> list[dict[str, Any]]:
        """A nested document: encounters with vitals, prescriptions and free text."""
        return [
            {
                "date": fake.date_between(start_date="-5y").isoformat(),
                "reason": fake.sentence(nb_words=6),
                "vitals": {
                    "blood_pressure": [randomness.randint(95, 160), randomness.randint(55, 100)],
                    "heart_rate": randomness.randint(50, 120),
                    "temperature_c": round(randomness.uniform(35.8, 39.5), 1),
                },
                "prescriptions": [
                    {"drug": fake.word(), "dose_mg": randomness.choice([5, 10, 20, 50, 100])}
                    for _ in range(randomness.randint(0, 2))
                ],
                "follow_up": randomness.random() < 0.3,
                "note": fake.sentence() if randomness.random() < 0.5 else None,
            }
            for _ in range(randomness.randint(0, 4))
        ]

    def visits(self, fake: Faker, randomness: random.Random, person: Person) -> list[Visit]:
        return [
            Visit(
                person=person,
                day=fake.date_between(start_date="-1y"),
                summary=fake.sentence(nb_words=12),
            )
            for _ in range(randomness.randint(0, 3))
        ]
