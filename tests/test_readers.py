"""Readers on the real corpus (../shared/corpus), on the bundled samples, and on broken files."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from coditect_ctx.ingest import discover_sources, iter_source
from coditect_ctx.ingest.readers import (
    read_checkpoint_md, read_export_json, read_messages_jsonl, read_session_md, read_sqlite, read_transcript,
)
from coditect_ctx.ingest.records import (
    MAX_FILE_BYTES, CheckpointRecord, MessageRecord, PatternRecord, SessionRecord, Skipped, message_identity,
)
from coditect_ctx.samples import demo_path

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
MASTER = CORPUS / "coditect-master"
MC = MASTER / "MEMORY-CONTEXT"
CORE = CORPUS / "coditect-core"

needs_corpus = pytest.mark.skipif(not MC.is_dir(), reason=f"real corpus not found at {CORPUS} (../shared/corpus)")

HYBRID = "Hybrid-Context-Preservation-Implementation-and-Training-Materials-Complete"
HYBRID_REF = f"2025-11-16T19-53-41Z-{HYBRID}"


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# --- real corpus: one reader at a time -------------------------------------------------------------

@needs_corpus
def test_session_export_markdown_takes_time_from_content_not_name():
    # File name says 14-53-41Z (local time, false Z); the content's Timestamp is the UTC truth.
    s = read_session_md(MC / "sessions" / f"2025-11-16T14-53-41Z-{HYBRID}.md", MASTER)
    assert isinstance(s, SessionRecord)
    assert s.started_at == utc(2025, 11, 16, 19, 53, 41)
    assert s.checkpoint_ref == HYBRID_REF
    assert s.title == "Hybrid Context Preservation Implementation and Training Materials Complete"
    assert s.participants == ["user", "claude-code"]
    assert "hybrid" in s.tags and "training" in s.tags
    assert s.source_path == f"MEMORY-CONTEXT/sessions/2025-11-16T14-53-41Z-{HYBRID}.md"
    assert s.summary.startswith("This checkpoint captures the state")


@needs_corpus
def test_session_links_to_checkpoint_by_field_even_when_names_disagree():
    # README trap: session 2025-11-17T19-14-39Z-X.md belongs to checkpoint 2025-11-18T00-14-39Z-X.md.
    s = read_session_md(MC / "sessions" / "2025-11-17T19-14-39Z-Week-1-Day-2---Deduplication-System-Complete.md",
                        MASTER)
    assert s.checkpoint_ref == "2025-11-18T00-14-39Z-Week-1-Day-2---Deduplication-System-Complete"
    assert s.started_at == utc(2025, 11, 18, 0, 14, 39)


@needs_corpus
def test_old_session_stub_reads_checkpoint_from_work_completed_line():
    s = read_session_md(CORE / "MEMORY-CONTEXT" / "sessions" / "2025-11-24-Deduplicate-345-archived-export-files.md",
                        CORE)
    assert s.checkpoint_ref == "2025-11-24T03-36-18Z-Deduplicate-345-archived-export-files"
    assert s.title == "Deduplicate 345 archived export files"
    assert s.objectives == ["Deduplicate 345 archived export files"]
    assert s.status == "Complete"


@needs_corpus
def test_checkpoint_markdown_fields():
    c = read_checkpoint_md(MC / "checkpoints" / f"{HYBRID_REF}.md", MASTER)
    assert isinstance(c, CheckpointRecord)
    assert c.ref == HYBRID_REF
    assert c.created_at == utc(2025, 11, 16, 19, 53, 41)
    assert c.git_branch == "main"
    assert c.git_commit and len(c.git_commit) >= 7
    assert c.title == "Hybrid Context Preservation Implementation and Training Materials Complete"
    assert "CHECKPOINT CAPTURED" in c.status


@needs_corpus
def test_hand_written_checkpoint_uses_date_field():
    c = read_checkpoint_md(MC / "checkpoints" / "2025-11-16-DAY-6-TEST-DEBUGGING-COMPLETE.md", MASTER)
    assert c.created_at == utc(2025, 11, 16, 20, 15)
    assert c.title == "Day 6 Test Debugging - COMPLETE"


@needs_corpus
def test_export_json_reader():
    s = read_export_json(MC / "exports" / f"2025-11-16T14-53-41Z-{HYBRID}.json", MASTER)
    assert s.source_format == "export_json"
    assert s.started_at == utc(2025, 11, 16, 19, 53, 41)
    assert s.checkpoint_ref == HYBRID_REF
    assert s.messages and s.messages[0].role == "system"
    assert "Executive Summary" in s.content


@needs_corpus
def test_transcript_roles_and_order():
    s = read_transcript(MC / "exports-archive" / f"{HYBRID_REF}.txt", MASTER)
    assert isinstance(s, SessionRecord) and s.source_format == "transcript"
    roles = [(m.role, m.kind) for m in s.messages]
    assert ("assistant", "tool_call") in roles and ("tool", "tool_result") in roles and ("user", "text") in roles
    assert [m.position for m in s.messages] == list(range(len(s.messages)))
    first_call = next(m for m in s.messages if m.kind == "tool_call")
    assert first_call.content.startswith("Read(submodules/coditect-project-dot-claude/scripts/create-checkpoint.py)")
    assert s.messages[s.messages.index(first_call) + 1].content == "Read 50 lines"
    user = next(m for m in s.messages if m.role == "user")
    # A wrapped user prompt keeps its continuation lines.
    assert user.content.startswith("/export /Users/halcasteel/") and "NTEXT/exports/2025-11-16T19-53-41" in user.content
    assert "Claude Code v2.0.42" in s.metadata["preamble"]


@needs_corpus
def test_triple_markdown_json_transcript_is_one_session():
    md = read_session_md(MC / "sessions" / f"2025-11-16T14-53-41Z-{HYBRID}.md", MASTER)
    js = read_export_json(MC / "exports" / f"2025-11-16T14-53-41Z-{HYBRID}.json", MASTER)
    tx = read_transcript(MC / "exports-archive" / f"{HYBRID_REF}.txt", MASTER)
    stub = read_session_md(MC / "sessions" / f"2025-11-16-{HYBRID}.md", MASTER)
    copy = read_export_json(MC / "test-dataset" / "exports" / f"2025-11-16T14-53-41Z-{HYBRID}.json", MASTER)
    assert {md.identity, js.identity, tx.identity, stub.identity, copy.identity} == {md.identity}
    assert {md.started_at, js.started_at, tx.started_at} == {utc(2025, 11, 16, 19, 53, 41)}
    # and a different session has a different identity
    other = read_session_md(MC / "sessions" / "2025-11-17T04-24-45Z-Submodule-Migration-Complete:-Distributed-"
                            "Intelligence-Architecture.md", MASTER)
    assert other.identity != md.identity


@needs_corpus
def test_placeholder_transcripts_are_skipped_not_imported():
    path = MC / "exports-archive" / "2025-11-20T07-01-01Z-GitHub-repo-rename-and-export-processing.txt"
    r = read_transcript(path, MASTER)
    assert isinstance(r, Skipped) and r.kind == "placeholder"
    core = read_transcript(CORE / "MEMORY-CONTEXT" / "exports" / "2025-11-24T03-30-21Z-Automated-export-and-"
                           "deduplication.txt", CORE)
    assert isinstance(core, Skipped) and core.kind == "placeholder"


@needs_corpus
def test_messages_jsonl_hashes_are_reproduced_exactly():
    files = sorted((MC / "messages" / "by-checkpoint").glob("*.jsonl"))
    stored, ours = [], []
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                stored.append(json.loads(line)["hash"])
        ours.extend(r.identity for r in read_messages_jsonl(path, MASTER) if isinstance(r, MessageRecord))
    assert len(stored) > 12000
    assert ours == stored
    # The dedup bookkeeping's global hash list is met again by the same identities.
    global_hashes = set(json.loads((MC / "dedup_state" / "global_hashes.json").read_text()))
    assert len(global_hashes & set(ours)) > 7000


@needs_corpus
def test_messages_jsonl_record_fields():
    path = MC / "messages" / "by-checkpoint" / "2025-09-01-EXPORT-ADRS-session5.jsonl"
    first = next(iter(read_messages_jsonl(path, MASTER)))
    assert first.role == "assistant" and first.position == 0
    assert first.first_seen == datetime(2025, 11, 18, 7, 59, 29, 930626, tzinfo=timezone.utc)
    assert first.checkpoint_ref == "2025-09-01-EXPORT-ADRS-session5"
    assert first.identity == "fe05f97ae58e7c6aa55c7b1fbf69e6ec0f9f076147ac5e8e914e89d4d2e627eb"


def test_message_identity_is_coditects_hash():
    expected = hashlib.sha256(json.dumps({"role": "user", "content": "hi"}, sort_keys=True).encode()).hexdigest()
    assert message_identity("user", "hi") == expected


# --- the bundled samples ---------------------------------------------------------------------------

def _collect(path: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for source in discover_sources(path):
        for record in iter_source(source):
            out.setdefault(type(record).__name__, []).append(record)
    return out


def test_samples_read_with_dedup():
    found = _collect(demo_path())
    sessions = found["SessionRecord"]
    assert len({s.identity for s in sessions}) == 7  # 4 checkpointed (master) + 1 archive transcript + 2 submodule
    assert len(sessions) == 13
    assert len({c.identity for c in found["CheckpointRecord"]}) == 6
    messages = found["MessageRecord"]
    assert len(messages) == 7 and len({m.identity for m in messages}) == 6  # one repeated across two JSONL files
    assert [s.kind for s in found["Skipped"]] == ["placeholder"]
    assert all(s.started_at and s.started_at.tzinfo is not None for s in sessions)


def test_samples_triple_is_one_session():
    mc = demo_path() / "MEMORY-CONTEXT"
    name = "Fix-Cloud-SQL-connection-pool-exhaustion"
    md = read_session_md(mc / "sessions" / f"2025-03-04T09-05-10Z-{name}.md", demo_path())
    js = read_export_json(mc / "exports" / f"2025-03-04T09-05-10Z-{name}.json", demo_path())
    tx = read_transcript(mc / "exports-archive" / f"2025-03-04T14-05-10Z-{name}.txt", demo_path())
    assert md.identity == js.identity == tx.identity
    assert md.started_at == utc(2025, 3, 4, 14, 5, 10)
    assert [m.role for m in tx.messages][:3] == ["user", "assistant", "assistant"]
    assert tx.messages[2].kind == "tool_call" and tx.messages[3].kind == "tool_result"


def test_samples_source_paths_are_relative():
    for source in discover_sources(demo_path()):
        for record in iter_source(source):
            path = record.path if isinstance(record, Skipped) else getattr(record, "source_path", "")
            if path:
                assert not path.startswith("/") and path.startswith("MEMORY-CONTEXT/")


# --- broken input never raises ---------------------------------------------------------------------

def test_bad_utf8(tmp_path):
    p = tmp_path / "bad.md"
    p.write_bytes(b"# Session Export: x\n\xff\xfe broken")
    r = read_session_md(p, tmp_path)
    assert isinstance(r, Skipped) and r.kind == "failed" and "UTF-8" in r.reason


def test_truncated_json(tmp_path):
    p = tmp_path / "cut.json"
    p.write_text('{"metadata": {"timestamp": "2025-11-16T19:53:41Z", "checkpoint_fi', encoding="utf-8")
    r = read_export_json(p, tmp_path)
    assert isinstance(r, Skipped) and r.kind == "failed" and "invalid JSON" in r.reason


def test_binary_file(tmp_path):
    p = tmp_path / "blob.txt"
    p.write_bytes(bytes(range(256)) * 4)
    r = read_transcript(p, tmp_path)
    assert isinstance(r, Skipped) and r.kind == "failed" and "binary" in r.reason


def test_empty_file(tmp_path):
    p = tmp_path / "empty.md"
    p.write_text("  \n", encoding="utf-8")
    r = read_checkpoint_md(p, tmp_path)
    assert isinstance(r, Skipped) and r.kind == "failed" and "empty" in r.reason


def test_huge_file(tmp_path):
    p = tmp_path / "huge.txt"
    with p.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no real disk use
    r = read_transcript(p, tmp_path)
    assert isinstance(r, Skipped) and r.kind == "failed" and "too large" in r.reason


def test_broken_jsonl_lines_are_reported_and_good_lines_kept(tmp_path):
    p = tmp_path / "m.jsonl"
    good = {"hash": message_identity("user", "ok"), "message": {"index": 0, "role": "user", "content": "ok"},
            "first_seen": "2025-03-04T14:06:02+00:00", "checkpoint": "x"}
    p.write_text(json.dumps(good) + "\n" + '{"hash": "abc", "mess\n', encoding="utf-8")
    out = list(read_messages_jsonl(p, tmp_path))
    assert isinstance(out[0], MessageRecord) and out[0].content == "ok"
    assert isinstance(out[1], Skipped) and out[1].kind == "failed" and "line 2" in out[1].reason


def test_dispatcher_survives_a_broken_folder(tmp_path):
    mc = tmp_path / "repo" / "MEMORY-CONTEXT"
    (mc / "sessions").mkdir(parents=True)
    (mc / "sessions" / "a.md").write_bytes(b"\x00\x01\x02")
    (mc / "sessions" / "b.md").write_bytes(b"")
    (mc / "exports").mkdir()
    (mc / "exports" / "c.json").write_text("{", encoding="utf-8")
    records = list(iter_source(discover_sources(tmp_path / "repo")[0]))
    assert [r.kind for r in records] == ["failed", "failed", "failed"]


# --- legacy SQLite ---------------------------------------------------------------------------------

def _legacy_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE sessions (session_id TEXT PRIMARY KEY, title TEXT, created_at TEXT, checkpoint_id TEXT,
            summary TEXT, content TEXT, tags TEXT, metadata TEXT, privacy_level TEXT, status TEXT);
        CREATE TABLE checkpoints (checkpoint_id TEXT PRIMARY KEY, title TEXT, created_at TEXT, sprint TEXT,
            status TEXT, git_branch TEXT, git_commit TEXT, summary TEXT, content TEXT, tags TEXT, metadata TEXT);
        CREATE TABLE patterns (pattern_id TEXT PRIMARY KEY, pattern_type TEXT NOT NULL, name TEXT NOT NULL,
            description TEXT, template TEXT, confidence REAL, quality_score REAL, frequency INTEGER DEFAULT 1,
            reuse_count INTEGER DEFAULT 0, last_used TEXT, deprecated INTEGER DEFAULT 0, source_session_id TEXT,
            parent_pattern_id TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, metadata TEXT,
            FOREIGN KEY (source_session_id) REFERENCES sessions(session_id),
            FOREIGN KEY (parent_pattern_id) REFERENCES patterns(pattern_id));
    """)
    ref = "2025-03-04T14-05-10Z-Fix-Cloud-SQL-connection-pool-exhaustion"
    conn.execute("INSERT INTO checkpoints VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                 (ref + ".md", "Fix Cloud SQL connection pool exhaustion", "2025-03-04T14:05:10Z", "Sprint 4",
                  "complete", "fix/cloudsql-pool", "4f2a9c1", "Pool capped", "Pool capped at 10.", '["db"]', "{}"))
    conn.execute("INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?)",
                 ("s-1", "Fix Cloud SQL connection pool exhaustion", "2025-03-04T14:05:10+00:00", ref,
                  "Leak fixed", "The worker leaked sessions.", "cloud-sql,postgres", '{"origin": "legacy"}',
                  "private", "complete"))
    conn.execute("INSERT INTO patterns VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 ("p-1", "code", "Close sessions in finally", "Always close DB sessions in a finally block",
                  "try: ... finally: session.close()", 0.9, 0.8, 7, 3, "2025-03-05T10:00:00Z", 0, "s-1", None,
                  "2025-03-04T14:05:10Z", "2025-03-05T10:00:00Z", '{"successes": 6}'))
    conn.commit()
    conn.close()


