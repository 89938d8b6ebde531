"""The documentation's examples that Sphinx's doctest builder does not run.

Python examples in docs/ are ``testcode`` and ``doctest`` blocks, run by
``make docs``. These tests cover the rest: shell commands, JSON, the README,
and that every option, setting and check is documented.
"""

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
from django.core.management import get_commands, load_command_class
from django.core.management.base import BaseCommand, CommandError

from django_kms_fields.conf import DEFAULTS
from django_kms_fields.keyring import encryption_context

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.rst"))
DOCS = {page.name: page.read_text() for page in PAGES}
ALL_DOCS = "\n".join(DOCS.values())

# Placeholders in the docs, and a value of the right type for each.
PLACEHOLDERS = {
    "DAYS": "30",
    "SECONDS": "600",
    "ROWS": "500",
    "ID": "alias/next",
    "SCOPE": "global",
    "APP_LABEL.ModelName": "testapp.Note",
}


def code_blocks(text, language):
    """Yield the body of each ``.. code-block:: language`` in ``text``, dedented."""
    pattern = re.compile(
        rf"^(?P<indent> *)\.\. code-block:: {language}\n\n(?P<body>(?:(?P=indent) +.*\n|\n)+)",
        re.MULTILINE,
    )
    for match in pattern.finditer(text):
        lines = match["body"].rstrip().splitlines()
        margin = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
        yield "\n".join(line[margin:] for line in lines)


def markdown_blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def documented_commands():
    """Every ``manage.py`` command line in the docs: shell blocks and inline literals."""
    found = []
    for name, text in DOCS.items():
        for block in code_blocks(text, "shell"):
            found += [(name, line) for line in block.splitlines() if "manage.py" in line]
        flat = re.sub(r"\s*\n\s*", " ", text)
        for literal in re.findall(r"``((?:python manage\.py )?rotate_keys(?: [^`]*)?)``", flat):
            found.append((name, literal))
    return found


def parse_command_line(line):
    words = re.sub(r"<[^>]*>", "placeholder", line).replace("[", "").replace("]", "")
    arguments = [PLACEHOLDERS.get(word, word) for word in shlex.split(words)]
    if "manage.py" in arguments:
        arguments = arguments[arguments.index("manage.py") + 1 :]
    name, *rest = arguments
    command = load_command_class(get_commands()[name], name)
    command.create_parser("manage.py", name).parse_args(rest)
    return name, rest


def test_python_examples_are_doctests():
    for name, text in DOCS.items():
        assert not re.search(r"code-block:: (python|pycon)\b", text), (
            f"{name}: write Python examples as testcode or doctest blocks, so that they run"
        )


@pytest.mark.parametrize(("page", "line"), documented_commands())
def test_documented_commands_parse(page, line):
    try:
        parse_command_line(line)
    except (CommandError, KeyError) as error:
        pytest.fail(f"{page}: {line!r} does not parse: {error!r}")


def test_commands_are_found_in_the_docs():
    lines = documented_commands()
    assert len(lines) > 15
    assert {parse_command_line(line)[0] for _page, line in lines} == {"rotate_keys"}


def test_every_rotate_keys_option_is_documented():
    command = load_command_class("django_kms_fields", "rotate_keys")
    base = BaseCommand().create_parser("manage.py", "base")
    common = {option for action in base._actions for option in action.option_strings}
    parser = command.create_parser("manage.py", "rotate_keys")
    options = {option for action in parser._actions for option in action.option_strings}
    for option in sorted(options - common):
        if option.startswith("--"):
            assert re.search(rf"{option}\b", DOCS["rotate-keys.rst"]), option


def test_every_setting_is_documented():
    for key in DEFAULTS:
        assert f"``{key}``" in DOCS["settings.rst"], key
    assert "``MASTER_KEY_ID``" in DOCS["settings.rst"]


def test_every_check_is_documented():
    source = "\n".join(path.read_text() for path in (ROOT / "django_kms_fields").glob("*.py"))
    check_ids = set(re.findall(r"django_kms_fields\.[EW]\d{3}", source))
    assert len(check_ids) > 20
    for check_id in sorted(check_ids):
        assert f"``{check_id}``" in ALL_DOCS or f"``{check_id[-4:]}``" in ALL_DOCS, check_id


def test_key_policy_matches_encryption_context():
    (block,) = code_blocks(DOCS["providers.rst"], "json")
    statement = json.loads(block)
    assert set(statement["Action"]) == {"kms:GenerateDataKey", "kms:Decrypt"}
    context_keys = [f"kms:EncryptionContext:{key}" for key in encryption_context("global")]
    conditions = statement["Condition"]
    assert list(conditions["StringLike"]) == context_keys
    assert conditions["ForAllValues:StringEquals"]["kms:EncryptionContextKeys"] == list(
        encryption_context("global")
    )
    patterns = conditions["StringLike"][context_keys[0]]
    for scope in ("global", "tenant:42", "row:clinic.person:7"):
        assert any(re.fullmatch(pattern.replace("*", ".*"), scope) for pattern in patterns)


def test_readme_python_examples_compile():
    readme = (ROOT / "README.md").read_text()
    blocks = markdown_blocks(readme, "python")
    assert len(blocks) >= 2
    for block in blocks:
        ast.parse(block.replace("[...,", "["))
