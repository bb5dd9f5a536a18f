"""Rendering shared by every command: data to stdout, chatter and progress to stderr, JSON on request.

Rich decides colour by itself: none when the stream is not a terminal, none with NO_COLOR set. Errors are one
friendly line plus a hint (JSON in --json mode); CTX_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .errors import CtxError, Terminated, as_ctx_error

_consoles: dict[str, Any] = {}


def console(stderr: bool = False):
    """Rich console for stdout (data) or stderr (progress, notes). Built on first use, per stream."""
    from rich.console import Console

    key = "err" if stderr else "out"
    stream = sys.stderr if stderr else sys.stdout
    cached = _consoles.get(key)
    if cached is None or cached.file is not stream:
        cached = Console(file=stream, stderr=stderr, highlight=False, soft_wrap=False)
        _consoles[key] = cached
    return cached


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: object) -> str:
    """Text from outside (file names, reasons quoting them) made safe for a terminal line: control characters
    (newline, ESC of ANSI sequences, C1) and bidi overrides are shown escaped, so a name can never forge a line."""
    import unicodedata

    out = []
    for ch in str(text):
        if ch in _BIDI or unicodedata.category(ch) == "Cc":
            code = ord(ch)
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or
                       (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"))
        else:
            out.append(ch)
    return "".join(out)


def note(message: str) -> None:
    console(stderr=True).print(message, markup=False)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def fail(exc: CtxError, json_mode: bool = False) -> int:
    if json_mode:
        emit_json({"ok": False, **exc.as_dict()})
    else:
        err = console(stderr=True)
        err.print(f"Error: {printable(exc.message)}", markup=False, style="bold red")
        if exc.hint:
            err.print(f"Hint: {printable(exc.hint)}", markup=False)
    return exc.exit_code


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def run(fn: Callable[[], int | None], json_mode: bool = False, unexpected_code: int | None = None) -> None:
    """Call a command body; map CtxError to its exit code, anything else through `as_ctx_error` (never a
    traceback unless CTX_DEBUG=1; `unexpected_code` replaces the exit code of a bug); Ctrl-C to 130 and SIGTERM
    to 143, each one line, after the interrupted work cleaned up (a child tool ended, a partial backup removed).
    Exits the process."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals stay as they are
        previous = None
    try:
        code = fn() or 0
    except Terminated:
        note("Terminated.")
        code = 143
    except KeyboardInterrupt:
        note("Interrupted.")
        code = 130
    except Exception as exc:
        click = sys.modules.get("click")
        if os.environ.get("CTX_DEBUG") or (click and isinstance(exc, (click.exceptions.Exit, click.exceptions.Abort,
                                                                       click.exceptions.ClickException))):
            raise
        error = as_ctx_error(exc)
        code = fail(error, json_mode)
        if unexpected_code is not None and not isinstance(exc, CtxError):
            code = unexpected_code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    raise SystemExit(code)


def table(title: str | None, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col in columns:
        t.add_column(col)
    for row in rows:  # cells are plain text: a name holding `[red]` or an escape sequence is shown as it is
        t.add_row(*[Text("" if v is None else printable(v)) for v in row])
    return t


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@contextmanager
def progress(enabled: bool = True) -> Iterator[Any]:
    """A Rich progress display on stderr (transient); a silent stand-in when disabled or not a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    show = enabled and console(stderr=True).is_terminal
    bar = Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console(stderr=True), disable=not show, transient=False,
    )
    with bar:
        yield bar
