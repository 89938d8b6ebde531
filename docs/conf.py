"""Sphinx configuration. Build with: make docs"""

import os
import sys

import django

DOCS = os.path.abspath(os.path.dirname(__file__))
sys.path[:0] = [os.path.dirname(DOCS), DOCS]
os.environ["DJANGO_SETTINGS_MODULE"] = "doctest_settings"
django.setup()

project = "django-kms-fields"
author = "django-kms-fields contributors"
copyright = "2026, django-kms-fields contributors"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
exclude_patterns = ["_build"]

# Every example runs: python blocks are testcode, and interactive sessions
# doctest blocks, against an in-memory SQLite database (make docs).
doctest_global_setup = """
from doctest_support import create_tables, forget_models, setup_database
setup_database()
__name__ = "clinics.models"
"""
html_theme = "alabaster"
html_title = "django-kms-fields"
