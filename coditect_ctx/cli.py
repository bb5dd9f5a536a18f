"""The `ctx` command: wiring only. Each command lives in coditect_ctx/commands/ and calls one library job.

`app`, the Typer application, is built on first use: a plain `ctx search` goes straight to its job
(commands/search_fast.py) and never imports Typer, whose start-up costs about as much as a whole cached search.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from . import output
from .runtime.procs import PRIVATE_UMASK


def _no_type_for_flags(display_type_rich):
    """Typer 0.29's Rich help prints `<bool>` beside flags (--json, --version, --help), as if they took a value."""

    def patched(self, ctx):
        return None if self.is_flag else display_type_rich(self, ctx)

    return patched


def _build_app():
    import typer

    from .commands import backup, common, context, health, mcp, migrate, search, stack

    typer.core.TyperOption.display_type_rich = _no_type_for_flags(typer.core.TyperOption.display_type_rich)
    app = typer.Typer(
        name="ctx",
        help="Operate the CODITECT memory-context store: PostgreSQL (record), ChromaDB (semantic search), Redis (cache).",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(common.main_options)
    for module in (stack, health, migrate, backup, search, context, mcp):
        module.register(app)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        app = globals()["app"] = _build_app()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    os.umask(PRIVATE_UMASK)  # what ctx writes (backups, models, pid files) and the services it starts stay private

    def start() -> None:
        from .commands.search_fast import fast_main

        if not fast_main(sys.argv[1:]):  # a plain `ctx search` skips Typer's start-up cost
            __getattr__("app")(prog_name="ctx")  # also under `python -m coditect_ctx`: one completion variable, _CTX_COMPLETE

    output.run(start)  # the last resort: what escapes a command (a callback, Typer itself) is one line, too
