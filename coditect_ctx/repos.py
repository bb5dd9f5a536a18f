"""Backup repositories: a local folder, or S3-compatible object storage (`s3://bucket/prefix`), each with the same
operations: write a backup, list, check checksums, fetch a local copy to restore or verify, prune (GFS), and the
newest backup's age for health.

A backup is made once on local disk (backup.py), then each file is streamed to every other repository, its manifest
last: in object storage too a backup exists only once `NAME/manifest.json` does, so a run killed half-way is never
listed as complete, restored, or counted by health, and `backup prune` removes its objects (and the multipart
uploads it left) after a day. The files are opaque here: whatever backup.py wrote (encrypted or not) is copied,
checked against the manifest's sha256 and size, and restored through the local path (restore.py) from a staging
copy under $CTX_HOME/staging that is removed afterwards (decrypted there too, by restore.py, when encrypted).

Which repositories: `--to`/`--repo` on the command line, else CTX_BACKUP_REPOS (comma-separated), else the local
backups folder (CTX_BACKUP_DIR, default $CTX_HOME/backups).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

from .backup import (
    _NAME, MANIFEST, PENDING_MANIFEST, VERIFIED, BackupInfo, BackupResult, PrunePlan, Progress, Report, _fsync_dir,
    _file_name_pattern, _no_progress, _quiet, create_backup, list_backups, newest_in, parse_iso, parse_manifest,
    plan_prune, prune_backups, remove_stale_partials, resolve_backup, staging_folder, utc_now,
)
from .config import Settings
from .errors import ConfigError, CtxError, DataError, ServiceError, UsageError
from .points import reach
from .stores import s3

UNFINISHED_AFTER = timedelta(days=1)  # an unfinished backup or multipart upload older than this is a killed run's


class LocalRepo:
    kind = "local"

    def __init__(self, path: Path):
        self.path = Path(path).expanduser()
        self.url = str(self.path)

    def check(self) -> None:
        pass  # create_backup names an unwritable folder itself

    def location(self, name: str) -> str:
        return str(self.path / name)

    def exists(self, name: str) -> bool:
        return (self.path / name).exists() or (self.path / f".{name}.partial").exists()

    def backups(self) -> list[BackupInfo]:
        return list_backups(self.path)

    def newest(self) -> tuple[str, datetime] | None:
        found = newest_in(self.path)
        return (found[0].name, found[1]) if found else None

    def put(self, folder: Path, manifest_file: Path, name: str, report: Report = _quiet,
            progress: Progress = _no_progress) -> str:
        """Copy a backup folder in as `.<name>.partial`, then publish it as backup.py does: rename, manifest last."""
        partial, final = self.path / f".{name}.partial", self.path / name
        report(f"backup: copying to {final}")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            shutil.copytree(folder, partial, ignore=shutil.ignore_patterns(MANIFEST, PENDING_MANIFEST, VERIFIED))
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise ConfigError(f"Cannot write backups to {self.path}: {exc.strerror or exc}",
                              hint="Give a folder this user can write (and a disk with room) in --to or CTX_BACKUP_REPOS.") from exc
        try:
            shutil.copyfile(manifest_file, partial / PENDING_MANIFEST)
            for p in partial.rglob("*"):
                if p.is_file():
                    with open(p, "rb") as fh:
                        os.fsync(fh.fileno())
            os.rename(partial, final)
            os.rename(final / PENDING_MANIFEST, final / MANIFEST)
            _fsync_dir(final)
            _fsync_dir(self.path)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return str(final)

    def prune(self, keep_daily: int, keep_weekly: int, keep_monthly: int, dry_run: bool = False,
              now: datetime | None = None, report: Report = _quiet) -> PrunePlan:
        return prune_backups(self.path, keep_daily, keep_weekly, keep_monthly, dry_run=dry_run, now=now, report=report)


def _ours(rel: str) -> bool:
    """A path inside a backup folder that ctx writes: a file of its layout, the manifest, verified.json."""
    return rel in (MANIFEST, VERIFIED) or bool(_file_name_pattern().fullmatch(rel))


class S3Repo:
    kind = "s3"

    def __init__(self, settings: Settings, loc: s3.Location, quick: bool = False):
        self.settings, self.loc = settings, loc
        self.url = loc.url
        self.bucket = s3.Bucket(settings, loc, quick=quick)

    def check(self) -> None:
        self.bucket.check()

    def location(self, name: str) -> str:
        return f"{self.url}/{name}"

    def exists(self, name: str) -> bool:
        """Anything stored under the name (a complete backup, or one being written by another run)."""
        return bool(self._objects(name))

    def _key(self, name: str, rel: str) -> str:
        return self.loc.key(name, rel)

    def _scan(self) -> dict[str, dict[str, dict]]:
        """name -> {path inside the backup: object}, for every backup-named folder below the location holding
        files of ctx's layout (anyone else's objects there are neither listed nor ever deleted)."""
        found: dict[str, dict[str, dict]] = {}
        top = self.bucket.folder()
        for obj in self.bucket.objects():
            name, _, rel = obj["Key"][len(top):].partition("/")
            if _NAME.match(name) and _ours(rel):
                found.setdefault(name, {})[rel] = obj
        return found

    def _objects(self, name: str) -> dict[str, dict]:
        """The objects of one backup: {path inside it: object}."""
        top = self.bucket.folder(name)
        return {obj["Key"][len(top):]: obj for obj in self.bucket.objects(name)}

    def _manifest_bytes(self, name: str) -> tuple[dict, bytes]:
        data = self.bucket.read(self._key(name, MANIFEST))
        if data is None:
            raise UsageError(f"{self.location(name)} is not a complete ctx backup (no {MANIFEST})",
                             hint="`ctx backup list --repo URL` shows the backups; unfinished ones cannot be restored.")
        return parse_manifest(data, f"{self.location(name)}/{MANIFEST}"), data

    def _manifest(self, name: str) -> dict:
        return self._manifest_bytes(name)[0]

    def _present(self, name: str, files: dict) -> None:
        """DataError unless every file the manifest lists is stored (before anything is downloaded or read)."""
        stored = self._objects(name)
        for rel in sorted(files):
            if rel not in stored:
                raise DataError(f"{self.location(name)}/{rel}: missing from the backup",
                                hint="The backup is incomplete; use another one (`ctx backup list --repo URL`).")

    def backups(self) -> list[BackupInfo]:
        """Every backup below the location, newest first; one listing, then one small GET per manifest."""
        found = []
        for name, objs in self._scan().items():
            size = sum(int(o["Size"]) for rel, o in objs.items() if rel != VERIFIED)
            info = BackupInfo(name, self.location(name), False, None, size)  # type: ignore[arg-type]
            if MANIFEST not in objs:
                info.problem, info.unfinished = "unfinished (no manifest)", True
                info.changed_at = max(o["LastModified"] for o in objs.values())
            else:
                try:
                    manifest = self._manifest(name)
                    info.ended_at = parse_iso(manifest["ended_at"])
                    info.complete = True
                    info.encrypted = bool(manifest.get("encryption"))
                except (DataError, UsageError) as exc:  # listed, flagged, never trusted
                    info.problem = exc.message
                except (KeyError, ValueError, TypeError):  # a checksummed manifest that is not ctx's
                    info.problem = "bad manifest: no valid ended_at"
            if VERIFIED in objs:
                try:
                    state = json.loads(self.bucket.read(self._key(name, VERIFIED)) or b"{}")
                    info.verified, info.verified_at = bool(state.get("ok")), state.get("verified_at")
                except ValueError:
                    pass
            found.append(info)
        epoch = datetime.min.replace(tzinfo=timezone.utc)
        found.sort(key=lambda b: (b.ended_at or epoch, b.name), reverse=True)
        return found

    def newest(self) -> tuple[str, datetime] | None:
        """The newest complete backup: one listing, then the manifest of the newest name only (names are UTC times)."""
        for name in sorted((n for n, objs in self._scan().items() if MANIFEST in objs), reverse=True):
            try:
                return name, parse_iso(self._manifest(name)["ended_at"])
            except (DataError, UsageError, KeyError, ValueError):
                continue
        return None

    def put(self, folder: Path, manifest_file: Path, name: str, report: Report = _quiet,
            progress: Progress = _no_progress) -> str:
        """Stream every file of the folder up (multipart above PART_BYTES), then the manifest: only then is it a backup."""
        if self.exists(name):  # taken since the name was chosen (backup_to picks one free in every repository)
            raise ConfigError(f"{self.location(name)} already exists: another store writes backups to this prefix",
                              hint="Give each store its own prefix (s3://BUCKET/PREFIX), e.g. named after the host.")
        files = sorted(p for p in folder.rglob("*")
                       if p.is_file() and p.name not in (MANIFEST, PENDING_MANIFEST, VERIFIED))
        total = sum(p.stat().st_size for p in files)
        sent = [0]

        def moved(n: int) -> None:
            sent[0] += n
            progress(f"uploading to {self.url}", sent[0], total)

        report(f"backup: uploading to {self.location(name)}")
        for i, path in enumerate(files):
            self.bucket.upload(path, self._key(name, path.relative_to(folder).as_posix()), callback=moved)
            if i == 0:
                reach("backup-upload")
        self.bucket.upload(manifest_file, self._key(name, MANIFEST))
        report(f"backup: {self.location(name)} complete ({total} bytes)")
        return self.location(name)

    def fetch(self, name: str, staging: Path, progress: Progress = _no_progress,
              check: Callable[[dict, str], object] | None = None, report: Report = _quiet) -> dict:
        """Download a backup into `staging`, manifest first: a backup without one, with a file missing, or that
        `check(manifest, url)` refuses (restore: no identity for an encrypted backup) is refused before any download."""
        manifest, data = self._manifest_bytes(name)
        files = manifest.get("files") or {}
        self._present(name, files)
        if check is not None:
            check(manifest, self.location(name))
        total = sum(int(m.get("bytes") or 0) for m in files.values())
        # the download, and the clear copies an encrypted backup is decrypted into beside it (restore.py)
        need = total + sum(int(m.get("clear_bytes") or 0) for m in files.values())
        free = shutil.disk_usage(staging.parent).free
        if need > free:
            where = staging.parent.parent  # $CTX_HOME/staging (this run's folder in it is removed on the way out)
            raise ConfigError(f"Restoring {self.location(name)} needs {need / 1e6:,.1f} MB in {where}; "
                              f"{free / 1e6:,.1f} MB free there",
                              hint="Free space on that disk, then run the command again.")
        report(f"download: {self.location(name)} -> {staging}")
        staging.mkdir(parents=True, mode=0o700)
        (staging / MANIFEST).write_bytes(data)
        got = [0]

        def moved(n: int) -> None:
            got[0] += n
            progress("downloading", got[0], total)

        for rel in sorted(files):
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self.bucket.download(self._key(name, rel), target, callback=moved)
        return manifest

    def check_files(self, name: str, progress: Progress = _no_progress) -> dict:
        """Manifest checksum, then every file's size and sha256 as it streams from the service (no local copy,
        no key: checksums cover the bytes stored). DataError naming the object that differs."""
        manifest = self._manifest(name)
        files = manifest.get("files") or {}
        self._present(name, files)
        for done, (rel, meta) in enumerate(sorted(files.items()), start=1):
            where = f"{self.location(name)}/{rel}"
            digest, size = hashlib.sha256(), 0
            for block in self.bucket.stream(self._key(name, rel)):
                digest.update(block)
                size += len(block)
            if size != meta["bytes"] or digest.hexdigest() != meta["sha256"]:
                raise DataError(f"{where}: checksum mismatch (the object was altered or damaged)",
                                hint="The backup is damaged; use another one (`ctx backup list --repo URL`).")
            progress("checking objects", done, len(files))
        return manifest

    def keep_verified(self, name: str, path: Path) -> None:
        """A verified.json that verify wrote into a downloaded copy, stored beside the backup's manifest."""
        self.bucket.upload(path, self._key(name, VERIFIED))

    def prune(self, keep_daily: int, keep_weekly: int, keep_monthly: int, dry_run: bool = False,
              now: datetime | None = None, report: Report = _quiet) -> PrunePlan:
        """The GFS plan of backup.py on this repository's complete backups; unfinished backups and multipart
        uploads older than a day (a killed run's) go too."""
        if min(keep_daily, keep_weekly, keep_monthly) < 0:
            raise UsageError("Keep counts cannot be negative", hint="Use 0 or more for --keep-daily/-weekly/-monthly.")
        now = now or utc_now()
        infos = self.backups()
        plan = plan_prune([(b.name, b.ended_at) for b in infos if b.complete], keep_daily, keep_weekly, keep_monthly)
        cutoff = now - UNFINISHED_AFTER
        plan.partial_delete = [b.name for b in infos if b.unfinished and b.changed_at and b.changed_at < cutoff]
        stale = self.bucket.stale_uploads(cutoff)
        plan.aborted_uploads = [key for key, _ in stale]
        if not dry_run:
            for name in plan.delete + plan.partial_delete:
                report(f"prune: removing {self.location(name)}")
                # the manifest first: a backup half-deleted by a killed prune is no longer listed as complete
                keys = sorted((rel for rel in self._objects(name) if _ours(rel)), key=lambda rel: rel != MANIFEST)
                self.bucket.delete([self._key(name, rel) for rel in keys])
            for key, upload_id in stale:
                report(f"prune: aborting the unfinished upload of s3://{self.loc.bucket}/{key}")
                self.bucket.abort(key, upload_id)
            plan.deleted = True
        return plan


