"""Read one input file defensively: bad input becomes a `Skipped`, never an exception."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from coditect_ctx.ingest.records import MAX_FILE_BYTES, Skipped


@dataclass
class TextFile:
    path: Path
    rel: str
    text: str
    sha256: str


def relative(path: Path, root: Path | None) -> str:
    """Path relative to the source root (stable across machines); the file name when outside it."""
    if root is not None:
        try:
            try:
                resolved = path.resolve(strict=True)
            except (OSError, RuntimeError):  # a dangling symlink or a loop: name the link itself
                resolved = path.parent.resolve() / path.name
            return resolved.relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return path.name


def broken_link(path: Path) -> str | None:
    """Why a symlink cannot be read (a loop, a missing target), or None when it is no symlink or reads fine."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as exc:
        kind = "symlink loop" if exc.errno == errno.ELOOP else "dangling symlink"
        return f"{kind}: {exc.strerror} (-> {os.readlink(path)})"
    return None


def read_text(path: Path, root: Path | None, max_bytes: int = MAX_FILE_BYTES) -> TextFile | Skipped:
    rel = relative(path, root)
    link_problem = broken_link(path)
    if link_problem:
        return Skipped(rel, link_problem, "failed")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return Skipped(rel, f"file too large: {size} bytes > limit {max_bytes}", "failed")
        data = path.read_bytes()
    except OSError as exc:
        return Skipped(rel, f"cannot read: {exc.strerror or exc}", "failed")
    if not data.strip():
        return Skipped(rel, "empty file", "failed")
    if b"\x00" in data[:8192]:
        return Skipped(rel, "binary file (NUL bytes)", "failed")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Skipped(rel, f"not valid UTF-8 at byte {exc.start}", "failed")
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    return TextFile(path, rel, text, hashlib.sha256(data).hexdigest())


_FIELD = r"^\s*[-*]?\s*\*\*{name}:\*\*\s*(.*?)\s*$"


def field_value(text: str, name: str) -> str | None:
    """Value of a Markdown ``**Name:** value`` line (first occurrence)."""
    m = re.search(_FIELD.format(name=re.escape(name)), text, re.MULTILINE)
    return m.group(1).strip() if m and m.group(1).strip() else None


def sections(text: str, level: int = 2) -> dict[str, str]:
    """Split Markdown into ``{heading: body}`` at one heading level, ignoring fenced code."""
    out: dict[str, str] = {}
    current: str | None = None
    buf: list[str] = []
    fenced = False
    marker = "#" * level + " "
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith(marker):
            if current is not None:
                out.setdefault(current, "\n".join(buf).strip())
            current, buf = line[len(marker):].strip(), []
        elif current is not None:
            buf.append(line)
    if current is not None:
        out.setdefault(current, "\n".join(buf).strip())
    return out


def first_paragraph(text: str, limit: int = 600) -> str:
    for block in re.split(r"\n\s*\n", text or ""):
        block = block.strip()
        if block and not block.startswith(("#", "---", "```")):
            return block[:limit]
    return (text or "").strip()[:limit]


def clean_status(value: str | None) -> str:
    if not value:
        return ""
    value = re.sub(r"[*_`]", "", value)
    value = re.sub(r"[^\w\s().:/+&-]", "", value)
    return " ".join(value.split())
