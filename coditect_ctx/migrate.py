"""`ctx migrate`: every MEMORY-CONTEXT record into the store, once, redacted, embedded.

Phases:
1. read: discover sources, read every file (ingest.readers), keep one record per identity (sessions met in
   several formats are merged), count what was read, skipped and failed per source and type;
2. redact: PII out of every text before it is written anywhere (ingest.redact), one privacy_audit row per record;
3. write: one PostgreSQL transaction for the whole run: COPY into temporary staging tables, then set-based
   upserts on `identity` that touch a row only when something in it changed (so a second run reports
   everything "unchanged"), then links (session -> checkpoint by the **Checkpoint:** ref, message -> session);
4. embed: every row whose vectors are missing or stale (vectors.embed_pending), also rows left over from
   an earlier run that could not reach Chroma.

Crash safety: phase 3 is one transaction (a kill leaves nothing or everything) and phase 4 marks a row embedded
only after its vectors are in Chroma, so killing a run and starting it again ends in the same state as one
uninterrupted run. If Chroma is unreachable, the rows stay, marked not embedded, and the run exits 1.

Owns reading, redacting and writing records: the staging tables (one `Staged*` dataclass per kind: its fields
are the COPY columns and the row), the upserts, and `expected_hashes`, what a run would store (validate's view of
the files). Kinds' tables and embedded text come from kinds.py; embedding is vectors.py's.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields, make_dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

from .config import Settings
from .errors import CtxError, ServiceError
from .ingest.discover import Source, discover_sources
from .ingest.readers import iter_source
from .ingest.records import KINDS as MESSAGE_KINDS
from .ingest.records import (
    ROLES, CheckpointRecord, MessageRecord, PatternRecord, SessionRecord, Skipped, merge_sessions,
)
from .ingest.redact import redact, redact_local_path, redact_record
from .stores import Store
from .kinds import KINDS, TABLES, WRITE_ORDER
from .points import reach
from .stores import postgres as pg
from .vectors import EmbedResult, count_pending, embed_pending

PRIVACY = ("PUBLIC", "TEAM", "PRIVATE", "EPHEMERAL")
CHECKPOINT_STATUSES = ("active", "in_progress", "completed", "blocked", "archived")
SESSION_STATUSES = ("active", "completed", "archived")
# A transcript-only session keeps an excerpt as its own text; the full conversation lives in its messages.
TRANSCRIPT_EXCERPT_CHARS = 4000

Progress = Callable[[str, int, int], None]


@dataclass
class TypeStats:
    read: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0
    skipped_reasons: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "read": self.read, "imported": self.imported, "updated": self.updated, "unchanged": self.unchanged,
            "skipped": self.skipped, "failed": self.failed, "skipped_reasons": dict(self.skipped_reasons),
            "failures": self.failures,
        }


@dataclass
class MigrateReport:
    dry_run: bool = False
    sources: dict[str, dict[str, TypeStats]] = field(default_factory=dict)
    redacted_records: int = 0
    redactions: Counter = field(default_factory=Counter)
    embedded_records: int = 0
    embedded_vectors: int = 0
    embed_capped: int = 0  # records past Settings.embed_max_chunks chunks: their first chunks only
    embed_max_chunks: int = 0
    not_embedded: int = 0
    embed_error: str | None = None
    data_generation: int | None = None
    notes: list[str] = field(default_factory=list)  # folders read besides those given, or added to a known name
    seconds: dict[str, float] = field(default_factory=dict)

    def stats(self, source: str, kind: str) -> TypeStats:
        return self.sources.setdefault(source, {}).setdefault(kind, TypeStats())

    @property
    def failed_files(self) -> int:
        return sum(s.failed for per in self.sources.values() for s in per.values())

    @property
    def exit_code(self) -> int:
        return 1 if self.failed_files or self.embed_error else 0

    def totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for per in self.sources.values():
            for kind, s in per.items():
                t = out.setdefault(kind, Counter())
                for key in ("read", "imported", "updated", "unchanged", "skipped", "failed"):
                    t[key] += getattr(s, key)
        return {k: dict(v) for k, v in out.items()}

    def as_dict(self) -> dict:
        return {
            "ok": self.exit_code == 0, "dry_run": self.dry_run,
            "sources": {src: {k: s.as_dict() for k, s in per.items()} for src, per in self.sources.items()},
            "totals": self.totals(), "redacted_records": self.redacted_records, "redactions": dict(self.redactions),
            "embedded_records": self.embedded_records, "embedded_vectors": self.embedded_vectors,
            "embed_capped": self.embed_capped, "embed_max_chunks": self.embed_max_chunks,
            "not_embedded": self.not_embedded, "embed_error": self.embed_error,
            "data_generation": self.data_generation, "notes": self.notes, "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


# -- phase 1: read --------------------------------------------------------------------------------------
@dataclass
class Batch:
    """Everything one run will write, one entry per identity; `origins` lists the (folder, file) pairs each record
    was read from, keyed by (kind, identity): MEMORY-CONTEXT folder and file relative to its repo folder, both
    redacted by phase 2 as the store keeps them."""

    sources: list[Source] = field(default_factory=list)
    checkpoints: dict[str, tuple[str, CheckpointRecord]] = field(default_factory=dict)
    sessions: dict[str, tuple[str, list[SessionRecord]]] = field(default_factory=dict)
    session_folders: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    patterns: dict[str, tuple[str, PatternRecord]] = field(default_factory=dict)
    messages: dict[str, tuple[str, MessageRecord]] = field(default_factory=dict)
    message_files: dict[str, set] = field(default_factory=lambda: defaultdict(set))
    merged: dict[str, tuple[str, SessionRecord]] = field(default_factory=dict)
    session_text: dict[str, str] = field(default_factory=dict)
    origins: dict[tuple[str, str], set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))


# Finds the folders, other than those given, that hold some of these (kind, identity) records: a run reads them too.
Related = Callable[[set[tuple[str, str]], list[Source]], list[Source]]


def _kind_of_path(path: str) -> str:
    parts = Path(path).parts
    if "checkpoints" in parts:
        return "checkpoint"
    if "messages" in parts:
        return "message"
    if path.endswith(".db"):
        return "pattern"
    return "session"


def canonical(sources: Iterable[Source]) -> list[Source]:
    """One entry per folder, in an order that depends only on the folders (shallowest first, then by path), never
    on the order they were given or migrated in: the first folder holding a record names its source."""
    unique = {str(s.memory_context): s for s in sources}
    return sorted(unique.values(), key=lambda s: (len(s.memory_context.parts), str(s.memory_context)))


def read_sources(paths: Iterable[Path], submodule: str | None, report: MigrateReport,
                 on_progress: Progress | None = None, related: Related | None = None) -> Batch:
    """The folders under `paths`, plus (through `related`) every folder that shares a record with them, read and
    merged. Several folders may carry one name: they are all sources of that submodule."""
    found: list[Source] = []
    for path in paths:
        here = discover_sources(Path(path))
        if submodule and _single_mc(path) and len(here) == 1:  # one folder: named as the caller says
            here = [Source(name=submodule, root=here[0].root, memory_context=here[0].memory_context)]
        elif submodule:  # a repo and its submodules: the one named
            here = discover_sources(Path(path), submodule)
        found.extend(here)
    batch = Batch(sources=canonical(found))
    raw = _read(batch.sources, {}, on_progress)
    while related is not None:
        more = [s for s in related(_keys(raw), batch.sources) if str(s.memory_context) not in raw]
        if not more:
            break
        batch.sources = canonical(batch.sources + more)
        raw = _read(batch.sources, raw, on_progress)
    _assemble(batch, raw, report)
    return batch


def fill_batch(batch: Batch, report: MigrateReport, on_progress: Progress | None = None) -> None:
    """Read every source of `batch` and keep one record per identity (merged over all its folders)."""
    batch.sources = canonical(batch.sources)
    _assemble(batch, _read(batch.sources, {}, on_progress), report)


def _read(sources: list[Source], raw: dict[str, list], on_progress: Progress | None) -> dict[str, list]:
    """Every record (or Skipped) of each folder not read yet, by folder."""
    for n, source in enumerate(sources):
        if on_progress:
            on_progress("read", n, len(sources))
        if str(source.memory_context) not in raw:
            raw[str(source.memory_context)] = list(iter_source(source))
    if on_progress:
        on_progress("read", len(sources), len(sources))
    return raw


def _keys(raw: dict[str, list]) -> set[tuple[str, str]]:
    keys = set()
    for records in raw.values():
        for record in records:
            if isinstance(record, Skipped):
                continue
            keys.add((_KIND_OF[type(record)], record.identity))
            keys.update(("message", m.identity) for m in getattr(record, "messages", None) or ())
    return keys


def _assemble(batch: Batch, raw: dict[str, list], report: MigrateReport) -> None:
    for source in batch.sources:
        folder = str(source.memory_context)
        for record in raw[folder]:
            _take(batch, source.name, folder, record, report)
    for identity, (src, records) in batch.sessions.items():
        batch.merged[identity] = (src, merge_sessions(records) if len(records) > 1 else records[0])
        batch.session_text[identity] = _session_text(records)
    for identity, (src, session) in batch.merged.items():
        records = batch.sessions[identity][1]
        talk = max(range(len(records)), key=lambda i: len(records[i].messages))  # whose messages merge kept
        where = (batch.session_folders[identity][talk], records[talk].source_path)
        for msg in session.messages:
            msg.session_identity = identity
            msg.checkpoint_ref = msg.checkpoint_ref or session.checkpoint_ref
            _take_message(batch, src, msg, report, session.source_path, where)


def _single_mc(path) -> bool:
    return Path(path).name == "MEMORY-CONTEXT" or (Path(path) / "MEMORY-CONTEXT").is_dir()


_KIND_OF = {CheckpointRecord: "checkpoint", SessionRecord: "session", PatternRecord: "pattern", MessageRecord: "message"}


def _take(batch: Batch, src: str, folder: str, record, report: MigrateReport) -> None:
    if isinstance(record, Skipped):
        stats = report.stats(src, _kind_of_path(record.path))
        if record.kind == "placeholder":
            stats.skipped += 1
            stats.skipped_reasons[record.reason or "placeholder"] += 1
        else:
            stats.failed += 1
            stats.failures.append({"file": record.path, "reason": record.reason})
        return
    if isinstance(record, MessageRecord):
        _take_message(batch, src, record, report, record.metadata.get("source_file") or "",
                      (folder, record.metadata.get("source_path") or ""))
        return
    batch.origins[(_KIND_OF[type(record)], record.identity)].add((folder, record.source_path or ""))
    if isinstance(record, CheckpointRecord):
        report.stats(src, "checkpoint").read += 1
        kept = batch.checkpoints.get(record.identity)
        if kept is None or len(record.content) > len(kept[1].content):
            batch.checkpoints[record.identity] = (kept[0] if kept else src, record)
    elif isinstance(record, SessionRecord):
        report.stats(src, "session").read += 1
        entry = batch.sessions.setdefault(record.identity, (src, []))
        entry[1].append(record)
        batch.session_folders[record.identity].append(folder)
    elif isinstance(record, PatternRecord):
        report.stats(src, "pattern").read += 1
        batch.patterns.setdefault(record.identity, (src, record))


def _take_message(batch: Batch, src: str, msg: MessageRecord, report: MigrateReport, origin: str,
                  where: tuple[str, str]) -> None:
    report.stats(src, "message").read += 1
    batch.message_files[msg.identity].add(origin)
    batch.origins[("message", msg.identity)].add(where)
    kept = batch.messages.get(msg.identity)
    if kept is None:
        batch.messages[msg.identity] = (src, msg)
        return
    # the same message met again: keep the earliest sighting, and a session link if only this one has it
    first = kept[1]
    if msg.first_seen and (first.first_seen is None or msg.first_seen < first.first_seen):
        first.first_seen = msg.first_seen
    if first.session_identity is None and msg.session_identity:
        first.session_identity, first.position = msg.session_identity, msg.position
    first.checkpoint_ref = first.checkpoint_ref or msg.checkpoint_ref


# -- phase 2: redact ------------------------------------------------------------------------------------
def redact_batch(batch: Batch, report: MigrateReport) -> list[tuple]:
    """Redact in place; return privacy_audit rows (type, identity, detections, level, source path)."""
    audits = []

    def one(kind: str, record, path: str, extra: dict[str, int] | None = None) -> None:
        counts = redact_record(record)
        for key, n in (extra or {}).items():  # the same finding in two copies of a text counts once
            counts[key] = max(counts.get(key, 0), n)
        if counts:
            report.redacted_records += 1
            report.redactions.update(counts)
            audits.append((kind, record.identity, json.dumps(counts, sort_keys=True), _privacy(getattr(record, "privacy_level", None)),
                           redact(path)[0]))

    for _src, rec in batch.checkpoints.values():
        one("checkpoint", rec, rec.source_path)
    for identity, (_src, rec) in batch.merged.items():
        messages, rec.messages = rec.messages, []
        batch.session_text[identity], text_counts = redact(batch.session_text[identity])
        one("session", rec, rec.source_path, text_counts)
        rec.messages = messages
    for _src, rec in batch.patterns.values():
        one("pattern", rec, rec.source_path)
    for _src, rec in batch.messages.values():
        one("message", rec, rec.metadata.get("source_file") or "")
    # each record's folders and files as the store keeps them: folders like submodule_registry's, file names as text
    folders = {f: redact_local_path(f) for f in {f for pairs in batch.origins.values() for f, _p in pairs}}
    files = {p: redact(p)[0] for p in {p for pairs in batch.origins.values() for _f, p in pairs}}
    batch.origins = defaultdict(set, {key: {(folders[f], files[p]) for f, p in pairs}
                                      for key, pairs in batch.origins.items()})
    return audits


# -- phase 3: write -------------------------------------------------------------------------------------
def _privacy(level: str | None) -> str:
    level = (level or "TEAM").upper()
    return level if level in PRIVACY else "TEAM"


def _status(value: str | None, allowed: tuple[str, ...]) -> str:
    v = (value or "").lower()
    if "progress" in v and "in_progress" in allowed:
        return "in_progress"
    if "block" in v and "blocked" in allowed:
        return "blocked"
    if "archiv" in v:
        return "archived"
    if v.startswith("active"):
        return "active"
    return "completed"


def _commit(value: str | None) -> str | None:
    import re

    v = (value or "").strip().lower()
    return v if re.fullmatch(r"[0-9a-f]{7,40}", v) else None


def _j(value) -> str:
    return json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)


def _tags(values: Iterable[str]) -> list[str]:
    out = []
    for t in values:
        t = " ".join(str(t).strip().lower().split())
        if t and t not in out:
            out.append(t[:100])
    return out


def _session_text(records: list[SessionRecord]) -> str:
    """A session keeps its summary-family text (Markdown or JSON export, the longest); the conversation is
    stored, searched and embedded as its messages. A transcript-only session keeps an excerpt."""
    summaries = [r.content for r in records if r.source_format != "transcript" and r.content]
    if summaries:
        return max(summaries, key=len)
    return max((r.content for r in records), key=len, default="")[:TRANSCRIPT_EXCERPT_CHARS]


# -- the staged rows: one dataclass per staging table, its fields named once: the COPY columns and the row -----
class Staged:
    """A row of a staging table; `submodule` is the source's name, which the upsert resolves to its id."""

    @classmethod
    def ddl(cls) -> str:
        return ", ".join(f"{f.name} {f.metadata['sql']}" for f in fields(cls))

    @classmethod
    def columns(cls) -> str:
        return ", ".join(f.name for f in fields(cls))

    def row(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))