def test_sqlite_legacy_reader(tmp_path):
    db = tmp_path / "memory-context.db"
    _legacy_db(db)
    records = list(read_sqlite(db, tmp_path))
    kinds = Counter(type(r).__name__ for r in records)
    assert kinds == {"CheckpointRecord": 1, "SessionRecord": 1, "PatternRecord": 1}
    cp = next(r for r in records if isinstance(r, CheckpointRecord))
    session = next(r for r in records if isinstance(r, SessionRecord))
    pattern = next(r for r in records if isinstance(r, PatternRecord))
    assert cp.ref == "2025-03-04T14-05-10Z-Fix-Cloud-SQL-connection-pool-exhaustion" and cp.git_commit == "4f2a9c1"
    assert session.source_format == "sqlite" and session.tags == ["cloud-sql", "postgres"]
    assert session.privacy_level == "PRIVATE" and session.metadata["legacy_session_id"] == "s-1"
    assert pattern.usage_count == 7 and pattern.pattern_type == "code"
    assert pattern.metadata["successes"] == 6 and pattern.metadata["source_session_id"] == "s-1"
    # The same session read from Markdown has the same identity (linked by its checkpoint).
    md = read_session_md(demo_path() / "MEMORY-CONTEXT" / "sessions" /
                         "2025-03-04T09-05-10Z-Fix-Cloud-SQL-connection-pool-exhaustion.md", demo_path())
    assert session.identity == md.identity and cp.identity == read_checkpoint_md(
        demo_path() / "MEMORY-CONTEXT" / "checkpoints" / f"{cp.ref}.md", demo_path()).identity


