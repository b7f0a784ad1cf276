"""The run store: every run's durable record in SQLite (or PostgreSQL) through SQLAlchemy.

- ``models``: the schema (typed ORM classes); ``migrations/``: Alembic revisions, run on open.
- ``db``: ``open_store(url)`` (pragmas, migrate to head, errors that say what to do).
- ``journal``: ``start_run`` and ``SqlJournal``, the event loop's journal, writing in batches.
- ``queries``: runs and one run's record read back, for ``runs`` and ``report``.
- ``convert``: domain values <-> rows. ``commands``: the CLI side (recording, ``runs``, ``report``).
"""