def _staged(kind: str, columns: str) -> type:
    """The dataclass of stage_<kind>: every kind's common columns, then `columns` (`name` or `name:sql type`,
    text when no type is given). Built with keyword arguments only, so a row cannot put a value in the wrong place."""
    common = "identity submodule privacy_level metadata:jsonb source_path source_sha256 content_sha256"
    spec = [column.partition(":") for column in f"{common} {columns}".split()]
    return make_dataclass(f"Staged{kind.title()}", [(name, object, field(metadata={"sql": sql or "text"}))
                                                    for name, _, sql in spec], bases=(Staged,), kw_only=True)


StagedCheckpoint = _staged("checkpoint", "ref title summary content checkpoint_at:timestamptz sprint status"
                                         " git_branch git_commit")
StagedSession = _staged("session", "checkpoint_ref title summary content started_at:timestamptz repository"
                                   " participants:jsonb objectives:jsonb status source_formats:text[] tags:text[]")
StagedPattern = _staged("pattern", "name pattern_type description content usage_count:int tags:text[]")
StagedMessage = _staged("message", "session_identity checkpoint_ref role kind position:int content"
                                   " first_seen:timestamptz occurrences:int")
STAGED: dict[str, type] = {
    "checkpoint": StagedCheckpoint, "session": StagedSession, "pattern": StagedPattern, "message": StagedMessage,
}