def test_sqlite_found_by_dispatcher_and_garbage_db_is_skipped(tmp_path):
    mc = tmp_path / "repo" / "MEMORY-CONTEXT"
    mc.mkdir(parents=True)
    _legacy_db(mc / "memory-context.db")
    records = list(iter_source(discover_sources(tmp_path / "repo")[0]))
    assert any(isinstance(r, PatternRecord) for r in records)
    (mc / "memory-context.db").write_bytes(b"not a database at all" * 100)
    records = list(iter_source(discover_sources(tmp_path / "repo")[0]))
    assert len(records) == 1 and records[0].kind == "failed"


# --- the whole corpus ------------------------------------------------------------------------------

@needs_corpus
def test_whole_corpus_counts(capsys):
    totals: dict[str, Counter] = {}
    unique: dict[str, set] = {}
    for source in discover_sources(CORPUS):
        counts = totals.setdefault(source.name, Counter())
        for r in iter_source(source):
            if isinstance(r, Skipped):
                counts[f"skipped_{r.kind}"] += 1
                continue
            kind = type(r).__name__
            counts[kind] += 1
            unique.setdefault(kind, set()).add(r.identity)
            if isinstance(r, SessionRecord):
                unique.setdefault("EmbeddedMessage", set()).update(m.identity for m in r.messages)
                assert r.started_at is None or r.started_at.tzinfo is not None
    with capsys.disabled():
        for name, counts in totals.items():
            print(f"\n{name}: {dict(sorted(counts.items()))}")
        print("unique:", {k: len(v) for k, v in sorted(unique.items())})
    assert set(totals) == {"coditect-master", "coditect-core"}
    assert len(unique["SessionRecord"]) >= 240
    assert len(unique["CheckpointRecord"]) >= 115
    assert len(unique["MessageRecord"]) >= 8800
    assert totals["coditect-master"]["skipped_placeholder"] >= 40
    assert totals["coditect-core"]["skipped_placeholder"] >= 15
    assert sum(c["skipped_failed"] for c in totals.values()) == 0


