"""The original ``memory-context.db`` (SQLite). It was never committed; its columns are known from the
project's own code quoted in the corpus (NESTED LEARNING ``patterns``: pattern_id, pattern_type, name,
description, template, confidence, quality_score, frequency, reuse_count, last_used, deprecated,
source_session_id, parent_pattern_id, created_at, updated_at, metadata; ``sessions`` keyed by session_id;
``checkpoints`` keyed by checkpoint_id). Columns are read by name when present, so older layouts work too.
The database is opened read-only."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from coditect_ctx.ingest.readers._files import relative
from coditect_ctx.ingest.records import (
    CheckpointRecord, PatternRecord, SessionRecord, Skipped, checkpoint_identity, normalise_checkpoint_ref,
    parse_utc, pattern_identity, session_identity,
)

LegacyRecord = SessionRecord | CheckpointRecord | PatternRecord | Skipped


def _pick(row: dict, *names, default=None):
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    return default


def _json(value, fallback):
    if value in (None, ""):
        return fallback
    if isinstance(value, (dict, list)):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return fallback


def _tags(value) -> list[str]:
    parsed = _json(value, None)
    if isinstance(parsed, list):
        return [str(t) for t in parsed]
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return []


def _rows(conn: sqlite3.Connection, table: str) -> list[dict]:
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
    if not exists:
        return []
    cur = conn.execute(f'SELECT * FROM "{table}"')
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def read_sqlite(path: Path, root: Path | None = None) -> Iterator[LegacyRecord]:
    rel = relative(path, root)
    try:
        sha = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sha.update(chunk)
        digest = sha.hexdigest()
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except (OSError, sqlite3.Error) as exc:
        yield Skipped(rel, f"cannot open SQLite database: {exc}", "failed")
        return
    try:
        sessions, checkpoints, patterns = (_rows(conn, t) for t in ("sessions", "checkpoints", "patterns"))
    except sqlite3.Error as exc:
        yield Skipped(rel, f"not a readable SQLite database: {exc}", "failed")
        return
    finally:
        conn.close()
    for row in checkpoints:
        ref = normalise_checkpoint_ref(str(_pick(row, "checkpoint_id", "filename", "name", default="")))
        if not ref:
            continue
        yield CheckpointRecord(
            identity=checkpoint_identity(ref), ref=ref, title=str(_pick(row, "title", "name", default=ref)),
            created_at=parse_utc(str(_pick(row, "created_at", "timestamp", default=""))),
            sprint=str(_pick(row, "sprint", "sprint_id", default="")), status=str(_pick(row, "status", default="")),
            git_branch=_pick(row, "git_branch", "branch"), git_commit=_pick(row, "git_commit", "commit_hash"),
            summary=str(_pick(row, "summary", "description", default="")),
            content=str(_pick(row, "content", "summary", "description", default="")),
            tags=_tags(row.get("tags")), metadata=_json(row.get("metadata"), {}) or {},
            source_path=rel, source_sha256=digest,
            privacy_level=str(_pick(row, "privacy_level", default="TEAM")).upper(),
        )
    for row in sessions:
        ref = normalise_checkpoint_ref(_pick(row, "checkpoint_id", "checkpoint_file", "checkpoint"))
        title = str(_pick(row, "title", "name", default=row.get("session_id") or ""))
        started = parse_utc(str(_pick(row, "started_at", "created_at", "timestamp", default="")))
        content = str(_pick(row, "content", "context", "summary", default=""))
        metadata = _json(row.get("metadata"), {}) or {}
        metadata["legacy_session_id"] = row.get("session_id")
        yield SessionRecord(
            identity=session_identity(ref, started, title, content), title=title, started_at=started,
            checkpoint_ref=ref, repository=str(_pick(row, "repository", "project", default="")),
            participants=_tags(row.get("participants")), objectives=_tags(row.get("objectives")),
            tags=_tags(row.get("tags")), summary=str(_pick(row, "summary", default="")), content=content,
            metadata=metadata, messages=[], source_format="sqlite", source_path=rel, source_sha256=digest,
            privacy_level=str(_pick(row, "privacy_level", default="TEAM")).upper(),
            status=str(_pick(row, "status", default="")),
        )
    for row in patterns:
        pid = _pick(row, "pattern_id", "id")
        if pid is None:
            continue
        metadata = _json(row.get("metadata"), {}) or {}
        for key in ("template", "confidence", "quality_score", "reuse_count", "last_used", "deprecated",
                    "source_session_id", "parent_pattern_id", "created_at", "updated_at"):
            if row.get(key) is not None:
                metadata.setdefault(key, row[key])
        yield PatternRecord(
            identity=pattern_identity(str(pid)), name=str(_pick(row, "name", default=pid)),
            pattern_type=str(_pick(row, "pattern_type", "type", default="")),
            description=str(_pick(row, "description", default="")),
            usage_count=int(_pick(row, "frequency", "usage_count", "reuse_count", default=0) or 0),
            tags=_tags(row.get("tags")), metadata=metadata, source_path=rel, source_sha256=digest,
            privacy_level=str(_pick(row, "privacy_level", default="TEAM")).upper(),
        )
