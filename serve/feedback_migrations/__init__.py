"""Alembic migrations of the feedback database (``serve/feedback.py``), for SQLite and PostgreSQL alike.

``FeedbackStore`` runs them itself when it opens a database for writing, inside the transaction that
holds the database's write lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-scoped advisory
lock, and PostgreSQL's DDL is transactional too): an upgrade is applied whole or not at all, and two
app processes starting at once on an empty database do not race. There is no ``alembic`` command to
run by hand.

A new migration: add ``versions/NNNN_what.py`` (``revision = "NNNN"``, ``down_revision`` the previous
head), end its ``upgrade()`` with ``set_schema_version(conn, N)``, and raise ``SCHEMA_VERSION`` and
``ALEMBIC_HEAD`` in ``serve/feedback.py`` (a test checks that they agree with these files).
"""
from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

SCRIPT_LOCATION = str(Path(__file__).resolve().parent)


def set_schema_version(conn, version: int) -> None:
    """Write ``meta.schema_version`` (kept beside alembic's own table: Keel before alembic reads it)."""
    meta = sa.table("meta", sa.column("key", sa.Text), sa.column("value", sa.Text))
    done = conn.execute(sa.update(meta).where(meta.c.key == "schema_version").values(value=str(version)))
    if done.rowcount == 0:
        conn.execute(sa.insert(meta).values(key="schema_version", value=str(version)))
