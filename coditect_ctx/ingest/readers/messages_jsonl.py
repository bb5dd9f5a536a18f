"""Deduplicated messages, one JSONL file per checkpoint: ``{hash, message{index, role, type, content},
first_seen, checkpoint}``. The stored hash is reproduced by `message_identity`; a line whose hash differs
is still read but flagged in ``metadata['stored_hash']``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from coditect_ctx.ingest.readers._files import read_text
from coditect_ctx.ingest.records import (
    MessageRecord, Skipped, message_identity, normalise_checkpoint_ref, parse_utc,
)

_TOOL_CALL = re.compile(r"^[A-Z][A-Za-z]+\(")
# Older dedup rows stored whole exchanges under these roles; they are kept, with a readable role.
_LEGACY_ROLES = {"checkpoint": "system", "exchange": "assistant", "conversation": "assistant",
                 "unknown": "assistant"}


def read_messages_jsonl(path: Path, root: Path | None = None) -> Iterator[MessageRecord | Skipped]:
    f = read_text(path, root)
    if isinstance(f, Skipped):
        yield f
        return
    bad = 0
    first_error = ""
    for number, line in enumerate(f.text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            msg = row["message"]
            stored_role = str(msg["role"])
            content = msg["content"]
            if not isinstance(content, str):
                raise TypeError("content is not a string")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            bad += 1
            first_error = first_error or f"line {number}: {exc}"
            continue
        identity = message_identity(stored_role, content)
        role = stored_role if stored_role in ("user", "assistant", "tool", "system") \
            else _LEGACY_ROLES.get(stored_role, "assistant")
        metadata = {"source_role": stored_role, "jsonl_checkpoint": row.get("checkpoint"),
                    "source_path": f.rel}
        for key in ("source_file",):
            if row.get(key):
                metadata[key] = row[key]
        if msg.get("source_type"):
            metadata["source_type"] = msg["source_type"]
        if row.get("hash") and row["hash"] != identity:
            metadata["stored_hash"] = row["hash"]
        yield MessageRecord(
            role=role,
            content=content,
            position=int(msg.get("index", number - 1)) if str(msg.get("index", "")).isdigit() else number - 1,
            kind="tool_call" if _TOOL_CALL.match(content) else "text",
            identity=identity,
            first_seen=parse_utc(row.get("first_seen")),
            checkpoint_ref=normalise_checkpoint_ref(row.get("checkpoint")),
            session_identity=None,
            metadata=metadata,
        )
    if bad:
        yield Skipped(f.rel, f"{bad} unreadable line(s), first at {first_error}", "failed")
