"""`ctx backup` (take one; `verify`, `list`, `prune`) and `ctx restore`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import output
from .common import JsonOpt, WaitOpt, YesOpt, complete, completion_settings, settings
from .common import progress_callback as _progress

DestOpt = Annotated[
    Path | None,
    typer.Option("--dest", help="Backups folder (CTX_BACKUP_DIR; default: $CTX_HOME/backups).", show_default=False),
]


IdentityOpt = Annotated[
    Path | None,
    typer.Option("--identity", "-i", metavar="FILE", show_default=False,
                 help="age identity file (secret key) that opens an encrypted backup (CTX_BACKUP_IDENTITY). "
                      "Keep it off the machine that takes the backups."),
]


def _backup_names(ctx: typer.Context) -> list[str]:
    from ..backup import list_backups

    return [b.name for b in list_backups(completion_settings(ctx).backups_path) if b.complete]


BackupArg = Annotated[str, typer.Argument(help="A backup folder, or a backup name from `ctx backup list`.",
                                          autocompletion=complete(_backup_names))]

backup_app = typer.Typer(
    help="Take a backup (PostgreSQL dump + Chroma export + manifest); verify, list and prune backups.",
    invoke_without_command=True, no_args_is_help=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup")
    app.command()(restore)


def _settings(ctx: typer.Context, dest: Path | None, identity: Path | None = None):
    return settings(ctx, backup_dir=str(dest) if dest else None, backup_identity=str(identity) if identity else None)


def _note(json_out: bool):
    return (lambda msg: None) if json_out else output.note


@backup_app.callback()
def backup(ctx: typer.Context, dest: DestOpt = None, json_out: JsonOpt = False) -> None:
    """Take a backup now: one folder named by UTC time, published only when complete. Made for cron."""
    if ctx.invoked_subcommand is not None:
        if dest:  # `ctx backup --dest DIR list` means the same as `ctx backup list --dest DIR`
            ctx.ensure_object(dict)["backup_dir"] = str(dest)
        return
    from ..backup import create_backup

    def body() -> int:
        with _progress(json_out) as progress:
            result = create_backup(_settings(ctx, dest), report=_note(json_out), progress=progress)
        if json_out:
            output.emit_json({"ok": True, **result.as_dict()})
        else:
            vectors = sum(c["vectors"] for c in result.manifest["chroma"]["collections"].values())
            rows = sum(result.manifest["postgres"]["rows"].values())
            enc = result.manifest.get("encryption")
            print(f"backup {result.name}: {rows} rows, {vectors} vectors, {output.human_bytes(result.size_bytes)}"
                  f" at {result.path}" + (f", encrypted (age) to {len(enc['recipients'])} recipient(s)" if enc else ""))
        return 0

    output.run(body, json_out)


@backup_app.command()
def verify(ctx: typer.Context, backup: BackupArg, identity: IdentityOpt = None, dest: DestOpt = None,
           json_out: JsonOpt = False) -> None:
    """Test-restore a backup into a scratch database and scratch collections, compare, then remove them.

    An encrypted backup is test-restored with --identity; without one its encrypted files' checksums are checked."""
    from ..restore import verify_backup

    def body() -> int:
        with _progress(json_out) as progress:
            result = verify_backup(_settings(ctx, dest, identity), backup, report=_note(json_out), progress=progress,
                                   warn=output.note)
        if json_out:
            output.emit_json(result.as_dict())
        else:
            print(f"verified {result.backup}: {result.detail}")
        return 0

    output.run(body, json_out)


@backup_app.command("list")
def list_(ctx: typer.Context, dest: DestOpt = None, json_out: JsonOpt = False) -> None:
    """Backups, newest first, with size, age and verified state."""
    from ..backup import list_backups

    def body() -> int:
        found = list_backups(_settings(ctx, dest).backups_path)
        data = [b.as_dict() for b in found]
        if json_out:
            output.emit_json(data)
            return 0
        rows = [
            [d["name"], "complete" if d["complete"] else d["problem"] or "incomplete", output.human_bytes(d["size_bytes"]),
             "-" if d["age_hours"] is None else f"{d['age_hours']:.1f} h",
             {True: "ok", False: "FAILED", None: "not verified"}[d["verified"]] + (f" {d['verified_at']}" if d["verified_at"] else "")]
            for d in data
        ]
        output.console().print(output.table("ctx backups", ["name", "state", "size", "age", "verified"], rows))
        return 0

    output.run(body, json_out)


@backup_app.command()
def prune(
    ctx: typer.Context,
    keep_daily: Annotated[int, typer.Option("--keep-daily", help="Keep the newest backup of each of the last N days.")] = 7,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly", help="... of each of the last N ISO weeks.")] = 4,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly", help="... of each of the last N months.")] = 6,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be removed; remove nothing.")] = False,
    yes: YesOpt = False,
    dest: DestOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Apply a retention policy (GFS); never removes the newest backup; removes partial folders older than a day."""
    from ..backup import prune_backups

    def body() -> int:
        root = _settings(ctx, dest).backups_path
        plan = prune_backups(root, keep_daily, keep_weekly, keep_monthly, dry_run=True)
        doomed = plan.delete + plan.partial_delete
        if not dry_run and doomed and not yes:
            if not sys.stdin.isatty():
                from ..errors import UsageError

                raise UsageError(f"prune would remove {len(doomed)} backup folder(s)",
                                 hint="Add --yes to confirm when not at a terminal, or --dry-run to look first.")
            typer.confirm(f"Remove {len(doomed)} backup folder(s) from {root}?", abort=True)
        if not dry_run:
            plan = prune_backups(root, keep_daily, keep_weekly, keep_monthly, report=_note(json_out))
        if json_out:
            output.emit_json(plan.as_dict())
        else:
            verb = "would remove" if dry_run else "removed"
            for name in doomed:
                print(f"{verb} {name}")
            for name, reasons in plan.keep.items():
                print(f"keep {name} ({', '.join(reasons)})")
        return 0

    output.run(body, json_out)


def restore(
    ctx: typer.Context,
    backup: BackupArg,
    yes: YesOpt = False,
    identity: IdentityOpt = None,
    dest: DestOpt = None,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Replace the store's data with a backup's (checksums and schema checked first), then validate it.

    An encrypted backup needs --identity (exit 2 without it, or with one that is not its key).
    Exit 75 when another command is changing the store (see --wait)."""
    from ..restore import restore_backup

    def body() -> int:
        with _progress(json_out) as progress:
            result = restore_backup(_settings(ctx, dest, identity), backup, yes=yes, report=_note(json_out),
                                    progress=progress, wait=wait, warn=output.note)
        if json_out:
            output.emit_json({"ok": True, **result.as_dict()})
        else:
            rows = sum(result.rows.values())
            vectors = sum(result.vectors.values())
            print(f"restored {result.backup}: {rows} rows, {vectors} vectors; "
                  f"{result.marked_not_embedded} rows marked for re-embedding; checks: {', '.join(result.checks)}")
        return 0

    output.run(body, json_out)
