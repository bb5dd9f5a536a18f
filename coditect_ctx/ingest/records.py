"""What the readers hand to the migrate pipeline: plain dataclasses, nothing DB-specific.

Identity rules (the same content met twice must be one record; stable across runs and machines):

* Message: CODITECT's own hash, ``sha256(json.dumps({"role": r, "content": c}, sort_keys=True))`` with the
  role as the source stored it. The older dedup rows in ``messages/*.jsonl`` whose role is not ``user`` or
  ``assistant`` (``exchange``, ``conversation``, ``checkpoint``, ``unknown``) were hashed as
  ``sha256(content)``; :func:`message_identity` reproduces both recipes, so every hash in the corpus's
  JSONL and ``dedup_state/global_hashes.json`` is met again and a message in several files is one message.
* Checkpoint: ``sha256("checkpoint\\0" + ref)``; ``ref`` is the checkpoint file name without extension
  (NFC, no directory), exactly the value sessions name in ``**Checkpoint:**``.
* Session: the three session forms (``sessions/*.md``, ``exports/*.json``, an ``exports-archive`` transcript)
  share one thing in the real data: the checkpoint ref (Markdown ``**Checkpoint:**`` or the stub's
  "See checkpoint" line, JSON ``metadata.checkpoint_file``, and the transcript's file name, which the
  checkpoint script chose). The ref itself encodes the UTC timestamp and the title, so
  ``sha256("session\\0checkpoint\\0" + ref)``. A Markdown/JSON/SQLite session without a checkpoint uses
  UTC start + normalised title (``sha256("session\\0time-title\\0" + iso + "\\0" + title)``). A transcript
  without a checkpoint uses its text (``sha256("session\\0text\\0" + sha256(text))``): the archive holds
  byte copies under several names (collapsed), and same-named exports of *different* conversation parts
  (kept apart); names and dates in archive names are not trustworthy enough to merge on.
  Known consequence: two distinct exports that name the same checkpoint (one corpus case,
  ``2025-11-16T09-50-22Z-test-directory-consolidation``) become one session; ``metadata['export_time_local']``
  tells them apart.
* Pattern (legacy SQLite): ``sha256("pattern\\0" + pattern_id)``.

Paths in records are relative to the source root (the folder holding MEMORY-CONTEXT), never absolute.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Union

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Files larger than this are skipped as 'failed' rather than read into memory."""

ROLES = ("user", "assistant", "tool", "system")
KINDS = ("text", "tool_call", "tool_result")


@dataclass
class MessageRecord:
    role: str
    content: str
    position: int
    kind: str
    identity: str
    first_seen: datetime | None = None
    checkpoint_ref: str | None = None
    session_identity: str | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class SessionRecord:
    identity: str
    title: str
    started_at: datetime | None
    checkpoint_ref: str | None
    repository: str
    participants: list[str]
    objectives: list[str]
    tags: list[str]
    summary: str
    content: str
    metadata: dict
    messages: list[MessageRecord]
    source_format: str
    source_path: str
    source_sha256: str
    privacy_level: str = "TEAM"
    status: str = ""


@dataclass
class CheckpointRecord:
    identity: str
    ref: str
    title: str
    created_at: datetime | None
    sprint: str
    status: str
    git_branch: str | None
    git_commit: str | None
    summary: str
    content: str
    tags: list[str]
    metadata: dict
    source_path: str
    source_sha256: str
    privacy_level: str = "TEAM"


@dataclass
class PatternRecord:
    identity: str
    name: str
    pattern_type: str
    description: str
    usage_count: int
    tags: list[str]
    metadata: dict
    source_path: str
    source_sha256: str
    privacy_level: str = "TEAM"


@dataclass
class Skipped:
    path: str
    reason: str
    kind: str  # 'placeholder' | 'failed'


Record = Union[SessionRecord, CheckpointRecord, PatternRecord, MessageRecord, Skipped]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def message_identity(role: str, content: str) -> str:
    """CODITECT's message hash for ``role`` as the source stored it (see module docstring)."""
    if role in ("user", "assistant", "tool", "system"):
        return sha256_text(json.dumps({"role": role, "content": content}, sort_keys=True))
    return sha256_text(content)


_EXTENSIONS = re.compile(r"\.(md|txt|json|jsonl)$", re.IGNORECASE)


def normalise_checkpoint_ref(value: str | None) -> str | None:
    """The checkpoint key: file name, no directory, no extension, NFC, no 'checkpoint-' prefix."""
    if not value:
        return None
    ref = unicodedata.normalize("NFC", value.strip().strip("`").strip())
    ref = ref.replace("\\", "/").rsplit("/", 1)[-1]
    ref = _EXTENSIONS.sub("", ref)
    if ref.startswith("checkpoint-") and re.match(r"checkpoint-\d{4}-\d{2}-\d{2}", ref):
        ref = ref[len("checkpoint-"):]
    return ref or None