Repo = LocalRepo | S3Repo


# -- which repositories -------------------------------------------------------------------------------------
def configured(settings: Settings) -> list[str]:
    """CTX_BACKUP_REPOS as a list, else the local backups folder."""
    listed = [part.strip() for part in settings.backup_repos.split(",") if part.strip()]
    return listed or [str(settings.backups_path)]


def open_repo(settings: Settings, url: str, quick: bool = False) -> Repo:
    if not str(url).strip():  # Path('') is the current folder: `--to "$DIR"` with DIR unset would write there
        raise UsageError("An empty repository was given (--to '' or --repo '')",
                         hint="Give a folder or s3://BUCKET/PREFIX (is a shell variable in the command unset?).")
    if s3.is_s3_url(url):
        return S3Repo(settings, s3.parse_url(url), quick=quick)
    return LocalRepo(Path(url))


def repos(settings: Settings, urls: list[str] | None = None, quick: bool = False) -> list[Repo]:
    """The repositories named (`--to`, `--repo`), else the configured ones; each once."""
    seen, out = set(), []
    for url in urls or configured(settings):
        repo = open_repo(settings, url, quick=quick)
        key = repo.url if repo.kind == "s3" else str(repo.path.resolve())
        if key not in seen:
            seen.add(key)
            out.append(repo)
    return out


