"""A note an agent asks the store to remember (`ctx mcp --allow-write`, tool `remember`): a checkpoint like any other.

The note is redacted (ingest/redact.py), written as a CODITECT checkpoint file in the store's own notes folder
(CTX_HOME/notes/SUBMODULE/MEMORY-CONTEXT/checkpoints/), and that folder is migrated (migrate.py): the same reader,
redaction, upsert, writer lock and embedding as every migrated checkpoint, so search, show, validate, backup and
restore treat it as one. The file keeps only redacted text.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone
from pathlib import Path

from .config import Settings
from .errors import UsageError

DEFAULT_SUBMODULE = "agent-notes"
MAX_TITLE_CHARS, MAX_NOTE_CHARS = 200, 100_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def notes_folder(settings: Settings, submodule: str) -> Path:
    return settings.home / "notes" / submodule


def remember(settings: Settings, title: str, text: str, submodule: str | None = None) -> dict:
    """Store the note; returns the checkpoint's id, ref, title, submodule and how many redactions were made."""
    from .ingest.records import checkpoint_identity, normalise_checkpoint_ref
    from .ingest.redact import redact
    from .migrate import run_migrate
    from .stores import Store

    title = " ".join((title or "").split())
    body = (text or "").strip()
    submodule = (submodule or DEFAULT_SUBMODULE).strip()
    if not title or not body:
        raise UsageError("A note needs a title and a text", hint="Give both: what it is about, and what to remember.")
    if len(title) > MAX_TITLE_CHARS or len(body) > MAX_NOTE_CHARS:
        raise UsageError(f"The note is too long (title at most {MAX_TITLE_CHARS}, text at most {MAX_NOTE_CHARS} "
                         "characters)", hint="Store the gist; the details belong in a checkpoint file.")
    if not _NAME.match(submodule):
        raise UsageError(f"{submodule!r} is not a submodule name", hint="Use letters, digits, '.', '_' and '-'.")
    title, title_hits = redact(title)
    body, body_hits = redact(body)
    now = datetime.now(timezone.utc)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-")[:60] or "note"
    ref = f"{now:%Y-%m-%dT%H-%M-%S}Z-{slug}-{secrets.token_hex(3)}"
    repo = notes_folder(settings, submodule)
    folder = repo / "MEMORY-CONTEXT" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ref}.md"
    path.write_text(f"# CODITECT Checkpoint: {title}\n\n**Timestamp:** {now:%Y-%m-%dT%H:%M:%SZ}\n"
                    f"**Status:** note\n\n---\n\n## Executive Summary\n\n{body}\n", encoding="utf-8")
    report = run_migrate(settings, [repo], wait=settings.timeout)
    with Store(settings) as store, store.pg(autocommit=True) as conn:
        row = conn.execute("SELECT id::text FROM checkpoints WHERE identity = %s",
                           (checkpoint_identity(normalise_checkpoint_ref(path.name) or ref),)).fetchone()
    redactions = sum(title_hits.values()) + sum(body_hits.values())
    return {"id": row[0] if row else None, "ref": ref, "title": title, "submodule": submodule,
            "redactions": redactions, "embedded": report.not_embedded == 0}