def normalise_title(title: str) -> str:
    """Lower-case words joined by single dashes: '06Z Session Complete - X' == 'Session-Complete---X'."""
    title = unicodedata.normalize("NFKC", title).lower()
    title = re.sub(r"^\d{2}z\s+", "", title)
    return "-".join(re.findall(r"[a-z0-9]+", title))


def checkpoint_identity(ref: str) -> str:
    return sha256_text("checkpoint\0" + ref)


def session_identity(checkpoint_ref: str | None, started_at: datetime | None, title: str,
                     text: str | None = None) -> str:
    """Session identity by the first available of: checkpoint ref, UTC start + title, text."""
    if checkpoint_ref:
        return sha256_text("session\0checkpoint\0" + checkpoint_ref)
    if started_at is not None and normalise_title(title):
        return sha256_text("session\0time-title\0" + iso_utc(started_at) + "\0" + normalise_title(title))
    return sha256_text("session\0text\0" + sha256_text(text or ""))


def pattern_identity(pattern_id: str) -> str:
    return sha256_text("pattern\0" + pattern_id)


_TS = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2})[:-](\d{2})(?:[:-](\d{2})(?:\.(\d{1,6})\d*)?)?)?\s*(Z|[+-]\d{2}:?\d{2})?"
)


def parse_utc(value: str | None) -> datetime | None:
    """Parse the timestamps the corpus writes (``2025-11-17T09:24:45Z``, ``2025-11-17T09-24-45Z``,
    ``2025-11-16``, ISO with offset). Naive values are taken as UTC; the result is always aware UTC."""
    if not value:
        return None
    m = _TS.search(value)
    if not m:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        dt = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0),
                      int((frac or "0").ljust(6, "0")), tzinfo=timezone.utc)
    except ValueError:
        return None
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        dt = dt - sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return dt


def iso_utc(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _family(record: SessionRecord) -> str:
    # Markdown and JSON exports carry the same summary; a transcript carries the conversation.
    return "conversation" if record.source_format == "transcript" else "summary"


def merge_sessions(records: list[SessionRecord]) -> SessionRecord:
    """One session from several records with the same identity (Markdown, JSON, transcript, stub).

    The longest text of each family (summary, conversation) is kept, so search sees both; scalar fields
    come from the richest record and are filled from the others; lists are unioned in order;
    ``metadata['sources']`` lists every file that contributed.
    """
    if not records:
        raise ValueError("merge_sessions needs at least one record")
    if len({r.identity for r in records}) != 1:
        raise ValueError("merge_sessions only merges records with the same identity")
    ranked = sorted(records, key=lambda r: (len(r.messages) > 0, len(r.content)), reverse=True)
    base = ranked[0]
    best_per_family: dict[str, SessionRecord] = {}
    for r in ranked:
        best_per_family.setdefault(_family(r), r)
    contents = [best_per_family[f].content for f in ("conversation", "summary") if f in best_per_family]

    def first(attr: str):
        return next((getattr(r, attr) for r in ranked if getattr(r, attr)), getattr(base, attr))

    def union(attr: str) -> list[str]:
        return list(dict.fromkeys(item for r in ranked for item in getattr(r, attr)))

    summary_source = best_per_family.get("summary", base)
    metadata = {}
    for r in reversed(ranked):
        metadata.update(r.metadata)
    metadata["sources"] = sorted(
        ({"format": r.source_format, "path": r.source_path, "sha256": r.source_sha256} for r in records),
        key=lambda s: (s["format"], s["path"]))
    return SessionRecord(
        identity=base.identity, title=first("title"), started_at=first("started_at"),
        checkpoint_ref=first("checkpoint_ref"), repository=first("repository"),
        participants=union("participants"), objectives=union("objectives"), tags=union("tags"),
        summary=summary_source.summary or first("summary"), content="\n\n---\n\n".join(contents),
        metadata=metadata, messages=max(records, key=lambda r: len(r.messages)).messages,
        source_format=base.source_format, source_path=base.source_path, source_sha256=base.source_sha256,
        privacy_level=max((r.privacy_level for r in records), key=_privacy_rank), status=first("status"),
    )


_PRIVACY_ORDER = ("PUBLIC", "TEAM", "PRIVATE", "EPHEMERAL")


def _privacy_rank(level: str) -> int:
    """Most restrictive level wins when the same session was met with different levels."""
    level = (level or "TEAM").upper()
    return _PRIVACY_ORDER.index(level) if level in _PRIVACY_ORDER else 1
