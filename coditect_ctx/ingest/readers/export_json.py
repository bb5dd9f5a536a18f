"""Session export JSON: ``metadata{timestamp, checkpoint_file, ...}``, ``conversation[]``,
``file_changes{}``, ``decisions[]``. Shares the checkpoint ref (and so the identity) with its Markdown twin."""

from __future__ import annotations

import json
from pathlib import Path

from coditect_ctx.ingest.readers._files import first_paragraph, read_text
from coditect_ctx.ingest.readers.session_md import clean_title
from coditect_ctx.ingest.records import (
    MessageRecord, SessionRecord, Skipped, message_identity, normalise_checkpoint_ref, parse_utc,
    session_identity,
)

_ROLE_MAP = {"human": "user", "claude": "assistant", "model": "assistant"}


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [str(v) for v in value if str(v).strip()]
    return [str(value)]


def _entry_text(entry: dict) -> str:
    parts = [str(entry.get("content") or "")]
    for name, body in (entry.get("sections") or {}).items():
        parts.append(f"## {name}\n\n{body}")
    return "\n\n".join(p for p in parts if p.strip())


def read_export_json(path: Path, root: Path | None = None) -> SessionRecord | Skipped:
    f = read_text(path, root)
    if isinstance(f, Skipped):
        return f
    try:
        data = json.loads(f.text)
    except json.JSONDecodeError as exc:
        return Skipped(f.rel, f"invalid JSON: {exc.msg} at line {exc.lineno}", "failed")
    if not isinstance(data, dict) or not isinstance(data.get("metadata"), dict):
        return Skipped(f.rel, "not a session export (no 'metadata' object)", "failed")
    meta = data["metadata"]
    ref = normalise_checkpoint_ref(meta.get("checkpoint_file"))
    started = parse_utc(str(meta.get("timestamp") or ""))
    objectives = [clean_title(o) for o in _as_list(meta.get("objectives"))]
    title = objectives[0] if objectives else (ref or path.stem)
    messages: list[MessageRecord] = []
    for position, entry in enumerate(data.get("conversation") or []):
        if not isinstance(entry, dict):
            continue
        role = str(entry.get("role") or "system").lower()
        role = _ROLE_MAP.get(role, role if role in ("user", "assistant", "tool", "system") else "system")
        content = _entry_text(entry)
        messages.append(MessageRecord(role=role, content=content, position=position, kind="text",
                                      identity=message_identity(role, content), first_seen=started,
                                      checkpoint_ref=ref))
    body = [m.content for m in messages]
    changes = data.get("file_changes") or {}
    for kind, items in changes.items() if isinstance(changes, dict) else []:
        if items:
            body.append(f"## File changes: {kind}\n" + "\n".join(f"- {i}" for i in _as_list(items)))
    decisions = _as_list(data.get("decisions"))
    if decisions:
        body.append("## Decisions\n" + "\n".join(f"- {d}" for d in decisions))
    content = "\n\n".join(body)
    first_sections = (data.get("conversation") or [{}])[0]
    exec_summary = (first_sections.get("sections") or {}).get("Executive Summary", "") \
        if isinstance(first_sections, dict) else ""
    record = SessionRecord(
        identity=session_identity(ref, started, title, content),
        title=title,
        started_at=started,
        checkpoint_ref=ref,
        repository=str(meta.get("repository") or ""),
        participants=_as_list(meta.get("participants")),
        objectives=objectives,
        tags=[t.rstrip(":") for t in _as_list(meta.get("tags"))],
        summary=first_paragraph(exec_summary or content),
        content=content,
        metadata={"form": "export_json", "export_time_local": meta.get("export_time"),
                  "file_changes": changes, "timestamp_source": "content" if started else None},
        messages=messages,
        source_format="export_json",
        source_path=f.rel,
        source_sha256=f.sha256,
        status="exported",
    )
    for m in messages:
        m.session_identity = record.identity
    return record
