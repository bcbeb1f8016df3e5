"""hubstack's tables in the hub's database: a column a newer hubstack adds reaches a
database made before it, whose rows are kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hubstack.hub.tables import create_tables


def test_new_nullable_columns_are_added_to_an_existing_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jupyterhub.sqlite"
    create_tables(url)
    db = sqlite3.connect(tmp_path / "jupyterhub.sqlite")
    # The copy jobs' table as it was before jobs chose where they run.
    db.execute("ALTER TABLE hubstack_storage_copy_jobs DROP COLUMN machine")
    db.execute("ALTER TABLE hubstack_storage_copy_jobs DROP COLUMN partition")
    db.execute(
        "INSERT INTO hubstack_storage_copy_jobs (owner, source, destination, workdir, recursive,"
        " checksum, log, state, files_done, bytes_done, error, created_at, updated_at)"
        " VALUES ('old', 's:a', 'b', '/', 0, 0, '', 'done', 0, 0, '', '2026-01-01', '2026-01-01')"
    )
    db.commit()
    create_tables(url)
    rows = db.execute("SELECT owner, machine, partition FROM hubstack_storage_copy_jobs").fetchall()
    assert rows == [("old", None, None)]
