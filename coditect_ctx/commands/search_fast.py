"""`ctx search` without Typer: the plain command lines (parse_fast), running a search from the command's parameters,
and the table it prints. Imports nothing heavy (no Typer, no Rich until a table is rendered): a cached search is
mostly Python's start-up, so what this module pulls in is what a cached search costs.

The table is rendered to text once and that text is cached with the result (keyed on width and colour), so a
repeated search prints from Redis without importing Rich.
"""

from __future__ import annotations

import os
import re
import sys

from .. import output

ID_CHARS = 13  # "xxxxxxxx-xxxx": 48 bits, unique in any real store; `ctx show` takes it (or the whole id)


def run_search(get_settings, params: dict) -> None:
    """Run a search from the command's parameters as Typer names them (ctx.params, or parse_fast's equal)."""
    from ..search import make_query, search

    options = dict(params)
    query, json_out = options.pop("query"), options.pop("json_out")
    options["tags"] = options.pop("tag") or ()

    def body() -> int:
        q = make_query(query, **options)
        outcome = search(get_settings(), q, render=None if json_out else TableRenderer())
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
    """Run `ctx search` without Typer when the command line is a plain one; False = not handled.

    A handled search ends the process as soon as its output is flushed: the interpreter's own teardown (hundreds of
    modules, the model's session) took about 0.1 s of a first search and a fifth of a cached one, and a search
    leaves nothing to clean up (its connections are closed, its threads joined, it writes no file)."""
    params = parse_fast(argv)
    if params is None:
        return False
    from ..config import load_settings

    try:
        run_search(load_settings, params)
    except SystemExit as done:  # output.run always ends this way, with the exit code
        code = done.code if isinstance(done.code, int) else 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader gone (`ctx search ... | head`): nothing more to say
                code = code or 1
        os._exit(code)
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
