"""`ctx search` and `ctx show`.

The table is rendered to text once and that text is cached with the result (keyed on width and colour), so a
repeated search prints from Redis without importing Rich.
"""

from __future__ import annotations

import re
import sys
from typing import Annotated

import typer

from .. import output
from .common import JsonOpt, complete, settings

ID_CHARS = 13  # "xxxxxxxx-xxxx": 48 bits, unique in any real store; `ctx show` takes it (or the whole id)


def register(app: typer.Typer) -> None:
    app.command()(search)
    app.command()(show)


def _record_types(ctx: typer.Context) -> tuple[str, ...]:
    from ..search import TYPES

    return TYPES


def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for, as you would ask it. \"quotes\" for a phrase, -word to exclude.")],
    type_: Annotated[str | None, typer.Option("--type", "-t", help="Only session, checkpoint, pattern or message.",
                                              show_default=False, autocompletion=complete(_record_types))] = None,
    submodule: Annotated[str | None, typer.Option("--submodule", "-s", help="Only records of this submodule.",
                                                  show_default=False)] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only records with this tag (repeat: all of them).",
                                                  show_default=False)] = None,
    since: Annotated[str | None, typer.Option("--since", help="From this date/time (UTC unless an offset is given), or 7d / 12h ago.",
                                              show_default=False)] = None,
    until: Annotated[str | None, typer.Option("--until", help="Up to this date/time (a bare date: through its end).",
                                              show_default=False)] = None,
    privacy: Annotated[str | None, typer.Option("--privacy", help="Only PUBLIC, TEAM, PRIVATE or EPHEMERAL records.",
                                                show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many results.")] = 10,
    mode: Annotated[str, typer.Option("--mode", "-m", help="hybrid (full text + semantic), semantic or text.")] = "hybrid",
    json_out: JsonOpt = False,
) -> None:
    """Find records by meaning and words: full text, trigram and semantic rankings fused. Filters apply before ranking."""
    _search(lambda: settings(ctx), ctx.params)


def _search(get_settings, params: dict) -> None:
    """Run a search from the command's parameters as Typer names them (ctx.params, or parse_fast's equal)."""
    from ..search import make_query, search as run_search

    options = dict(params)
    query, json_out = options.pop("query"), options.pop("json_out")
    options["tags"] = options.pop("tag") or ()

    def body() -> int:
        q = make_query(query, **options)
        outcome = run_search(get_settings(), q, render=None if json_out else TableRenderer())
        degraded = outcome.result.degraded if outcome.result is not None else []
        if degraded:  # before the results: whoever reads them knows the ranking is partial
            output.note(output.printable(f"warning: no {' or '.join(degraded)} ranking ({outcome.result.degraded_reason}); "
                                         "results from PostgreSQL full text and trigram only"))
        if json_out:
            output.emit_json(outcome.result.as_output())
        elif outcome.page:
            sys.stdout.write(outcome.page)
            sys.stdout.flush()
        else:
            output.note("No records match.")
        return 1 if degraded else 0  # partial: cron and scripts notice

    output.run(body, json_out)


# `ctx search` straight from argv, before Typer builds its command tree: Typer (0.29) builds a pydantic
# TypeAdapter per parameter, and importing pydantic costs more than a whole cached search. Only the plain forms are
# taken here (`ctx search QUERY [options]`, `--long value`, `--long=value`, `-s value`, integers as ASCII digits);
# --help, `--`, global options, attached short values or anything unusual return None and go through Typer.
# tests/test_search_fast_path.py proves both parse alike and that this table covers every option of `search`.
_VALUE_OPTIONS = {"--type": "type_", "-t": "type_", "--submodule": "submodule", "-s": "submodule", "--tag": "tag",
                  "--since": "since", "--until": "until", "--privacy": "privacy", "--limit": "limit", "-n": "limit",
                  "--mode": "mode", "-m": "mode"}
_FLAG_OPTIONS = {"--json": "json_out"}
_LIST_PARAMS, _INT_PARAMS = {"tag"}, {"limit"}
_DEFAULTS = {"type_": None, "submodule": None, "tag": (), "since": None, "until": None, "privacy": None, "limit": 10,
             "mode": "hybrid", "json_out": False}


def parse_fast(argv: list[str]) -> dict | None:
    """The parameters Typer would pass `search` for a plain `search` command line, or None to let Typer handle it."""
    if not argv or argv[0] != "search":
        return None
    params: dict = {"query": None, **_DEFAULTS, "tag": []}
    args = iter(argv[1:])
    for arg in args:
        if arg in _FLAG_OPTIONS:
            params[_FLAG_OPTIONS[arg]] = True
            continue
        if arg.startswith("-") and arg != "-":
            name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            key = _VALUE_OPTIONS.get(name)
            if key is None:
                return None
            if not eq:
                value = next(args, None)
                if value is None:
                    return None
            if key in _LIST_PARAMS:
                params[key].append(value)
            elif key in _INT_PARAMS:
                if not re.fullmatch(r"-?[0-9]+", value):
                    return None
                params[key] = int(value)
            else:
                params[key] = value
            continue
        if params["query"] is not None:
            return None
        params["query"] = arg
    if params["query"] is None:
        return None
    params["tag"] = params["tag"] or ()
    return params


def fast_main(argv: list[str]) -> bool:
    """Run `ctx search` without Typer when the command line is a plain one; False = not handled."""
    params = parse_fast(argv)
    if params is None:
        return False
    from ..config import load_settings

    _search(load_settings, params)
    return True


class TableRenderer:
    """The results as a Rich table, rendered to text for a terminal of this width and colour support."""

    def __init__(self) -> None:
        import os
        import shutil

        self.is_terminal = sys.stdout.isatty()
        self.width = shutil.get_terminal_size((120, 24)).columns
        env = "|".join(os.environ.get(v, "") for v in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLORTERM"))
        self.key = f"table:v1:{self.width}:{self.is_terminal}:{env}"

    def __call__(self, result) -> str:
        if not result.hits:
            return ""
        import io

        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        buffer = io.StringIO()
        out = Console(file=buffer, width=self.width, force_terminal=self.is_terminal, highlight=False,
                      soft_wrap=False)
        table = Table(show_edge=False, pad_edge=False, show_lines=False, expand=False)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("type", no_wrap=True)
        table.add_column("title", ratio=2, overflow="fold")
        table.add_column("submodule", overflow="fold")
        table.add_column("date", no_wrap=True)
        table.add_column("snippet", ratio=4)
        table.add_column("id", no_wrap=True)
        for hit in result.hits:
            snippet = Text(hit.snippet)
            for start, end in hit.highlights:
                snippet.stylize("bold yellow", start, end)
            table.add_row(str(hit.rank), hit.type, hit.title, hit.submodule or "-", (hit.date or "-")[:10], snippet,
                          hit.id[:ID_CHARS])
        out.print(table)
        return buffer.getvalue()


def show(
    ctx: typer.Context,
    record_id: Annotated[str, typer.Argument(metavar="ID", help="The id from `ctx search` (whole, or its first 8+ characters).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the raw record as JSON on stdout.")] = False,
) -> None:
    """Print one record in full: Markdown rendered for a terminal, raw with --json."""
    from ..show import find_record, to_markdown

    def body() -> int:
        record = find_record(settings(ctx), record_id)
        if json_out:
            output.emit_json(record)
            return 0
        from rich.markdown import Markdown

        output.console().print(Markdown(to_markdown(record)))
        return 0

    output.run(body, json_out)