def split_ref(settings: Settings, ref: str | Path) -> tuple[S3Repo, str] | None:
    """`s3://bucket/prefix/NAME` -> (its repository, NAME); None for a local folder or name."""
    if not s3.is_s3_url(ref):
        return None
    loc = s3.parse_url(str(ref))
    parent, _, name = loc.prefix.rpartition("/")
    if not _NAME.match(name):
        raise UsageError(f"{ref} does not name a backup",
                         hint="Write s3://BUCKET/PREFIX/NAME with a NAME from `ctx backup list --repo s3://BUCKET/PREFIX`.")
    return S3Repo(settings, s3.Location(loc.bucket, parent)), name


def resolve_ref(settings: Settings, ref: str | Path) -> str | Path:
    """A bare backup name, as `ctx backup list` shows it for every configured repository, that is not under the
    backups folder: the backup of that name in the first configured repository holding it (its folder, or its
    s3:// URL). Anything else unchanged (resolve_backup then names what is missing)."""
    if not isinstance(ref, str) or s3.is_s3_url(ref) or not _NAME.match(ref) or Path(ref).is_dir() \
            or (settings.backups_path / ref).is_dir():
        return ref
    for repo in repos(settings):
        try:
            if repo.exists(ref):
                return repo.location(ref)
        except CtxError:  # a repository out of reach holds nothing we can restore now
            continue
    return ref


