"""`ctx search` and `ctx show` as Typer commands; running a search (and the plain command lines that skip Typer)
is search_fast.py's.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import output
from .common import JsonOpt, complete, settings
from .search_fast import run_search


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
    run_search(lambda: settings(ctx), ctx.params)


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
