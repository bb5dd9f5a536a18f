"""Claude Code ``/export`` transcripts (``.txt``): ``> `` user, ``⏺ `` (or older ``● ``) assistant text or
tool call, ``  ⎿  `` tool result; any other line continues the current message.

Placeholders the checkpoint script wrote (``# Status: PENDING - Waiting for /export command``) are skipped.
A transcript named like a checkpoint (``YYYY-MM-DDTHH-MM-SSZ-Title``, the name the checkpoint script
chose, in UTC) joins that checkpoint's session; other names give a content-based identity.
"""

from __future__ import annotations

import re
from pathlib import Path

from coditect_ctx.ingest.readers._files import first_paragraph, read_text
from coditect_ctx.ingest.records import (
    MessageRecord, SessionRecord, Skipped, message_identity, normalise_checkpoint_ref, parse_utc,
    session_identity,
)

PLACEHOLDER_MARKER = "# Status: PENDING"
PLACEHOLDER_MAX_BYTES = 4096

_ARCHIVE_SUFFIX = re.compile(r"-\d{8}-\d{6}$")
_CHECKPOINT_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z-.+")
_DATE_NAME = re.compile(r"^(?:\d{8}T\d{6}-)?(\d{4}-\d{2}-\d{2})")
_TOOL_CALL = re.compile(r"^[A-Z][A-Za-z0-9_.-]*(\(|$)")
_ASSISTANT = ("⏺ ", "● ")
# Header lines some exports and hand-written notes carry: "# Timestamp: ...", "**Date**: ...", "# Generated: ...".
_HEADER_TIME = re.compile(r"^(?:#+ *)?\**(?:Timestamp|Generated|Date)\**:\**\s*(\d{4}-\d{2}-\d{2}[^\n]*)", re.MULTILINE)
_HEADING = re.compile(r"^#\s+(?:Session Export:\s*)?(.+?)\s*$")
_RESULT = "⎿"


def transcript_key(file_name: str) -> str:
    """Name without directory-flattening prefix (``...--``), archive suffixes (``-YYYYMMDD-HHMMSS``)
    and extension: copies of one export made by the archiver share it."""
    name = re.sub(r"\.txt$", "", file_name, flags=re.IGNORECASE)
    head, sep, rest = name.rpartition("--")
    if sep and re.match(r"\d{4}-\d{2}-\d{2}", rest):
        name = rest
    while True:
        shorter = _ARCHIVE_SUFFIX.sub("", name)
        if shorter == name:
            return name
        name = shorter


def checkpoint_ref_for(file_name: str, known_checkpoints: set[str] | None = None) -> str | None:
    """The checkpoint a transcript was exported for, judged by its checkpoint-style name.
    With ``known_checkpoints`` given, the ref must name an existing checkpoint."""
    key = transcript_key(file_name)
    if not _CHECKPOINT_NAME.match(key):
        return None
    ref = normalise_checkpoint_ref(key)
    if known_checkpoints is not None and ref not in known_checkpoints:
        return None
    return ref


def is_placeholder(text: str, size: int) -> bool:
    return size <= PLACEHOLDER_MAX_BYTES and PLACEHOLDER_MARKER in text[:1000]


def parse_messages(text: str) -> tuple[list[tuple[str, str, str]], str]:
    """Split a transcript into ``(role, kind, content)`` triples and return the preamble too."""
    messages: list[tuple[str, str, list[str]]] = []
    preamble: list[str] = []
    for line in text.split("\n"):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if line.startswith("> ") or line == ">":
            messages.append(("user", "text", [line[2:]]))
        elif line.startswith(_ASSISTANT):
            body = line[2:]
            kind = "tool_call" if _TOOL_CALL.match(body) else "text"
            messages.append(("assistant", kind, [body]))
        elif stripped.startswith(_RESULT) and indent <= 4:
            messages.append(("tool", "tool_result", [stripped[1:].strip()]))
        elif messages:
            role, _, lines = messages[-1]
            if role == "user" and line.startswith("  "):
                lines.append(line[2:])
            elif role == "tool" and indent >= 4:
                lines.append(line[min(indent, 5):])
            elif role == "assistant" and line.startswith("  "):
                lines.append(line[2:])
            else:
                lines.append(line)
        else:
            preamble.append(line)
    out = []
    for role, kind, lines in messages:
        content = "\n".join(lines).strip()
        if content:
            out.append((role, kind, content))
    return out, "\n".join(preamble).strip()


def read_transcript(path: Path, root: Path | None = None,
                    known_checkpoints: set[str] | None = None) -> SessionRecord | Skipped:
    f = read_text(path, root)
    if isinstance(f, Skipped):
        return f
    size = len(f.text.encode("utf-8"))
    if is_placeholder(f.text, size):
        return Skipped(f.rel, "placeholder: /export was never run for this checkpoint", "placeholder")
    key = transcript_key(path.name)
    ref = checkpoint_ref_for(path.name, known_checkpoints)
    # Checkpoint names are UTC (they equal the sessions' **Timestamp:** throughout the corpus); then a
    # header line of the file itself; the date in other file names only as a last resort.
    started, source = (parse_utc(ref[:20]), "checkpoint_ref") if ref else (None, None)
    header = _HEADER_TIME.search(f.text[:3000]) if started is None else None
    if header:
        started, source = parse_utc(header.group(1)), "content"
    if started is None:
        # Last resort: the date in the file name (local time, so it may be a day off).
        m = _DATE_NAME.match(key)
        started, source = (parse_utc(m.group(1)), "file_name") if m else (None, None)
    title = re.sub(r"^\d{4}-\d{2}-\d{2}(T\d{2}[-:]\d{2}[-:]\d{2}Z?)?-?", "", key).replace("-", " ").strip() or key
    heading = _HEADING.match(f.text.lstrip().split("\n", 1)[0])
    if heading and not ref:
        title = heading.group(1)  # Markdown notes saved as .txt name themselves better than their file
    triples, preamble = parse_messages(f.text)
    # Without a checkpoint the text is the identity: archive copies of one export collapse, while
    # same-named exports of different conversation parts stay apart.
    identity = session_identity(ref, None, title, "\n".join(line.rstrip() for line in f.text.strip().split("\n")))
    messages = [MessageRecord(role=role, content=content, position=i, kind=kind,
                              identity=message_identity(role, content), first_seen=started,
                              checkpoint_ref=ref, session_identity=identity)
                for i, (role, kind, content) in enumerate(triples)]
    first_user = next((c for r, _, c in triples if r == "user"), "")
    return SessionRecord(
        identity=identity,
        title=title,
        started_at=started,
        checkpoint_ref=ref,
        repository="",
        participants=["user", "claude-code"] if any(m.role == "user" for m in messages) else [],
        objectives=[first_user[:300]] if first_user else [],
        tags=[],
        summary=first_paragraph(next((c for r, k, c in triples if r == "assistant" and k == "text"), f.text)),
        content=f.text,
        metadata={"form": "transcript", "transcript_key": key, "preamble": preamble[:2000],
                  "timestamp_source": source, "message_count": len(messages)},
        messages=messages,
        source_format="transcript",
        source_path=f.rel,
        source_sha256=f.sha256,
        status="exported",
    )
