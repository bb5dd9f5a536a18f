"""Options and helpers every command shares, defined once."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Iterator

import typer

from .. import __version__, output
from ..config import Settings, load_settings

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking (for destructive steps).")]
WaitOpt = Annotated[
    float,
    typer.Option("--wait", metavar="SECONDS", min=0,
                 help="When another command is changing the store, wait up to SECONDS for it (default: exit 75 at once)."),
]
RuntimeOpt = Annotated[
    str | None,
    typer.Option("--runtime", help="Where services run: auto, local, docker or external (default: what setup chose).",
                 show_default=False),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ctx {__version__}")
        raise typer.Exit()


def main_options(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option("--home", help="Data directory (CTX_HOME); default: the XDG data dir.")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """The options before the command (`ctx --home DIR search ...`): the app's callback (cli.py)."""
    ctx.obj = {"home": home} if home else {}


def settings(ctx: typer.Context, **flags: Any) -> Settings:
    """Settings from the global options (ctx.obj) plus this command's flags."""
    base = dict(ctx.obj or {}) if ctx is not None else {}
    base.update({k: v for k, v in flags.items() if v is not None})
    return load_settings(**base)


@contextmanager
def progress_callback(json_out: bool) -> Iterator[Callable[[str, int, "int | None"], None]]:
    """A progress callback for the library: Rich bars at a terminal, nothing otherwise (cron, pipes, --json)."""
    with output.progress(enabled=not json_out) as bar:
        tasks: dict[str, int] = {}

        def update(step: str, done: int, total: int | None) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done, total=total)

        yield update


def complete(values: Callable[[typer.Context], Iterable[str]]) -> Callable[[typer.Context, str], list[str]]:
    """A shell-completion callback offering the `values(ctx)` that start with what was typed; never breaks the shell."""

    def callback(ctx: typer.Context, incomplete: str) -> list[str]:
        try:
            return [v for v in values(ctx) if v.startswith(incomplete)]
        except Exception:
            return []

    return callback


def completion_settings(ctx: typer.Context) -> Settings:
    """Settings while the shell completes: options are parsed but no callback ran, so ctx.obj is still empty."""
    flags: dict[str, str] = {}
    level = ctx
    while level is not None:
        for option, setting in (("home", "home"), ("dest", "backup_dir")):
            if level.params.get(option) and setting not in flags:
                flags[setting] = str(level.params[option])
        level = level.parent
    return load_settings(**flags)
