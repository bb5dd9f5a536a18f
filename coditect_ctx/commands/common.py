"""Options and helpers every command shares, defined once."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..config import Settings, load_settings

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking (for destructive steps).")]
RuntimeOpt = Annotated[
    str | None,
    typer.Option("--runtime", help="Where services run: auto, local, docker or external (default: what setup chose).",
                 show_default=False),
]


def settings(ctx: typer.Context, **flags: Any) -> Settings:
    """Settings from the global options (ctx.obj) plus this command's flags."""
    base = dict(ctx.obj or {}) if ctx is not None else {}
    base.update({k: v for k, v in flags.items() if v is not None})
    return load_settings(**base)
