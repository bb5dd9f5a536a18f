"""`ctx context TASK`: the memory a new coding session needs for TASK, as Markdown (or JSON) within a token budget."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import output
from .common import JsonOpt, settings


def register(app: typer.Typer) -> None:
    app.command()(context)


def context(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="What the new session is about, as you would say it.")],
    budget: Annotated[int, typer.Option("--budget", "-b", help="Most tokens the pack may take (the model's tokenizer).")] = 4000,
    submodule: Annotated[str | None, typer.Option("--submodule", "-s", help="Only records of this submodule.",
                                                  show_default=False)] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only records from this date/time, or 7d / 12h ago.",
                                              show_default=False)] = None,
    client: Annotated[str | None, typer.Option("--client", help="Who asks (recorded with the load), e.g. claude-code.",
                                               show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Pack the most relevant checkpoints, sessions and messages for TASK, then the submodule's recent work, within a token budget."""
    from ..context import build_pack

    def body() -> int:
        pack = build_pack(settings(ctx), task, budget=budget, submodule=submodule, since=since, client=client)
        if pack.degraded:
            output.note(output.printable(f"warning: no {' or '.join(pack.degraded)} ranking ({pack.degraded_reason}); "
                                         "pack chosen from PostgreSQL full text and trigram only"))
        if json_out:
            output.emit_json(pack.as_dict())
        elif pack.items:
            sys.stdout.write(pack.markdown)
            sys.stdout.flush()
        else:
            output.note("No records match." if not pack.candidates else f"No record fits in {pack.budget} tokens.")
        return 1 if pack.degraded else 0

    output.run(body, json_out)