def test_merge_sessions_keeps_conversation_and_summary():
    from coditect_ctx.ingest.records import merge_sessions

    mc = demo_path() / "MEMORY-CONTEXT"
    name = "Fix-Cloud-SQL-connection-pool-exhaustion"
    parts = [read_session_md(mc / "sessions" / f"2025-03-04T09-05-10Z-{name}.md", demo_path()),
             read_session_md(mc / "sessions" / f"2025-03-04-{name}.md", demo_path()),
             read_export_json(mc / "exports" / f"2025-03-04T09-05-10Z-{name}.json", demo_path()),
             read_transcript(mc / "exports-archive" / f"2025-03-04T14-05-10Z-{name}.txt", demo_path())]
    merged = merge_sessions(parts)
    assert merged.identity == parts[0].identity
    assert "remaining connection slots are reserved" in merged.content  # from the transcript
    assert "pool_recycle=1800" in merged.summary  # from the session export
    assert merged.repository == "/Users/dana/work/coditect-demo" and "cloud-sql" in merged.tags
    assert len(merged.messages) == len(parts[3].messages)
    assert len(merged.metadata["sources"]) == 4
    with pytest.raises(ValueError):
        merge_sessions([parts[0], read_session_md(mc / "sessions" / "2025-03-06-Flaky-CI-job-stabilised.md",
                                                  demo_path())])


