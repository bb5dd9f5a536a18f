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


PortableOpt = Annotated[
    bool,
    typer.Option("--portable", help="backup: the portable export only (no Chroma snapshot, Chroma never stopped); "
                 "restore: reload the portable export even when the snapshot could be used.", show_default=False),
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


BackupArg = Annotated[str, typer.Argument(help="A backup folder, a backup name from `ctx backup list`, or "
                                               "s3://BUCKET/PREFIX/NAME.", autocompletion=complete(_backup_names))]
ToOpt = Annotated[
    list[str] | None,
    typer.Option("--to", metavar="REPO", show_default=False,
                 help="Write the backup to this repository: s3://BUCKET/PREFIX or a folder; repeat for several "
                      "(default: CTX_BACKUP_REPOS, else the backups folder)."),
]
RepoOpt = Annotated[
    list[str] | None,
    typer.Option("--repo", metavar="REPO", show_default=False,
                 help="Only this repository (s3://BUCKET/PREFIX or a folder); repeatable "
                      "(default: CTX_BACKUP_REPOS, else the backups folder)."),
]

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


def _repos(ctx: typer.Context, dest: Path | None, repo: list[str] | None):
    """--repo, else --dest (that folder alone), else the configured repositories."""
    from ..repos import repos

    conf = _settings(ctx, dest)
    chosen = list(repo or []) or ([str(conf.backups_path)] if dest or (ctx.obj or {}).get("backup_dir") else None)
    return conf, repos(conf, chosen)


@backup_app.callback()
def backup(ctx: typer.Context, dest: DestOpt = None, to: ToOpt = None, portable: PortableOpt = False,
           json_out: JsonOpt = False) -> None:
    """Take a backup now: one folder named by UTC time, published only when complete, written to every
    repository (--to, CTX_BACKUP_REPOS) in the same run. Made for cron.

    With the local runtime and no other writer, Chroma is stopped for the seconds its folder takes to copy (a
    snapshot that restores fast); --portable skips that."""
    if ctx.invoked_subcommand is not None:
        if dest:  # `ctx backup --dest DIR list` means the same as `ctx backup list --dest DIR`
            ctx.ensure_object(dict)["backup_dir"] = str(dest)
        return
    from ..repos import backup_to

    def body() -> int:
        with _progress(json_out) as progress:
            result = backup_to(_settings(ctx, dest), to or None, report=_note(json_out), progress=progress,
                               portable=portable)
        if json_out:
            output.emit_json({"ok": True, **result.as_dict()})
        else:
            made = result.backup
            vectors = sum(c["vectors"] for c in made.manifest["chroma"]["collections"].values())
            rows = sum(made.manifest["postgres"]["rows"].values())
            enc = made.manifest.get("encryption")
            snap = "Chroma snapshot" if made.manifest["chroma"].get("snapshot") else "no Chroma snapshot"
            print(f"backup {made.name}: {rows} rows, {vectors} vectors, {snap}, {output.human_bytes(made.size_bytes)}"
                  f" at {', '.join(result.locations)}"
                  + (f", encrypted (age) to {len(enc['recipients'])} recipient(s)" if enc else ""))
        return 0

    output.run(body, json_out)


@backup_app.command()
def verify(
    ctx: typer.Context,
    backup: BackupArg,
    restore_: Annotated[bool, typer.Option("--restore", help="For s3://...: also download it and test-restore it "
                                           "(a local backup is always test-restored); an encrypted backup without --identity is then refused "
                                           "(exit 2), not only checksummed.")] = False,
    identity: IdentityOpt = None,
    dest: DestOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Test-restore a backup into a scratch database and scratch collections, compare, then remove them.

    An encrypted backup is test-restored with --identity; without one its encrypted files' checksums are checked.
    A backup in object storage: every object's checksum, streamed (no key needed); --restore for the test restore."""
    from ..repos import check_remote
    from ..restore import verify_backup
    from ..stores.s3 import is_s3_url

    def body() -> int:
        with _progress(json_out) as progress:
            if is_s3_url(backup) and not restore_:
                result = check_remote(_settings(ctx, dest), backup, progress=progress)
            else:
                result = verify_backup(_settings(ctx, dest, identity), backup, report=_note(json_out),
                                       progress=progress, warn=output.note, test_restore=restore_).as_dict()
        if json_out:
            output.emit_json(result)
        else:
            print(f"verified {result['backup']}: {result['detail']}")
        return 0

    output.run(body, json_out)


@backup_app.command("list")
def list_(ctx: typer.Context, repo: RepoOpt = None, dest: DestOpt = None, json_out: JsonOpt = False) -> None:
    """Backups of every repository (or --repo), newest first, with size, age and verified state."""

    def body() -> int:
        from ..errors import CtxError

        _conf, chosen = _repos(ctx, dest, repo)
        data, read, failed = [], [], []
        for r in chosen:  # a repository that cannot be read is reported after the others are listed
            try:
                data += [{"repo": r.url, **b.as_dict()} for b in r.backups()]
                read.append(r)
            except CtxError as exc:
                failed.append(exc)
        if not read:
            raise failed[0]
        if json_out:
            output.emit_json(data)
        for r in [] if json_out else read:
            rows = [
                [d["name"], ("complete" + (", encrypted" if d["encrypted"] else "")) if d["complete"] else d["problem"] or "incomplete",
                 output.human_bytes(d["size_bytes"]),
                 "-" if d["age_hours"] is None else f"{d['age_hours']:.1f} h",
                 {True: "ok", False: "FAILED", None: "not verified"}[d["verified"]] + (f" {d['verified_at']}" if d["verified_at"] else "")]
                for d in data if d["repo"] == r.url
            ]
            title = "ctx backups" if len(chosen) == 1 and r.kind == "local" else f"ctx backups in {r.url}"
            output.console().print(output.table(title, ["name", "state", "size", "age", "verified"], rows))
        for exc in failed:
            output.fail(exc)  # on stderr, also with --json (stdout keeps the list of what could be read)
        return max((exc.exit_code for exc in failed), default=0)

    output.run(body, json_out)


@backup_app.command()
def prune(
    ctx: typer.Context,
    keep_daily: Annotated[int, typer.Option("--keep-daily", help="Keep the newest backup of each of the last N days.")] = 7,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly", help="... of each of the last N ISO weeks.")] = 4,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly", help="... of each of the last N months.")] = 6,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be removed; remove nothing.")] = False,
    yes: YesOpt = False,
    repo: RepoOpt = None,
    dest: DestOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Apply a retention policy (GFS) in each repository (or --repo); never removes the newest backup; removes
    unfinished backups (and, in object storage, multipart uploads) older than a day."""

    def body() -> int:
        _conf, chosen = _repos(ctx, dest, repo)
        keep = (keep_daily, keep_weekly, keep_monthly)
        plans = [r.prune(*keep, dry_run=True) for r in chosen]
        doomed = sum(len(p.delete + p.partial_delete) for p in plans)
        if not dry_run and doomed and not yes:
            if not sys.stdin.isatty():
                from ..errors import UsageError

                raise UsageError(f"prune would remove {doomed} backup folder(s)",
                                 hint="Add --yes to confirm when not at a terminal, or --dry-run to look first.")
            typer.confirm(f"Remove {doomed} backup folder(s) from {', '.join(r.url for r in chosen)}?", abort=True)
        if not dry_run:
            plans = [r.prune(*keep, report=_note(json_out)) for r in chosen]
        if json_out:
            data = [{"repo": r.url, **p.as_dict()} for r, p in zip(chosen, plans)]
            output.emit_json(data)  # always a list, one plan per repository: one more repository changes no shape
        else:
            verb = "would remove" if dry_run else "removed"
            for r, plan in zip(chosen, plans):
                where = "" if len(chosen) == 1 else f" in {r.url}"
                for name in plan.delete + plan.partial_delete:
                    print(f"{verb} {name}{where}")
                for key in plan.aborted_uploads:
                    print(f"{'would abort' if dry_run else 'aborted'} the unfinished upload {key}{where}")
                for name, reasons in plan.keep.items():
                    print(f"keep {name}{where} ({', '.join(reasons)})")
        return 0

    output.run(body, json_out)


def restore(
    ctx: typer.Context,
    backup: BackupArg,
    yes: YesOpt = False,
    identity: IdentityOpt = None,
    dest: DestOpt = None,
    wait: WaitOpt = 0.0,
    portable: PortableOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Replace the store's data with a backup's (checksums and schema checked first), then validate it.

    Chroma comes back from the backup's snapshot when its version matches and the runtime is local (fast), else
    from the portable export.

    An encrypted backup needs --identity (exit 2 without it, or with one that is not its key).
    Exit 75 when another command is changing the store (see --wait)."""
    from ..restore import restore_backup

    def body() -> int:
        with _progress(json_out) as progress:
            result = restore_backup(_settings(ctx, dest, identity), backup, yes=yes, report=_note(json_out),
                                    progress=progress, wait=wait, warn=output.note, portable=portable)
        if json_out:
            output.emit_json({"ok": True, **result.as_dict()})
        else:
            rows = sum(result.rows.values())
            vectors = sum(result.vectors.values())
            print(f"restored {result.backup}: {rows} rows, {vectors} vectors (Chroma from the {result.chroma}); "
                  f"{result.marked_not_embedded} rows marked for re-embedding; checks: {', '.join(result.checks)}")
        return 0

    output.run(body, json_out)
