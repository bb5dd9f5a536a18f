"""The `ctx` command: wiring only. Each command lives in coditect_ctx/commands/ and calls one library job."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import __version__, output
from .commands import backup, context, health, mcp, migrate, search, stack
from .runtime.procs import PRIVATE_UMASK


def _no_type_for_flags(display_type_rich):
    """Typer 0.29's Rich help prints `<bool>` beside flags (--json, --version, --help), as if they took a value."""

    def patched(self, ctx):
        return None if self.is_flag else display_type_rich(self, ctx)

    return patched


typer.core.TyperOption.display_type_rich = _no_type_for_flags(typer.core.TyperOption.display_type_rich)

app = typer.Typer(
    name="ctx",
    help="Operate the CODITECT memory-context store: PostgreSQL (record), ChromaDB (semantic search), Redis (cache).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ctx {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option("--home", help="Data directory (CTX_HOME); default: the XDG data dir.")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    ctx.obj = {"home": home} if home else {}


for module in (stack, health, migrate, backup, search, context, mcp):
    module.register(app)


def main() -> None:
    os.umask(PRIVATE_UMASK)  # what ctx writes (backups, models, pid files) and the services it starts stay private

    def start() -> None:
        if not search.fast_main(sys.argv[1:]):  # a plain `ctx search` skips Typer's start-up cost
            app(prog_name="ctx")  # also under `python -m coditect_ctx`: one completion variable, _CTX_COMPLETE

    output.run(start)  # the last resort: what escapes a command (a callback, Typer itself) is one line, too