_UPSERT = {
    "checkpoint": """
        INSERT INTO checkpoints AS t (identity, ref, submodule_id, title, summary, content, checkpoint_at, sprint, status,
                                      git_branch, git_commit, privacy_level, metadata, source_path, source_sha256, content_sha256)
        SELECT s.identity, s.ref, r.id, s.title, s.summary, s.content, s.checkpoint_at, s.sprint, s.status, s.git_branch,
               s.git_commit, s.privacy_level, s.metadata, s.source_path, s.source_sha256, s.content_sha256
        FROM stage_checkpoint s JOIN submodule_registry r ON r.name = s.submodule
        ON CONFLICT (identity) DO UPDATE SET submodule_id = EXCLUDED.submodule_id, ref = EXCLUDED.ref, title = EXCLUDED.title, summary = EXCLUDED.summary,
            content = EXCLUDED.content, checkpoint_at = EXCLUDED.checkpoint_at, sprint = EXCLUDED.sprint,
            status = EXCLUDED.status, git_branch = EXCLUDED.git_branch, git_commit = EXCLUDED.git_commit,
            privacy_level = EXCLUDED.privacy_level, metadata = EXCLUDED.metadata, source_path = EXCLUDED.source_path,
            source_sha256 = EXCLUDED.source_sha256, content_sha256 = EXCLUDED.content_sha256
        WHERE (t.submodule_id, t.ref, t.title, t.summary, t.content, t.checkpoint_at, t.sprint, t.status, t.git_branch, t.git_commit,
               t.privacy_level, t.metadata, t.source_path, t.source_sha256, t.content_sha256)
              IS DISTINCT FROM
              (EXCLUDED.submodule_id, EXCLUDED.ref, EXCLUDED.title, EXCLUDED.summary, EXCLUDED.content, EXCLUDED.checkpoint_at, EXCLUDED.sprint,
               EXCLUDED.status, EXCLUDED.git_branch, EXCLUDED.git_commit, EXCLUDED.privacy_level, EXCLUDED.metadata,
               EXCLUDED.source_path, EXCLUDED.source_sha256, EXCLUDED.content_sha256)
        RETURNING t.identity, (t.xmax = 0)""",
    "session": """
        INSERT INTO sessions AS t (identity, submodule_id, checkpoint_ref, title, summary, content, started_at, repository,
                                   participants, objectives, status, privacy_level, source_formats, metadata, source_path,
                                   source_sha256, content_sha256)
        SELECT s.identity, r.id, s.checkpoint_ref, s.title, s.summary, s.content, s.started_at, s.repository, s.participants,
               s.objectives, s.status, s.privacy_level, s.source_formats, s.metadata, s.source_path, s.source_sha256,
               s.content_sha256
        FROM stage_session s JOIN submodule_registry r ON r.name = s.submodule
        ON CONFLICT (identity) DO UPDATE SET submodule_id = EXCLUDED.submodule_id,
            checkpoint_ref = EXCLUDED.checkpoint_ref, title = EXCLUDED.title,
            summary = EXCLUDED.summary, content = EXCLUDED.content, started_at = EXCLUDED.started_at,
            repository = EXCLUDED.repository, participants = EXCLUDED.participants, objectives = EXCLUDED.objectives,
            status = EXCLUDED.status, privacy_level = EXCLUDED.privacy_level, source_formats = EXCLUDED.source_formats,
            metadata = EXCLUDED.metadata, source_path = EXCLUDED.source_path, source_sha256 = EXCLUDED.source_sha256,
            content_sha256 = EXCLUDED.content_sha256
        WHERE (t.submodule_id, t.checkpoint_ref, t.title, t.summary, t.content, t.started_at, t.repository, t.participants, t.objectives,
               t.status, t.privacy_level, t.source_formats, t.metadata, t.source_path, t.source_sha256, t.content_sha256)
              IS DISTINCT FROM
              (EXCLUDED.submodule_id, EXCLUDED.checkpoint_ref, EXCLUDED.title, EXCLUDED.summary, EXCLUDED.content, EXCLUDED.started_at,
               EXCLUDED.repository, EXCLUDED.participants, EXCLUDED.objectives, EXCLUDED.status, EXCLUDED.privacy_level,
               EXCLUDED.source_formats, EXCLUDED.metadata, EXCLUDED.source_path, EXCLUDED.source_sha256,
               EXCLUDED.content_sha256)
        RETURNING t.identity, (t.xmax = 0)""",
    "pattern": """
        INSERT INTO patterns AS t (identity, submodule_id, name, pattern_type, description, content, usage_count,
                                   privacy_level, metadata, source_path, source_sha256, content_sha256)
        SELECT s.identity, r.id, s.name, s.pattern_type, s.description, s.content, s.usage_count, s.privacy_level,
               s.metadata, s.source_path, s.source_sha256, s.content_sha256
        FROM stage_pattern s JOIN submodule_registry r ON r.name = s.submodule
        ON CONFLICT (identity) DO UPDATE SET submodule_id = EXCLUDED.submodule_id, name = EXCLUDED.name, pattern_type = EXCLUDED.pattern_type,
            description = EXCLUDED.description, content = EXCLUDED.content, usage_count = EXCLUDED.usage_count,
            privacy_level = EXCLUDED.privacy_level, metadata = EXCLUDED.metadata, source_path = EXCLUDED.source_path,
            source_sha256 = EXCLUDED.source_sha256, content_sha256 = EXCLUDED.content_sha256
        WHERE (t.submodule_id, t.name, t.pattern_type, t.description, t.content, t.usage_count, t.privacy_level, t.metadata,
               t.source_path, t.source_sha256, t.content_sha256)
              IS DISTINCT FROM
              (EXCLUDED.submodule_id, EXCLUDED.name, EXCLUDED.pattern_type, EXCLUDED.description, EXCLUDED.content, EXCLUDED.usage_count,
               EXCLUDED.privacy_level, EXCLUDED.metadata, EXCLUDED.source_path, EXCLUDED.source_sha256,
               EXCLUDED.content_sha256)
        RETURNING t.identity, (t.xmax = 0)""",
    # A message's identity is the hash of its content: only its links and sightings change. A run reads every folder
    # that holds a record (read_sources' `related`), so what it stages is the whole view and may replace the row's.
    "message": """
        INSERT INTO messages AS t (identity, submodule_id, session_id, checkpoint_ref, role, kind, position, content,
                                   first_seen, occurrences, privacy_level, metadata, source_path, source_sha256,
                                   content_sha256)
        SELECT s.identity, r.id, ss.id, s.checkpoint_ref, s.role, s.kind, s.position, s.content, s.first_seen,
               s.occurrences, s.privacy_level, s.metadata, s.source_path, s.source_sha256, s.content_sha256
        FROM stage_message s JOIN submodule_registry r ON r.name = s.submodule
        LEFT JOIN sessions ss ON ss.identity = s.session_identity
        ON CONFLICT (identity) DO UPDATE SET submodule_id = EXCLUDED.submodule_id, session_id = EXCLUDED.session_id,
            checkpoint_ref = EXCLUDED.checkpoint_ref, position = EXCLUDED.position, first_seen = EXCLUDED.first_seen,
            occurrences = EXCLUDED.occurrences
        WHERE (t.submodule_id, t.session_id, t.checkpoint_ref, t.position, t.first_seen, t.occurrences)
              IS DISTINCT FROM
              (EXCLUDED.submodule_id, EXCLUDED.session_id, EXCLUDED.checkpoint_ref, EXCLUDED.position,
               EXCLUDED.first_seen, EXCLUDED.occurrences)
        RETURNING t.identity, (t.xmax = 0)""",
}