# -- jobs across repositories -------------------------------------------------------------------------------
@dataclass
class RepoBackupResult:
    backup: BackupResult
    locations: list[str]  # where the backup now is, one per repository, in the order given

    def as_dict(self) -> dict:
        return {**self.backup.as_dict(), "path": self.locations[0], "repos": self.locations}


def backup_to(settings: Settings, to: list[str] | None = None, report: Report = _quiet,
              progress: Progress = _no_progress, portable: bool = False) -> RepoBackupResult:
    """Take one backup and write it to every repository (`to`, else the configured ones) in this run.

    Object storage is checked first (bucket, keys), so a wrong setting (exit 2) fails before the dump. One that
    cannot be reached (exit 3) is left out when another repository can take the backup: the backup is still made
    and written there, and the run fails with that error afterwards. The backup is made in the first local
    repository, or staged in the local backups folder as `.<name>.partial` when none is asked for (removed after
    the uploads). A repository that fails does not stop the others; the run then fails with its error, naming
    what was written."""
    targets = repos(settings, to)
    errors: list[CtxError] = []
    for repo in list(targets):
        try:
            repo.check()
        except ServiceError as exc:
            report(f"backup: not written to {repo.url}: {exc.message}")
            errors.append(exc)
            targets.remove(repo)
    if not targets:
        raise errors[0]
    local = next((r for r in targets if r.kind == "local"), None)
    remove_stale_partials(settings.backups_path, report)  # where a backup without a local repository stages
    others = [r for r in targets if r is not local]
    made = create_backup(settings, dest=local.path if local else settings.backups_path, report=report,
                         progress=progress, publish=local is not None, portable=portable,
                         taken=lambda name: any(r.exists(name) for r in others))
    manifest_file = made.path / (MANIFEST if local else PENDING_MANIFEST)
    locations: list[str] = []
    try:
        for repo in targets:
            if repo is local:
                locations.append(str(made.path))
                continue
            try:
                locations.append(repo.put(made.path, manifest_file, made.name, report, progress))
            except CtxError as exc:
                report(f"backup: not written to {repo.url}: {exc.message}")
                errors.append(exc)
    finally:
        if local is None:
            shutil.rmtree(made.path, ignore_errors=True)
    if errors:
        first = errors[0]
        written = f"; the backup {made.name} was written to {', '.join(locations)}" if locations else ""
        raise type(first)(first.message + written, hint=first.hint, service=first.service)
    return RepoBackupResult(made, locations)


