"""`ctx mcp`: serve the store to coding agents over the Model Context Protocol (stdio)."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import output
from .common import settings


def register(app: typer.Typer) -> None:
    app.command()(mcp)


def mcp(
    ctx: typer.Context,
    allow_write: Annotated[bool, typer.Option("--allow-write", help="Offer the `remember` tool (store a note); off: read-only.")] = False,
) -> None:
    """Serve search, show, context and status to a coding agent over MCP on stdin/stdout (read-only by default)."""
    from ..mcp_server import serve

    output.run(lambda: serve(settings(ctx), allow_write=allow_write))