def _pattern_body(p: PatternRecord) -> str:
    body = p.metadata.get("template") or p.metadata.get("content") or ""
    return body if isinstance(body, str) else _j(body)


def _rows(batch: Batch) -> dict[str, list[Staged]]:
    rows: dict[str, list[Staged]] = {k: [] for k in WRITE_ORDER}
    for identity, (src, c) in batch.checkpoints.items():
        meta = {**c.metadata, "tags": _tags(c.tags), "status_raw": c.status}
        if c.git_commit and not _commit(c.git_commit):
            meta["git_commit_raw"] = c.git_commit
        rows["checkpoint"].append(StagedCheckpoint(
            identity=identity, ref=c.ref, submodule=src, title=c.title, summary=c.summary, content=c.content,
            checkpoint_at=c.created_at, sprint=c.sprint or None, status=_status(c.status, CHECKPOINT_STATUSES),
            git_branch=c.git_branch or None, git_commit=_commit(c.git_commit), privacy_level=_privacy(c.privacy_level),
            metadata=_j(meta), source_path=c.source_path, source_sha256=c.source_sha256 or None,
            content_sha256=KINDS["checkpoint"].content_hash(c.title, c.summary, c.content)))
    for identity, (src, s) in batch.merged.items():
        text = batch.session_text[identity]
        formats = sorted({x["format"] for x in s.metadata.get("sources", [])} or {s.source_format})
        meta = {**s.metadata, "status_raw": s.status}
        rows["session"].append(StagedSession(
            identity=identity, submodule=src, checkpoint_ref=s.checkpoint_ref, title=s.title, summary=s.summary,
            content=text, started_at=s.started_at, repository=s.repository or None, participants=_j(s.participants),
            objectives=_j(s.objectives), status=_status(s.status, SESSION_STATUSES), privacy_level=_privacy(s.privacy_level),
            source_formats=formats, metadata=_j(meta), source_path=s.source_path, source_sha256=s.source_sha256 or None,
            content_sha256=KINDS["session"].content_hash(s.title, s.summary, text), tags=_tags(s.tags)))
    for identity, (src, p) in batch.patterns.items():
        rows["pattern"].append(StagedPattern(
            identity=identity, submodule=src, name=p.name, pattern_type=p.pattern_type or "general",
            description=p.description, content=_pattern_body(p), usage_count=max(0, int(p.usage_count or 0)),
            privacy_level=_privacy(p.privacy_level), metadata=_j(p.metadata), source_path=p.source_path,
            source_sha256=p.source_sha256 or None,
            content_sha256=KINDS["pattern"].content_hash(p.name, p.description, _pattern_body(p)), tags=_tags(p.tags)))
    for identity, (src, m) in batch.messages.items():
        sha = m.metadata.get("source_sha256")
        rows["message"].append(StagedMessage(
            identity=identity, submodule=src, session_identity=m.session_identity, checkpoint_ref=m.checkpoint_ref,
            role=m.role if m.role in ROLES else "assistant", kind=m.kind if m.kind in MESSAGE_KINDS else "text",
            position=max(0, m.position or 0), content=m.content, first_seen=m.first_seen,
            occurrences=max(1, len(batch.message_files.get(identity, ())) or 1), privacy_level="TEAM",
            metadata=_j(m.metadata), source_path=m.metadata.get("source_file") or None,
            source_sha256=sha if sha and len(sha) == 64 else None,
            content_sha256=KINDS["message"].content_hash("", "", m.content)))
    return rows


