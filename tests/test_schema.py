"""The schema ctx applies: tables, views, extensions, triggers, constraints and the migrations record."""

from __future__ import annotations

import time

import psycopg
import pytest

from coditect_ctx.errors import SchemaError
from coditect_ctx.stores import Store
from coditect_ctx.stores import postgres as pg


@pytest.fixture
def conn(stack):
    """A connection whose every change is rolled back: the shared store stays as it was."""
    with Store(stack) as store:
        connection = store.pg()
        try:
            yield connection
        finally:
            connection.rollback()
            connection.close()


def _source(conn) -> str:
    return conn.execute("INSERT INTO submodule_registry (name) VALUES ('schema-test') RETURNING id").fetchone()[0]


def test_tables_views_and_extensions(conn):
    tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert set(pg.TABLES) | {"schema_migrations"} <= tables
    views = {r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    assert set(pg.VIEWS) <= views
    extensions = {r[0] for r in conn.execute("SELECT extname FROM pg_extension")}
    assert "pg_trgm" in extensions
    assert conn.execute("SELECT framework FROM db_metadata").fetchone()[0] == "CODITECT MEMORY-CONTEXT"
    applied = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert applied[0] == (1, "core_schema") and len(applied) == len(pg.load_migrations())


def test_keys_are_uuids_and_times_are_timestamptz(conn):
    rows = conn.execute(
        """SELECT table_name, column_name, data_type FROM information_schema.columns
           WHERE table_schema = 'public' AND (column_name = 'id' OR column_name LIKE '%%_at')""").fetchall()
    for table, column, kind in rows:
        if table in pg.VIEWS:
            continue
        if column == "id" and table != "db_metadata":
            assert kind == "uuid", (table, column)
        if column.endswith("_at"):
            assert kind == "timestamp with time zone", (table, column)


def test_indexes_for_search(conn):
    indexes = {r[0]: r[1] for r in conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")}
    for table in ("sessions", "checkpoints", "patterns", "messages"):
        assert "USING gin (search_vector)" in indexes[f"{table}_search_idx"]
        assert "jsonb_path_ops" in indexes[f"{table}_metadata_idx"]
    assert "gin_trgm_ops" in indexes["sessions_title_trgm_idx"]


def test_updated_at_trigger(conn):
    sub = _source(conn)
    conn.execute("INSERT INTO checkpoints (identity, ref, submodule_id, title, content_sha256) VALUES ('t1', 't1', %s, 'a', 'x')",
                 (sub,))
    before = conn.execute("SELECT updated_at FROM checkpoints WHERE identity = 't1'").fetchone()[0]
    conn.commit()  # now() is the transaction's time: the update must come in a later transaction
    try:
        time.sleep(0.01)
        conn.execute("UPDATE checkpoints SET title = 'b' WHERE identity = 't1'")
        after = conn.execute("SELECT updated_at FROM checkpoints WHERE identity = 't1'").fetchone()[0]
        assert after > before
    finally:
        conn.rollback()
        conn.execute("DELETE FROM submodule_registry WHERE name = 'schema-test'")
        conn.commit()


@pytest.mark.parametrize("sql, params", [
    ("INSERT INTO sessions (identity, submodule_id, title, content_sha256, privacy_level) VALUES ('s', %s, 't', 'x', 'SECRET')", 1),
    ("INSERT INTO sessions (identity, submodule_id, title, content_sha256, status) VALUES ('s', %s, 't', 'x', 'paused')", 1),
    ("INSERT INTO checkpoints (identity, ref, submodule_id, title, content_sha256, git_commit) VALUES ('c', 'c', %s, 't', 'x', 'not-a-sha')", 1),
    ("INSERT INTO messages (identity, submodule_id, role, content, content_sha256) VALUES ('m', %s, 'robot', 'hi', 'x')", 1),
    ("INSERT INTO patterns (identity, name, content_sha256, usage_count) VALUES ('p', 'n', 'x', -1)", 0),
    ("INSERT INTO patterns (identity, name, content_sha256, confidence) VALUES ('p', 'n', 'x', 1.5)", 0),
    ("INSERT INTO tags (name) VALUES ('UpperCase')", 0),
    ("INSERT INTO privacy_audit (record_type, record_identity, action) VALUES ('session', 'x', 'shredded')", 0),
    ("INSERT INTO db_metadata (id) VALUES (2)", 0),
])
def test_constraints_reject_bad_values(conn, sql, params):
    args = (_source(conn),) if params else ()
    with pytest.raises(psycopg.errors.IntegrityError):
        conn.execute(sql, args)


def test_foreign_keys_delete_the_right_way(conn):
    sub = _source(conn)
    cp = conn.execute("INSERT INTO checkpoints (identity, ref, submodule_id, title, content_sha256) "
                      "VALUES ('c', 'c', %s, 't', 'x') RETURNING id", (sub,)).fetchone()[0]
    session = conn.execute("INSERT INTO sessions (identity, submodule_id, checkpoint_id, title, content_sha256) "
                           "VALUES ('s', %s, %s, 't', 'x') RETURNING id", (sub, cp)).fetchone()[0]
    tag = conn.execute("INSERT INTO tags (name) VALUES ('fk-test') RETURNING id").fetchone()[0]
    conn.execute("INSERT INTO session_tags VALUES (%s, %s)", (session, tag))
    conn.execute("INSERT INTO messages (identity, submodule_id, session_id, role, content, content_sha256) "
                 "VALUES ('m', %s, %s, 'user', 'hi', 'x')", (sub, session))
    conn.execute("DELETE FROM checkpoints WHERE id = %s", (cp,))
    assert conn.execute("SELECT checkpoint_id FROM sessions WHERE id = %s", (session,)).fetchone()[0] is None  # SET NULL
    conn.execute("DELETE FROM sessions WHERE id = %s", (session,))
    assert conn.execute("SELECT count(*) FROM session_tags WHERE tag_id = %s", (tag,)).fetchone()[0] == 0  # CASCADE
    assert conn.execute("SELECT session_id FROM messages WHERE identity = 'm'").fetchone()[0] is None  # SET NULL
    conn.execute("DELETE FROM submodule_registry WHERE id = %s", (sub,))
    assert conn.execute("SELECT count(*) FROM messages WHERE identity = 'm'").fetchone()[0] == 0  # source owns records


def test_full_text_vector_is_generated(conn):
    sub = _source(conn)
    conn.execute("INSERT INTO sessions (identity, submodule_id, title, summary, content, content_sha256) "
                 "VALUES ('fts', %s, 'Cloud SQL pool', 'connections leaked', 'fixed with pool_recycle', 'x')", (sub,))
    def matches(query: str) -> bool:  # only this row: the session-wide stack holds other tests' sessions
        return conn.execute("SELECT search_vector @@ websearch_to_tsquery('english', %s) FROM sessions "
                            "WHERE identity = 'fts'", (query,)).fetchone()[0]

    assert matches("leaking connection")  # stemmed, from summary and title
    assert matches("pool_recycle")        # from content
    assert not matches("redis eviction")


def test_a_newer_database_is_refused():
    known = {m.version: m for m in pg.load_migrations()}
    done = {v: m.sha256 for v, m in known.items()}
    with pytest.raises(SchemaError, match="newer"):
        pg.check_compatible({**done, 999: "x"}, known)
    with pytest.raises(SchemaError, match="changed"):
        pg.check_compatible({1: "0" * 64}, known)
