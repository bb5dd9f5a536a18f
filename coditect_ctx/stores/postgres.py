"""PostgreSQL: connections, the versioned schema in sql/, and the figures status and health report.

Migrations are the files `sql/NNN_name.sql`, applied in order, each in one transaction together with its row in
`schema_migrations` (version, name, sha256). An applied file whose text changed, or a database that knows a
version this ctx does not, stops ctx with a SchemaError rather than guessing.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

from ..errors import SchemaError, ServiceError
from ..kinds import TABLES as KIND_TABLES  # kind -> table: a fact of the kinds, defined there

TABLES = (
    *KIND_TABLES.values(), "tags", "session_tags", "pattern_tags",
    "privacy_audit", "context_loads", "db_metadata", "submodule_registry", "source_folders", "record_sources",
)
VIEWS = ("v_active_sessions", "v_patterns_by_usage", "v_privacy_audit_summary", "v_recent_checkpoints")
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_dir():
    """The packaged schema files (coditect_ctx._sql, mapped to the repo's sql/ folder), as a Traversable; in a
    bare checkout that was never installed, the sql/ folder beside the package."""
    try:
        return resources.files("coditect_ctx._sql")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "sql"


def load_migrations(folder=None) -> list[Migration]:
    folder = folder or sql_dir()
    found = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    if not found:
        raise SchemaError(f"No schema files (NNN_name.sql) found in {folder}", hint="Reinstall ctx: its package is incomplete.")
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise SchemaError(f"Two schema files share a version number in {folder}")
    return found


def latest_version() -> int:
    migrations = load_migrations()
    return migrations[-1].version if migrations else 0


def connect(url: str, timeout: float = 5.0, autocommit: bool = False, service: str = "postgres"):
    """A psycopg connection, or a ServiceError that names the service and the fix."""
    import psycopg

    try:
        return psycopg.connect(url, connect_timeout=max(1, int(round(timeout))), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise ServiceError(
            f"{service}: cannot connect: {_first_line(exc)}",
            hint="Is it running? `ctx status` shows the services; `ctx setup` starts them.",
            service=service,
        ) from exc


@contextmanager
def session(url: str, timeout: float = 5.0) -> Iterator:
    conn = connect(url, timeout)
    try:
        yield conn
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def applied_versions(conn) -> dict[int, str]:
    exists = conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return {}
    return {v: sha for v, sha in conn.execute("SELECT version, sha256 FROM schema_migrations ORDER BY version")}


def schema_version(conn) -> int:
    versions = applied_versions(conn)
    return max(versions) if versions else 0


def migrate_schema(url: str) -> list[str]:
    """Apply pending schema files; return the names applied (empty when current). Safe to run concurrently."""
    migrations = load_migrations()
    known = {m.version: m for m in migrations}
    applied_now: list[str] = []
    with session(url) as conn:
        # One ctx at a time: two setups racing must not both apply 001.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('ctx schema migrations'))")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   sha256     text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = applied_versions(conn)
        check_compatible(done, known)
        for m in migrations:
            if m.version in done:
                continue
            conn.execute(m.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)", (m.version, m.name, m.sha256)
            )
            applied_now.append(f"{m.version:03d}_{m.name}")
    return applied_now


def check_compatible(done: dict[int, str], known: dict[int, Migration]) -> None:
    newer = sorted(v for v in done if v not in known)
    if newer:
        raise SchemaError(
            f"The database schema is at version {max(done)}, newer than this ctx knows ({max(known, default=0)})",
            hint="Upgrade ctx (pip install -U coditect-ctx) before touching this database.",
        )
    for v, sha in done.items():
        if known[v].sha256 != sha:
            raise SchemaError(
                f"Schema file {v:03d}_{known[v].name}.sql changed after it was applied to this database",
                hint="Never edit an applied migration; add a new numbered file instead.",
            )


def table_counts(conn) -> dict[str, int]:
    parts = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in TABLES)
    return {name: n for name, n in conn.execute(parts)}


def table_sizes(conn) -> dict[str, int]:
    rows = conn.execute(
        """SELECT c.relname, pg_total_relation_size(c.oid)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 2 DESC"""
    )
    return {name: size for name, size in rows}


def database_size(conn) -> int:
    return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def data_generation(conn) -> int:
    row = conn.execute("SELECT data_generation FROM db_metadata WHERE id = 1").fetchone()
    return row[0] if row else 0


def bump_generation(conn) -> int:
    """Every write that changes what search would answer calls this, so cached results go stale at once."""
    return conn.execute(
        "UPDATE db_metadata SET data_generation = data_generation + 1 WHERE id = 1 RETURNING data_generation"
    ).fetchone()[0]


def context_loads_per_day(conn, days: int = 7) -> list[dict]:
    """Packs handed out per UTC day (the last `days` days that had any), newest first: for `ctx status`."""
    rows = conn.execute(
        "SELECT (loaded_at AT TIME ZONE 'UTC')::date AS day, count(DISTINCT pack_id), count(*), "
        "sum(token_count), count(DISTINCT client) "
        "FROM context_loads WHERE loaded_at >= now() - make_interval(days => %s) AND pack_id IS NOT NULL "
        "GROUP BY 1 ORDER BY 1 DESC", (days,)).fetchall()
    return [{"day": day.isoformat(), "packs": packs, "records": records, "tokens": int(tok or 0), "clients": clients}
            for day, packs, records, tok, clients in rows]
