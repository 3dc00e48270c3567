"""Test support: real Dovecot instances, mailbox comparison, PostgreSQL databases, gateway processes.

Nothing here is imported by the product; the fixtures that wire these helpers into tests live in
``tests/conftest.py``.
"""