def record_hashes(batch: Batch) -> dict[tuple[str, str], dict[str, str]]:
    """identity -> content_sha256 per (source, kind): what the store should hold for this batch."""
    out: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for kind, rows in _rows(batch).items():
        for row in rows:
            out[(row.submodule, kind)][row.identity] = row.content_sha256
    return out


def expected_state(sources: list[tuple[str, Path]]) -> tuple[dict[tuple[str, str], dict[str, str]],
                                                               dict[tuple[str, str], set[tuple[str, str]]]]:
    """What migrating these (name, MEMORY-CONTEXT folder) sources would store, their files read and redacted exactly
    as a run does, nothing written (for `ctx validate`): identity -> content_sha256 per (source, kind), and the
    (folder, file) pairs of each (kind, identity)."""
    batch = Batch(sources=[Source(name=name, root=Path(path).parent, memory_context=Path(path)) for name, path in sources])
    scratch = MigrateReport()
    fill_batch(batch, scratch)
    redact_batch(batch, scratch)
    return record_hashes(batch), dict(batch.origins)


def related_folders(conn, keys: set[tuple[str, str]], known: list[Source], report: MigrateReport) -> list[Source]:
    """The registered folders, not among `known`, that hold some of these (kind, identity) records. One that is
    gone from disk cannot be read: it is left out and said in the report (validate reports it too)."""
    if not keys:
        return []
    kinds, identities = zip(*sorted(keys))
    rows = conn.execute(
        """SELECT DISTINCT r.name, f.repo_path, f.memory_context_path
           FROM unnest(%s::text[], %s::text[]) AS k(t, i)
           JOIN record_sources rs ON rs.record_type = k.t AND rs.record_identity = k.i
           JOIN source_folders f ON f.id = rs.folder_id JOIN submodule_registry r ON r.id = f.submodule_id
           WHERE NOT f.memory_context_path = ANY(%s::text[]) ORDER BY 3""",
        (list(kinds), list(identities), [redact_local_path(s.memory_context) for s in known])).fetchall()
    out = []
    for name, repo, folder in rows:
        path = Path(folder).expanduser()  # kept as ~/... under the home; elsewhere redacted, then not found
        if path.is_dir():
            out.append(Source(name=name, root=Path(repo).expanduser() if repo else path.parent, memory_context=path))
            note = f"also read {folder} ({name}): it holds records of the folders given"
        else:
            note = f"{folder} ({name}) holds records of the folders given but is gone: they are rebuilt without it"
        if note not in report.notes:
            report.notes.append(note)
    return out


