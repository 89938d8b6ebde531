"""A Django app for the documentation's examples, installed only by docs/doctest_settings.py.

Examples define their models in this app (their doctest namespace sets
``__name__`` to ``"clinics.models"``), so that they can refer to
``"clinics.Clinic"`` as a real project would.
"""
