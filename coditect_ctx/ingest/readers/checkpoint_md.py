"""Checkpoint Markdown (``# CODITECT Checkpoint: ...`` and a few hand-written variants).

The checkpoint's ref is its file name without extension: the key sessions name in ``**Checkpoint:**``.
``created_at`` comes from ``**Timestamp:**`` / ``**Date:**`` in the content; checkpoint file names are
UTC (they match the sessions' ``**Timestamp:**`` in every corpus case) and are used only as a last resort.
"""

from __future__ import annotations

import re
from pathlib import Path

from coditect_ctx.ingest.readers._files import clean_status, field_value, first_paragraph, read_text, sections
from coditect_ctx.ingest.records import (
    CheckpointRecord, Skipped, checkpoint_identity, normalise_checkpoint_ref, parse_utc,
)

_HEADING = re.compile(r"^#\s+(?:CODITECT\s+Checkpoint:|Checkpoint:|CHECKPOINT:|Sprint Checkpoint:)?\s*(.+)$")
_FENCE_AFTER = r"###\s*{name}\s*\n```[^\n]*\n(.*?)```"


def _fenced(text: str, name: str) -> str | None:
    m = re.search(_FENCE_AFTER.format(name=re.escape(name)), text, re.DOTALL)
    return m.group(1).strip() if m else None


def read_checkpoint_md(path: Path, root: Path | None = None) -> CheckpointRecord | Skipped:
    f = read_text(path, root)
    if isinstance(f, Skipped):
        return f
    text = f.text
    first = text.lstrip().split("\n", 1)[0]
    if not first.startswith("#"):
        return Skipped(f.rel, f"not a checkpoint file (first line {first[:60]!r})", "failed")
    ref = normalise_checkpoint_ref(path.name) or path.stem
    m = _HEADING.match(first)
    title = m.group(1).strip() if m else first.lstrip("# ").strip()
    created, source = parse_utc(field_value(text, "Timestamp")), "content"
    if created is None:
        created = parse_utc(field_value(text, "Date"))
    if created is None:
        created, source = parse_utc(ref), "file_name"
    branch = _fenced(text, "Current Branch")
    commits = _fenced(text, "Recent Commits")
    commit = None
    if commits:
        head = re.match(r"([0-9a-f]{7,40})\b", commits.split("\n", 1)[0].strip())
        commit = head.group(1) if head else None
    parts = sections(text, 2)
    summary = first_paragraph(parts.get("Executive Summary", "") or text.split("\n", 1)[-1])
    return CheckpointRecord(
        identity=checkpoint_identity(ref),
        ref=ref,
        title=title,
        created_at=created,
        sprint=field_value(text, "Sprint") or "",
        status=clean_status(field_value(text, "Status")),
        git_branch=branch.split("\n", 1)[0].strip() if branch else None,
        git_commit=commit,
        summary=summary,
        content=text,
        tags=[],
        metadata={"timestamp_source": source if created else None,
                  "sections": [name for name in parts]},
        source_path=f.rel,
        source_sha256=f.sha256,
    )