def _register(conn, batch: Batch, report: MigrateReport) -> None:
    """Each folder under its name. A name met in a new folder gains that folder as one more source; a known folder
    given under another name (--submodule) moves to it."""
    for source in batch.sources:
        folder = redact_local_path(source.memory_context)
        sub_id = conn.execute(
            """INSERT INTO submodule_registry (name, repo_path, memory_context_path, last_migrated_at, created_at)
               VALUES (%s, %s, %s, now(), clock_timestamp())
               ON CONFLICT (name) DO UPDATE SET last_migrated_at = now(),
                   repo_path = coalesce(submodule_registry.repo_path, EXCLUDED.repo_path),
                   memory_context_path = coalesce(submodule_registry.memory_context_path, EXCLUDED.memory_context_path)
               RETURNING id""",
            (source.name, redact_local_path(source.root), folder)).fetchone()[0]
        others = [f for (f,) in conn.execute(
            "SELECT memory_context_path FROM source_folders WHERE submodule_id = %s AND memory_context_path <> %s "
            "ORDER BY created_at", (sub_id, folder))]
        new = conn.execute(
            """INSERT INTO source_folders (submodule_id, repo_path, memory_context_path, last_migrated_at)
               VALUES (%s, %s, %s, now())
               ON CONFLICT (memory_context_path) DO UPDATE SET submodule_id = EXCLUDED.submodule_id,
                   repo_path = EXCLUDED.repo_path, last_migrated_at = now()
               RETURNING (xmax = 0)""", (sub_id, redact_local_path(source.root), folder)).fetchone()[0]
        if new and others:
            report.notes.append(f"{folder} is one more folder of source {source.name!r} (besides {', '.join(others)}): "
                                "its records are merged with theirs")


