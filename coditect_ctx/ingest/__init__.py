"""Read MEMORY-CONTEXT folders (every historical format) into plain records for `ctx migrate`."""

from __future__ import annotations

from coditect_ctx.ingest.discover import Source, discover_sources
from coditect_ctx.ingest.readers import iter_source
from coditect_ctx.ingest.records import (
    CheckpointRecord, MessageRecord, PatternRecord, SessionRecord, Skipped, merge_sessions, message_identity,
)

__all__ = [
    "CheckpointRecord", "MessageRecord", "PatternRecord", "SessionRecord", "Skipped", "Source",
    "discover_sources", "iter_source", "merge_sessions", "message_identity",
]