def test_hostile_file_names_are_redacted_and_links_still_match(tmp_path):
    """File names, paths and refs are data: redacted like text, by the same function wherever a ref appears, so a
    session and its messages still name their checkpoint; identities stay those of the original names."""
    from dataclasses import asdict

    from coditect_ctx.ingest.records import checkpoint_identity
    from coditect_ctx.ingest.redact import redact_record

    from .conftest import HOSTILE_LEAKS, HOSTILE_REF, write_hostile_source

    repo = write_hostile_source(tmp_path / "home" / "alice.smith")
    records = [r for r in iter_source(discover_sources(repo)[0])]
    assert not [r for r in records if isinstance(r, Skipped)]
    checkpoint = next(r for r in records if isinstance(r, CheckpointRecord))
    session = next(r for r in records if isinstance(r, SessionRecord))
    messages = [r for r in records if isinstance(r, MessageRecord)]
    assert checkpoint.identity == checkpoint_identity(HOSTILE_REF)
    for record in records:
        redact_record(record)
    expected_ref = "2025-11-20T10-00-00Z-[REDACTED-EMAIL]@example.org-AKIA[REDACTED]"
    assert checkpoint.ref == session.checkpoint_ref == expected_ref
    assert {m.checkpoint_ref for m in messages} == {expected_ref}
    assert checkpoint.source_path == f"MEMORY-CONTEXT/checkpoints/{expected_ref}.md"
    assert session.source_path == ("MEMORY-CONTEXT/sessions/2025-11-20T05-00-00Z-[REDACTED-EMAIL]@example.org"
                                   "-AKIA[REDACTED].md")
    assert checkpoint.identity == checkpoint_identity(HOSTILE_REF)
    for record in records:
        dumped = json.dumps(asdict(record), default=str)
        for leak in HOSTILE_LEAKS:
            assert leak not in dumped, (type(record).__name__, leak)


def test_local_paths_are_stored_home_relative_or_redacted(tmp_path, monkeypatch):
    from coditect_ctx.ingest.redact import redact_local_path

    monkeypatch.setenv("HOME", str(tmp_path / "alice.smith"))
    assert redact_local_path(tmp_path / "alice.smith" / "proj" / "MEMORY-CONTEXT") == "~/proj/MEMORY-CONTEXT"
    assert redact_local_path(tmp_path / "alice.smith") == "~"
    assert redact_local_path("/home/bob.jones/work/proj") == "/home/[USER]/work/proj"
    assert redact_local_path("/srv/repos/carol@example.org-notes") == "/srv/repos/[REDACTED-EMAIL]@example.org-notes"
    assert redact_local_path("/srv/repos/proj") == "/srv/repos/proj"
