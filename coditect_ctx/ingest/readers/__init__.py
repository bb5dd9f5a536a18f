"""Dispatcher: read every known MEMORY-CONTEXT subfolder of a source into records.

Layout read (anything else, e.g. ``dedup_state`` bookkeeping and README files, is not imported):
``checkpoints/*.md``, ``sessions/*.md``, ``exports/*.json|*.txt``, ``exports-archive/*.txt``,
``messages/**/*.jsonl`` (+ ``MANIFEST.json`` checked), ``test-dataset/`` (same layout again; identities
dedupe it) and a legacy ``memory-context.db`` when present. Records are yielded, not collected; the same
identity can be yielded more than once and the consumer keeps one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from coditect_ctx.ingest.discover import Source
from coditect_ctx.ingest.readers._files import broken_link, read_text
from coditect_ctx.ingest.readers.checkpoint_md import read_checkpoint_md
from coditect_ctx.ingest.readers.export_json import read_export_json
from coditect_ctx.ingest.readers.messages_jsonl import read_messages_jsonl
from coditect_ctx.ingest.readers.session_md import read_session_md
from coditect_ctx.ingest.readers.sqlite_legacy import read_sqlite
from coditect_ctx.ingest.readers.transcript import read_transcript
from coditect_ctx.ingest.records import (
    CheckpointRecord, MessageRecord, PatternRecord, Record, SessionRecord, Skipped, normalise_checkpoint_ref,
)

__all__ = [
    "iter_source", "iter_memory_context", "read_checkpoint_md", "read_export_json", "read_messages_jsonl",
    "read_session_md", "read_sqlite", "read_transcript",
    "CheckpointRecord", "MessageRecord", "PatternRecord", "SessionRecord", "Skipped",
]

LEGACY_DB = "memory-context.db"
NESTED_COPIES = ("test-dataset",)


def _files(folder: Path, *suffixes: str) -> list[Path]:
    """Files of the folder with these suffixes, and symlinks with them that lead nowhere (read as failures)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and (p.is_file() or broken_link(p)))


def _known_checkpoints(mc: Path) -> set[str]:
    refs: set[str] = set()
    for folder in [mc / "checkpoints"] + [mc / n / "checkpoints" for n in NESTED_COPIES]:
        refs.update(normalise_checkpoint_ref(p.name) for p in _files(folder, ".md") if p.is_file())
    return refs


def iter_memory_context(mc: Path, root: Path, known: set[str] | None = None) -> Iterator[Record]:
    """Records of one MEMORY-CONTEXT folder (or a copy of its layout, like test-dataset)."""
    known = _known_checkpoints(mc) if known is None else known
    for path in _files(mc / "checkpoints", ".md"):
        yield read_checkpoint_md(path, root)
    for path in _files(mc / "sessions", ".md"):
        yield read_session_md(path, root)
    for path in _files(mc / "exports", ".json", ".txt"):
        yield read_export_json(path, root) if path.suffix.lower() == ".json" else read_transcript(path, root, known)
    for path in _files(mc / "exports-archive", ".txt"):
        yield read_transcript(path, root, known)
    messages = mc / "messages"
    if messages.is_dir():
        for path in sorted(p for p in messages.rglob("*.jsonl") if p.is_file() or broken_link(p)):
            yield from read_messages_jsonl(path, root)
        manifest = messages / "MANIFEST.json"
        if manifest.is_file():
            loaded = read_text(manifest, root)
            if isinstance(loaded, Skipped):
                yield loaded
            else:
                try:
                    json.loads(loaded.text)
                except json.JSONDecodeError as exc:
                    yield Skipped(loaded.rel, f"invalid JSON: {exc.msg} at line {exc.lineno}", "failed")
    for name in NESTED_COPIES:
        if (mc / name).is_dir():
            yield from iter_memory_context(mc / name, root, known)
    db = mc / LEGACY_DB
    if db.is_file():
        yield from read_sqlite(db, root)


def iter_source(source: Source) -> Iterator[Record]:
    """Every record of a discovered source, paths relative to ``source.root``."""
    yield from iter_memory_context(source.memory_context, source.root)
    db = source.root / LEGACY_DB
    if db.is_file():
        yield from read_sqlite(db, source.root)
