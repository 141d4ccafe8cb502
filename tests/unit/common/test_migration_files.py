"""How migration files are found and named (no database)."""

from __future__ import annotations

import pytest

from services.common import db


def test_files_load_in_version_order_with_checksums(tmp_path):
    (tmp_path / "0002_b.sql").write_text("SELECT 2;")
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    found = db.load_migrations(tmp_path)
    assert [(m.version, m.name) for m in found] == [(1, "a"), (2, "b")]
    assert found[0].checksum != found[1].checksum


def test_a_badly_named_sql_file_is_an_error_not_skipped(tmp_path):
    (tmp_path / "1_a.sql").write_text("SELECT 1;")
    with pytest.raises(db.MigrationError, match="NNNN_lower_snake.sql"):
        db.load_migrations(tmp_path)


def test_one_version_twice_is_an_error(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(db.MigrationError, match="used twice"):
        db.load_migrations(tmp_path)


def test_a_service_without_migrations_has_none():
    assert db.discover("no_such_service") == []


def test_schema_names_that_are_not_plain_identifiers_are_refused():
    with pytest.raises(ValueError):
        db._check_schema_name('x"; DROP SCHEMA public; --')