def _write_sources(conn, batch: Batch) -> None:
    """record_sources of every folder read: exactly the (record, file) pairs the files give now."""
    conn.execute("CREATE TEMP TABLE stage_sources (record_type text, record_identity text, folder text, "
                 "source_path text) ON COMMIT DROP")
    with conn.cursor().copy("COPY stage_sources FROM STDIN") as copy:
        for (kind, identity), pairs in batch.origins.items():
            for folder, path in pairs:
                copy.write_row((kind, identity, folder, path))
    conn.execute(
        """DELETE FROM record_sources rs USING source_folders f
           WHERE f.id = rs.folder_id AND f.memory_context_path = ANY(%s::text[])
             AND NOT EXISTS (SELECT 1 FROM stage_sources s WHERE s.record_type = rs.record_type
                             AND s.record_identity = rs.record_identity AND s.folder = f.memory_context_path
                             AND s.source_path = rs.source_path)""",
        ([redact_local_path(s.memory_context) for s in batch.sources],))
    conn.execute(
        """INSERT INTO record_sources (record_type, record_identity, folder_id, source_path)
           SELECT s.record_type, s.record_identity, f.id, s.source_path
           FROM stage_sources s JOIN source_folders f ON f.memory_context_path = s.folder
           ON CONFLICT DO NOTHING""")


