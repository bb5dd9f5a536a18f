"""Session Markdown: ``# Session Export: ...`` (full export) and the older ``# Session: ...`` stub.

Both name their checkpoint (``**Checkpoint:**`` or the stub's "See checkpoint" line), which is the
session's identity key. Times come from the content (``**Timestamp:**`` UTC, the stub's ``**Generated:**``);
the file name carries local time with a false ``Z`` and is never used for time.
"""

from __future__ import annotations

import re
from pathlib import Path

from coditect_ctx.ingest.readers._files import (
    TextFile, clean_status, field_value, first_paragraph, read_text, sections,
)
from coditect_ctx.ingest.records import (
    SessionRecord, Skipped, normalise_checkpoint_ref, parse_utc, session_identity,
)

_JUNK_PREFIX = re.compile(r"^\d{2}Z\s+")  # the export script left the tail of the time in titles
_SEE_CHECKPOINT = re.compile(r"See checkpoint:\s*`([^`]+)`")


def clean_title(title: str) -> str:
    return " ".join(_JUNK_PREFIX.sub("", title.strip()).split())


def _split_list(value: str | None) -> list[str]:
    if not value:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def read_session_md(path: Path, root: Path | None = None) -> SessionRecord | Skipped:
    loaded = read_text(path, root)
    if isinstance(loaded, Skipped):
        return loaded
    heading = loaded.text.lstrip().split("\n", 1)[0]
    if heading.startswith("# Session Export:"):
        return _export_form(loaded, heading[len("# Session Export:"):])
    if heading.startswith("# Session:"):
        return _stub_form(loaded, heading[len("# Session:"):])
    return Skipped(loaded.rel, f"not a session file (first line {heading[:60]!r})", "failed")


def _export_form(f: TextFile, raw_title: str) -> SessionRecord:
    text = f.text
    title = clean_title(raw_title)
    ref = normalise_checkpoint_ref(field_value(text, "Checkpoint"))
    started = parse_utc(field_value(text, "Timestamp"))
    parts = sections(text, 2)
    conv = parts.get("Conversation Summary", "")
    exec_summary = sections(conv, 4).get("Executive Summary", "")
    objectives_raw = field_value(parts.get("Session Metadata", ""), "Objectives")
    objectives = [clean_title(objectives_raw)] if objectives_raw else []
    return SessionRecord(
        identity=session_identity(ref, started, title, text),
        title=title,
        started_at=started,
        checkpoint_ref=ref,
        repository=field_value(text, "Repository") or "",
        participants=_split_list(field_value(text, "Participants")),
        objectives=objectives,
        tags=[t.rstrip(":") for t in _split_list(field_value(text, "Tags"))],
        summary=first_paragraph(exec_summary or conv),
        content=text,
        metadata={
            "form": "session_export",
            "export_time_local": field_value(text, "Export Time"),
            "timestamp_source": "content" if started else None,
        },
        messages=[],
        source_format="session_md",
        source_path=f.rel,
        source_sha256=f.sha256,
        status="exported",
    )


def _stub_form(f: TextFile, raw_title: str) -> SessionRecord:
    text = f.text
    title = clean_title(raw_title)
    m = _SEE_CHECKPOINT.search(text)
    ref = normalise_checkpoint_ref(m.group(1)) if m else None
    started, source = parse_utc(field_value(text, "Generated")), "content"
    if started is None and ref:
        started, source = parse_utc(ref[:20]), "checkpoint_ref"
    if started is None:
        started, source = parse_utc(field_value(text, "Date")), "content_date"
    parts = sections(text, 2)
    objectives = [re.sub(r"^[-*]\s*(\[[ xX]\]\s*)?", "", line).strip()
                  for line in parts.get("Objectives", "").split("\n") if re.match(r"\s*[-*]\s+\S", line)]
    return SessionRecord(
        identity=session_identity(ref, started, title, text),
        title=title,
        started_at=started,
        checkpoint_ref=ref,
        repository="",
        participants=[],
        objectives=objectives,
        tags=[],
        summary="; ".join(objectives) or title,
        content=text,
        metadata={"form": "session_stub", "duration": field_value(text, "Duration"),
                  "timestamp_source": source if started else None},
        messages=[],
        source_format="session_md",
        source_path=f.rel,
        source_sha256=f.sha256,
        status=clean_status(field_value(text, "Status")) or "complete",
    )