@contextmanager
def local_copy(settings: Settings, ref: str | Path, report: Report = _quiet, progress: Progress = _no_progress,
               check: Callable[[dict, str], object] | None = None) -> Iterator[Path]:
    """The backup `ref` as a local folder: a local backup as it is; one in object storage downloaded (streamed to
    disk, manifest first; `check(manifest, url)` may refuse it before the download) into a staging folder under
    $CTX_HOME (backup.staging_folder), removed on the way out. A verified.json written into the downloaded copy
    (by verify) is uploaded beside the backup's manifest."""
    found = split_ref(settings, ref)
    if found is None:
        yield resolve_backup(settings, ref)
        return
    repo, name = found
    with staging_folder(settings) as root:
        copy = root / name
        repo.fetch(name, copy, progress, check, report)
        try:
            yield copy
        except CtxError as exc:  # name the backup where the operator finds it, not a copy about to be removed
            exc.message = exc.message.replace(str(copy), repo.location(name))
            if exc.hint:
                exc.hint = exc.hint.replace("`ctx backup list`", f"`ctx backup list --repo {repo.url}`")
            raise
        finally:
            if (copy / VERIFIED).is_file():
                repo.keep_verified(name, copy / VERIFIED)


def check_remote(settings: Settings, ref: str, progress: Progress = _no_progress) -> dict:
    """`ctx backup verify s3://.../NAME` without --restore: the manifest and every object's checksum, streamed."""
    found = split_ref(settings, ref)
    if found is None:
        raise UsageError(f"{ref} is not in object storage", hint="Give s3://BUCKET/PREFIX/NAME.")
    repo, name = found
    manifest = repo.check_files(name, progress)
    detail = f"{len(manifest.get('files') or {})} checksums match (streamed; no test restore)"
    return {"backup": repo.location(name), "ok": True, "detail": detail}


__all__ = ["LocalRepo", "S3Repo", "RepoBackupResult", "backup_to", "check_remote", "configured", "local_copy",
           "open_repo", "repos", "resolve_ref", "split_ref"]