def write_batch(conn, batch: Batch, audits: list[tuple], report: MigrateReport) -> bool:
    """Stage and upsert everything in the caller's transaction; return whether anything changed."""
    changed = False
    _register(conn, batch, report)
    rows = _rows(batch)
    src_of = {
        "checkpoint": {i: s for i, (s, _r) in batch.checkpoints.items()},
        "session": {i: s for i, (s, _r) in batch.merged.items()},
        "pattern": {i: s for i, (s, _r) in batch.patterns.items()},
        "message": {i: s for i, (s, _r) in batch.messages.items()},
    }
    for kind in WRITE_ORDER:
        staged = STAGED[kind]
        conn.execute(f"CREATE TEMP TABLE stage_{kind} ({staged.ddl()}) ON COMMIT DROP")
        with conn.cursor().copy(f"COPY stage_{kind} ({staged.columns()}) FROM STDIN") as copy:
            for row in rows[kind]:
                copy.write_row(row.row())
        touched = {identity: inserted for identity, inserted in conn.execute(_UPSERT[kind]).fetchall()}
        for identity, src in src_of[kind].items():
            stats = report.stats(src, kind)
            if identity not in touched:
                stats.unchanged += 1
            elif touched[identity]:
                stats.imported += 1
            else:
                stats.updated += 1
        changed = changed or bool(touched)
        if kind in ("session", "pattern"):
            changed = _write_tags(conn, kind) or changed
    _write_sources(conn, batch)
    linked = conn.execute(
        """UPDATE sessions s SET checkpoint_id = c.id FROM checkpoints c
           WHERE c.ref = s.checkpoint_ref AND s.checkpoint_id IS DISTINCT FROM c.id"""
    ).rowcount
    linked += conn.execute(
        """UPDATE messages m SET checkpoint_id = c.id FROM checkpoints c
           WHERE c.ref = m.checkpoint_ref AND m.checkpoint_id IS DISTINCT FROM c.id"""
    ).rowcount
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO privacy_audit (record_type, record_identity, record_id, action, privacy_level, detections, source_path)
               VALUES (%s, %s, NULL, 'redacted', %s, %s::jsonb, %s)
               ON CONFLICT (record_type, record_identity, action) DO UPDATE SET detections = EXCLUDED.detections
               WHERE privacy_audit.detections IS DISTINCT FROM EXCLUDED.detections""",
            [(kind, identity, level, detections, path) for kind, identity, detections, level, path in audits],
        )
    every_record = " UNION ALL ".join(f"SELECT '{kind}' AS t, identity, id FROM {table}" for kind, table in TABLES.items())
    conn.execute(
        f"""UPDATE privacy_audit a SET record_id = x.id FROM ({every_record}) x
            WHERE a.record_id IS NULL AND a.record_type = x.t AND a.record_identity = x.identity"""
    )
    return changed or linked > 0


def _write_tags(conn, kind: str) -> bool:
    table, link, col = TABLES[kind], f"{kind}_tags", f"{kind}_id"
    conn.execute(f"INSERT INTO tags (name) SELECT DISTINCT unnest(tags) FROM stage_{kind} ON CONFLICT (name) DO NOTHING")
    added = conn.execute(
        f"""INSERT INTO {link} ({col}, tag_id)
            SELECT t.id, g.id FROM stage_{kind} s JOIN {table} t ON t.identity = s.identity
            CROSS JOIN LATERAL unnest(s.tags) AS n(name) JOIN tags g ON g.name = n.name
            ON CONFLICT DO NOTHING"""
    ).rowcount
    removed = conn.execute(
        f"""DELETE FROM {link} l USING {table} t, stage_{kind} s
            WHERE l.{col} = t.id AND t.identity = s.identity
              AND NOT EXISTS (SELECT 1 FROM tags g WHERE g.id = l.tag_id AND g.name = ANY(s.tags))"""
    ).rowcount
    return bool(added or removed)


# -- the job --------------------------------------------------------------------------------------------
def run_migrate(
    settings: Settings,
    paths: list[Path],
    submodule: str | None = None,
    dry_run: bool = False,
    on_progress: Progress | None = None,
    embed: bool = True,
    wait: float = 0.0,
    report_note: Callable[[str], None] | None = None,
) -> MigrateReport:
    """The whole run (read, write, embed) holds the store's writer lock: a second writer exits 75 or waits."""
    with Store(settings).writer_lock("migrate", wait=wait, report=report_note):
        return _migrate(settings, paths, submodule, dry_run, on_progress, embed)


def _migrate(settings: Settings, paths: list[Path], submodule: str | None, dry_run: bool,
             on_progress: Progress | None, embed: bool) -> MigrateReport:
    report = MigrateReport(dry_run=dry_run, embed_max_chunks=settings.embed_max_chunks)
    t0 = time.monotonic()
    store = Store(settings)

    def related(keys: set[tuple[str, str]], known: list[Source]) -> list[Source]:
        with store.pg() as conn:
            return related_folders(conn, keys, known, report)

    batch = read_sources(paths, submodule, report, on_progress, related)
    audits = redact_batch(batch, report)
    report.seconds["read"] = time.monotonic() - t0
    reach("migrate-read")
    try:
        t1 = time.monotonic()
        with store.pg() as conn:
            with conn.transaction():
                changed = write_batch(conn, batch, audits, report)
                if changed and not dry_run:
                    report.data_generation = pg.bump_generation(conn)
                if dry_run:
                    raise _Rollback()
                reach("migrate-write")
    except _Rollback:
        pass
    report.seconds["write"] = time.monotonic() - t1
    if dry_run:
        store.close()
        report.seconds["total"] = time.monotonic() - t0
        return report
    if embed:
        reach("migrate-committed")
        t2 = time.monotonic()
        result = EmbedResult()
        try:
            embed_pending(store, on_progress, result=result)
        except ServiceError as exc:
            report.embed_error = f"{exc.message} (rows are kept and marked not embedded: run `ctx validate --repair` later)"
        report.embedded_records, report.embedded_vectors = result.records, result.vectors  # marked, even before a failure
        report.embed_capped = result.capped
        if result.records:
            with store.pg() as conn:
                report.data_generation = pg.bump_generation(conn)
                conn.commit()
        report.seconds["embed"] = time.monotonic() - t2
    with store.pg() as conn:
        report.not_embedded = sum(count_pending(conn).values())
    store.close()
    report.seconds["total"] = time.monotonic() - t0
    return report


class _Rollback(Exception):
    """Ends a dry run's transaction: everything was computed against the real tables, nothing is kept."""
