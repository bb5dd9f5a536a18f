"""`ctx backup`: one folder per backup that an operator can restore from, list, verify and prune.

Layout of `<backups>/<YYYYmmddTHHMMSSZ>/`:
  postgres.dump                 pg_dump -Fc (custom format), taken from an exported snapshot
  chroma/<collection>.jsonl.gz  one JSON object per vector: id, document, metadata, embedding_f32le_b64 (the
                                portable export: any Chroma version, any runtime)
  chroma-snapshot.tar.zst       Chroma's folder as files (snapshot.py; local runtime, store not busy): fast restore
  manifest.json                 versions, counts, sha256 of every file, start and end time (`ended_at`)
  verified.json                 written by `ctx backup verify`; outside the checksummed set

Encrypted (CTX_BACKUP_RECIPIENTS, crypt.py): every file but the manifest is written through age as `NAME.age`.
The manifest stays in clear, so list and a checksum verify need no key, and says
`"encryption": {"format": "age", "recipients": [...]}`; each file's entry holds the sha256 and size of the
encrypted bytes (`sha256`, `bytes`: checked with no key) and of the clear content (`clear_sha256`, `clear_bytes`:
checked as restore decrypts). It holds no content: counts, names, versions, times, and the ids of rows restore
must mark not embedded (UUIDs). A clear sha256 only confirms a guess of a whole file, which a dump carrying
timestamps and generated ids does not allow. Restore decrypts into a staging folder under $CTX_HOME (0700,
removed afterwards) and restores from there.

Consistency while migrate writes: PostgreSQL is dumped from a snapshot that ctx exports and keeps open, and the
same snapshot says which rows are embedded (`embedded_sha256 = content_sha256`) with how many chunks. Chroma has
no snapshot, so only the vectors of those rows are taken, fetched by id, and only when every chunk is there and
carries the row's hash (`sha` metadata). Rows whose vectors moved on meanwhile are listed in the manifest as
`not_embedded`; restore marks them not embedded, and `ctx validate --repair` embeds them again.

The folder is written as `.<name>.partial` and renamed when complete, its manifest last of all, so a crash never
leaves a backup that looks whole; `newest_backup` in health and `list_backups` here only count folders with a
manifest (and list, verify and restore check its checksum).

Owns the backup folder format, its manifest and the export; the kinds' tables and collections come from kinds.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

from . import __version__, crypt
from .config import Settings
from .errors import ConfigError, DataError, ServiceError, UsageError
from .stores import Store
from .stores import postgres as pg
from .kinds import COLLECTIONS, TABLES
from .points import reach
from .runtime import procs
from .runtime.base import Progress

FORMAT = "ctx-backup/1"
MANIFEST = "manifest.json"
PENDING_MANIFEST = "manifest.json.pending"  # its name until the folder has its final name
VERIFIED = "verified.json"
DUMP_FILE = "postgres.dump"
CHROMA_DIR = "chroma"
NAME_FORMAT = "%Y%m%dT%H%M%SZ"
_NAME = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
_PARTIAL = re.compile(r"^\.(\d{8}T\d{6}Z(-\d+)?)\.partial$")
STAGING_DIR = "staging"  # under $CTX_HOME: clear files of an encrypted backup while it is restored
FETCH_IDS = 500  # vector ids per Chroma get (each answer carries 384 floats per id)

Report = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def _no_progress(step: str, done: int, total: int | None) -> None:
    pass


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    ts = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


# -- manifest and checksums -------------------------------------------------------------------------------
def manifest_checksum(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own `checksum` key: any edit to it is detected."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(folder: Path, manifest: dict, filename: str = MANIFEST) -> None:
    manifest = {**manifest, "checksum": manifest_checksum(manifest)}
    _write_durably(folder / filename, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def load_manifest(folder: Path) -> dict:
    """The manifest of a backup folder; DataError when it is missing, unreadable or was altered."""
    path = folder / MANIFEST
    if not path.is_file():
        raise UsageError(f"{folder} is not a complete ctx backup (no {MANIFEST})",
                         hint="`ctx backup list` shows the backups; partial folders cannot be restored.")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})", hint="The backup is damaged; use another one.") from exc
    return parse_manifest(text, str(path))


def parse_manifest(data: bytes, path: str) -> dict:
    """A manifest's bytes, checked (checksum, format); `path` names it in the DataError when they fail."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})", hint="The backup is damaged; use another one.") from exc
    if not isinstance(manifest, dict) or manifest.get("checksum") != manifest_checksum(manifest):
        raise DataError(f"{path}: checksum mismatch (the manifest was altered or damaged)",
                        hint="The backup is damaged; use another one.")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: unknown backup format {manifest.get('format')!r}", hint=f"This ctx reads {FORMAT}.")
    _check_file_names(manifest, path)
    return manifest


def _file_name_pattern() -> re.Pattern:
    """The names a backup's files may have (relative to its folder): the dump, the snapshot and one export per
    collection, each maybe with age's suffix. Nothing else is ever read, fetched or written."""
    from .snapshot import SNAPSHOT_FILE

    names = "|".join(re.escape(n) for n in (DUMP_FILE, SNAPSHOT_FILE))
    return re.compile(rf"(?:{names}|{re.escape(CHROMA_DIR)}/[A-Za-z0-9_]{{1,64}}\.jsonl\.gz)(?:{re.escape(crypt.SUFFIX)})?")


def _check_file_names(manifest: dict, path: str) -> None:
    """A manifest names only files of ctx's own layout. Its checksum needs no secret, so whoever can write to a
    repository can re-sign one: a name like `../../etc/cron.d/x` must never become a path that ctx fetches to,
    decrypts to or reads from."""
    pattern = _file_name_pattern()
    files = manifest.get("files")
    named = list(files) if isinstance(files, dict) else []
    chroma = manifest.get("chroma") if isinstance(manifest.get("chroma"), dict) else {}
    for entry in list((chroma.get("collections") or {}).values()) + [chroma.get("snapshot") or {}]:
        if isinstance(entry, dict) and "file" in entry:
            named.append(entry["file"])
    if files is not None and not isinstance(files, dict):
        named.append(files)
    for name in named:
        if not isinstance(name, str) or not pattern.fullmatch(name):
            shown = name.encode("unicode_escape").decode("ascii") if isinstance(name, str) else repr(name)
            raise DataError(f"{path}: names a file outside a ctx backup's layout ({shown[:120]!r})",
                            hint="The backup was altered (nothing was fetched or replaced); use another one.")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_files(folder: Path, manifest: dict, progress: Progress = _no_progress) -> None:
    """Every file the manifest lists exists with its recorded sha256 and size; DataError otherwise."""
    files = manifest.get("files") or {}
    for done, (rel, meta) in enumerate(sorted(files.items()), start=1):
        path = folder / rel
        if not path.is_file():
            raise DataError(f"{path}: missing from the backup", hint="The backup is incomplete; use another one.")
        if path.stat().st_size != meta["bytes"] or file_sha256(path) != meta["sha256"]:
            raise DataError(f"{path}: checksum mismatch (the file was altered or damaged)",
                            hint="The backup is damaged; use another one (`ctx backup list`).")
        progress("checking files", done, len(files))


def encryption_of(manifest: dict) -> dict | None:
    """The manifest's `encryption` ({"format": "age", "recipients": [...]}), None for a backup in clear."""
    enc = manifest.get("encryption")
    if enc is None:
        return None
    if not isinstance(enc, dict) or enc.get("format") != crypt.FORMAT or not enc.get("recipients"):
        raise DataError(f"unknown encryption in the manifest: {enc!r}", hint=f"This ctx reads {crypt.FORMAT} encryption.")
    return enc


def identities_for(settings: Settings, folder: Path | str, manifest: dict, warn: Report = _quiet) -> list | None:
    """The age identities that open this backup (from --identity / CTX_BACKUP_IDENTITY); None for a backup in
    clear. UsageError (exit 2, nothing changed) when it is encrypted and no identity was given, or the one given
    opens none of its recipients: the backup is fine, the key is not its (exit 5 would send the operator to
    throw away a good backup)."""
    enc = encryption_of(manifest)
    if enc is None:
        return None
    recipients = [str(r) for r in enc["recipients"]]
    shown = ", ".join(r[:16] + "..." for r in recipients[:4]) + (", ..." if len(recipients) > 4 else "")
    if not settings.backup_identity:
        raise UsageError(f"{folder} is encrypted (age, to {shown}): restoring it needs the identity (secret key)",
                         hint=f"Give it with --identity FILE (or {crypt.IDENTITY_SETTING}); `ctx backup verify` "
                              "without one checks the encrypted files' checksums.")
    identities = crypt.load_identities(settings.backup_identity, warn)
    # Bech32 keys compare case-insensitively (a backup made before recipients were normalised may hold AGE1...)
    if not {k.lower() for k in crypt.public_keys(identities)} & {r.lower() for r in recipients}:
        raise UsageError(f"The identity file {Path(settings.backup_identity).expanduser()} opens none of the "
                         f"recipients {Path(str(folder)).name} was encrypted to ({shown})",
                         hint="Use the identity of one of those public keys (`age-keygen -y key.txt` prints a key's "
                              "public key); nothing was changed.")
    return identities


@contextmanager
def staging_folder(settings: Settings) -> Iterator[Path]:
    """A new folder under $CTX_HOME/staging (0700) for clear copies of an encrypted backup's files, removed when
    the block ends. Folders left by a process that died (its pid in the name) are removed first."""
    root = settings.home / STAGING_DIR
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for old in root.iterdir():
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and not procs.pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = root / f"{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir(mode=0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def decrypt_backup(folder: Path, manifest: dict, staging: Path, identities: list,
                   progress: Progress = _no_progress) -> None:
    """Each encrypted file of the backup, decrypted (streaming) into `staging` under its clear name, its clear
    sha256 and size checked against the manifest; files stored in clear are linked. DataError on a mismatch.
    Run after check_files, which checked the encrypted bytes."""
    files = manifest.get("files") or {}
    for done, (rel, meta) in enumerate(sorted(files.items()), start=1):
        source = folder / rel
        if "clear_sha256" not in meta:
            (staging / rel).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            (staging / rel).symlink_to(source.resolve())
            continue
        clear = staging / rel.removesuffix(crypt.SUFFIX)
        clear.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sha, size = crypt.decrypt_file(source, clear, identities)
        if sha != meta["clear_sha256"] or size != meta.get("clear_bytes"):
            raise DataError(f"{source}: its decrypted content does not match the manifest's checksum",
                            hint="The backup is damaged or altered (nothing was replaced); use another one "
                                 "(`ctx backup list`).")
        progress("decrypting files", done, len(files))


def check_contents(folder: Path, manifest: dict, progress: Progress = _no_progress) -> None:
    """Every exported collection decompresses to its end and parses, vector by vector, with the dimension and
    the count the manifest records; DataError otherwise. Run before anything is replaced: a file damaged and
    its manifest re-signed must never leave a restored store with an emptied collection."""
    import zlib

    from .embed import DIMENSION

    try:
        collections = dict(manifest["chroma"]["collections"])
        total = sum(int(c["vectors"]) for c in collections.values())
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{folder / MANIFEST}: no readable list of collections ({exc!r})",
                        hint="The backup is damaged; use another one (`ctx backup list`).") from exc
    done = 0
    for name, meta in sorted(collections.items()):
        path = folder / str(meta.get("file"))
        n = 0
        try:
            for vid, _doc, metadata, embedding in read_vectors(path):
                if not isinstance(vid, str) or not isinstance(metadata, dict) or len(embedding) != DIMENSION:
                    raise ValueError(f"vector {n + 1} is malformed (id, metadata or {DIMENSION} floats)")
                n += 1
                done += 1
                if done % 10_000 == 0:
                    progress("reading vectors", done, total)
        except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: unreadable after {n} vectors ({exc})",
                            hint="The backup is damaged (nothing was replaced); use another one (`ctx backup list`).") from exc
        if n != meta.get("vectors"):
            raise DataError(f"{path}: holds {n} vectors, which does not match the manifest ({meta.get('vectors')})",
                            hint="The backup is damaged (nothing was replaced); use another one (`ctx backup list`).")
    progress("reading vectors", done, total)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- taking a backup ---------------------------------------------------------------------------------------
class BackupWriter:
    """Where one backup's files are written: as they are, or, with recipients, through age as `NAME.age`.

    `with writer.path("chroma/x.jsonl.gz") as path:` gives the path a producer writes the clear content to (a
    file, or crypt.encrypting's pipe); when the block ends the file is in the folder under `writer.stored(rel)`.
    `file_entries()` is the manifest's `files`: sha256 and size of what is stored, plus the clear content's."""

    def __init__(self, folder: Path, recipients: list[str] | None = None) -> None:
        self.folder = folder
        self.recipients = list(recipients or [])
        self.clear: dict[str, dict] = {}  # stored name -> clear_sha256, clear_bytes

    def stored(self, rel: str) -> str:
        return rel + crypt.SUFFIX if self.recipients else rel

    @contextmanager
    def path(self, rel: str) -> Iterator[Path]:
        if not self.recipients:
            yield self.folder / rel
            return
        with crypt.encrypting(self.folder / self.stored(rel), self.recipients) as (pipe, done):
            yield pipe
        self.clear[self.stored(rel)] = {"clear_sha256": done.clear_sha256, "clear_bytes": done.clear_bytes}

    def encryption(self) -> dict | None:
        return {"format": crypt.FORMAT, "recipients": self.recipients} if self.recipients else None

    def file_entries(self) -> dict[str, dict]:
        return {
            str(p.relative_to(self.folder)): {"sha256": file_sha256(p), "bytes": p.stat().st_size,
                                              **self.clear.get(str(p.relative_to(self.folder)), {})}
            for p in sorted(self.folder.rglob("*")) if p.is_file()
        }


@dataclass
class BackupResult:
    name: str
    path: Path
    size_bytes: int
    manifest: dict

    def as_dict(self) -> dict:
        m = self.manifest
        return {
            "name": self.name, "path": str(self.path), "size_bytes": self.size_bytes,
            "started_at": m["started_at"], "ended_at": m["ended_at"], "schema_version": m["schema_version"],
            "rows": m["postgres"]["rows"], "vectors": {n: c["vectors"] for n, c in m["chroma"]["collections"].items()},
            "not_embedded": {k: len(v) for k, v in m["chroma"]["not_embedded"].items()},
            "encryption": m.get("encryption"),
            "chroma_snapshot": bool(m["chroma"].get("snapshot")),
            **({"snapshot_skipped": m["chroma"]["snapshot_skipped"]} if m["chroma"].get("snapshot_skipped") else {}),
        }


def _new_name(root: Path, now: datetime, taken: Callable[[str], bool] | None = None) -> str:
    """The UTC time as a name, `-2`, `-3` ... added while it is taken here (or, `taken`, in another repository)."""
    base = now.strftime(NAME_FORMAT)
    name, n = base, 1
    while (root / name).exists() or (root / f".{name}.partial").exists() or (taken is not None and taken(name)):
        n += 1
        name = f"{base}-{n}"
    return name


def create_backup(
    settings: Settings, dest: Path | None = None, report: Report = _quiet, progress: Progress = _no_progress,
    publish: bool = True, portable: bool = False, taken: Callable[[str], bool] | None = None,
) -> BackupResult:
    """Dump PostgreSQL, snapshot Chroma's folder (snapshot.py; not with `portable`), export the matching Chroma
    vectors, write the manifest, then publish by rename.

    `publish=False` (staging for repositories elsewhere): the folder keeps its `.<name>.partial` name and its
    manifest the name `manifest.json.pending`, so it never lists or counts as a local backup; the caller uploads
    and removes it (prune removes it after a day if the run was killed)."""
    root = Path(dest) if dest else settings.backups_path
    recipients = crypt.parse_recipients(settings.backup_recipients)  # a bad key stops us before anything is written
    if recipients and settings.backup_identity and Path(settings.backup_identity).expanduser().is_file():
        report(f"warning: an age identity ({crypt.IDENTITY_SETTING}) is kept on the machine that takes the backups: "
               "whoever can read them here can read that key too; keep it elsewhere and bring it to restore")
    started = utc_now()
    try:
        root.mkdir(parents=True, exist_ok=True)
        name = _new_name(root, started, taken)
        partial = root / f".{name}.partial"
        partial.mkdir(mode=0o700)
        (partial / CHROMA_DIR).mkdir()
    except OSError as exc:
        raise ConfigError(f"Cannot write backups to {root}: {exc.strerror or exc}",
                          hint="Choose a writable folder with --dest or CTX_BACKUP_DIR.") from exc
    try:
        return _write_backup(settings, root, name, BackupWriter(partial, recipients), started, report, progress,
                             publish, portable)
    except BaseException:
        # a failed backup removes its own traces; only a killed one leaves a partial folder (prune clears it)
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _write_backup(settings: Settings, root: Path, name: str, files: BackupWriter, started: datetime,
                  report: Report, progress: Progress, publish: bool = True, portable: bool = False) -> BackupResult:
    from contextlib import ExitStack

    from . import snapshot

    partial = files.folder
    with Store(settings) as store, ExitStack() as lock:
        manifest: dict = {
            "format": FORMAT, "name": name, "ctx_version": __version__, "started_at": iso(started),
            "runtime": store.runtime.name,
        }
        if files.encryption():
            manifest["encryption"] = files.encryption()
        report(f"backup: writing {partial}" + (f" (encrypted with age to {len(files.recipients)} recipient(s))"
                                               if files.recipients else ""))
        skipped = "--portable" if portable else snapshot.hold_for_snapshot(store, lock, report)
        taken: dict = {}

        def frozen() -> None:  # PostgreSQL's snapshot is exported: copy Chroma's files, then let writers in
            if not skipped:
                store.check_chroma()
                taken.update(snapshot.take_snapshot(store, files, report))
            lock.close()

        wanted = _dump_postgres(store, files, manifest, report, frozen)
        reach("backup-dump")
        _export_chroma(store, files, manifest, wanted, progress)
        manifest["chroma"]["snapshot"] = taken or None
        if skipped:
            manifest["chroma"]["snapshot_skipped"] = skipped
    manifest["files"] = files.file_entries()
    for p in partial.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    manifest["ended_at"] = iso(utc_now())
    # Publish in two renames: the folder gets its final name, then the manifest its name. Whatever moment a
    # crash picks, no folder ever holds a manifest.json (what list, restore and health look for) too early.
    write_manifest(partial, manifest, PENDING_MANIFEST)
    _fsync_dir(partial / CHROMA_DIR)
    _fsync_dir(partial)
    if not publish:
        manifest = parse_manifest((partial / PENDING_MANIFEST).read_bytes(), str(partial / PENDING_MANIFEST))
        return BackupResult(name, partial, _folder_size(partial), manifest)
    final = root / name
    os.rename(partial, final)
    os.rename(final / PENDING_MANIFEST, final / MANIFEST)
    _fsync_dir(final)
    _fsync_dir(root)
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    report(f"backup: {final} complete ({size} bytes)")
    return BackupResult(name, final, size, load_manifest(final))


def _dump_postgres(store: Store, files: BackupWriter, manifest: dict, report: Report,
                   frozen: Callable[[], None] = lambda: None) -> dict[str, dict[str, tuple[str, int]]]:
    """pg_dump from a snapshot we hold open; return, from the same snapshot, the embedded rows per kind.
    `frozen` runs once that snapshot is exported, before the dump (backup copies Chroma's files there)."""
    from psycopg import IsolationLevel

    conn = store.pg()
    try:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        frozen()
        report("postgres: pg_dump -Fc")
        with files.path(DUMP_FILE) as output:
            store.runtime.run_pg_tool("pg_dump", ["-Fc", "--snapshot", snapshot], output=output)
        # Read after the dump so a lock held by someone else blocks pg_dump (visible) rather than us.
        manifest["schema_version"] = pg.schema_version(conn)
        manifest["postgres"] = {
            "file": DUMP_FILE,
            "server_version": conn.execute("SHOW server_version").fetchone()[0],
            "rows": pg.table_counts(conn) if manifest["schema_version"] else {},
            "data_generation": pg.data_generation(conn) if manifest["schema_version"] else 0,
        }
        row = conn.execute("SELECT embedding_model, embedding_dim FROM db_metadata WHERE id = 1").fetchone() \
            if manifest["schema_version"] else None
        manifest["embedding"] = {"model": row[0] if row else None, "dim": row[1] if row else None,
                                 "encoding": "float32 little-endian, base64"}
        wanted: dict[str, dict[str, tuple[str, int]]] = {}
        for kind, table in TABLES.items():
            wanted[kind] = {
                rid: (sha, chunks)
                for rid, sha, chunks in conn.execute(
                    f"SELECT id::text, embedded_sha256, embedded_chunks FROM {table}"
                    " WHERE embedded_sha256 = content_sha256 AND embedded_chunks > 0 ORDER BY id"
                )
            } if manifest["schema_version"] else {}
        conn.rollback()
    finally:
        conn.close()
    store.check_chroma()  # a hung server: no answer in CTX_TIMEOUT, not after CTX_CHROMA_READ_TIMEOUT per request
    try:
        manifest["chroma_server_version"] = store.chroma.version()
    except ServiceError:  # a version string is nice to have, never a reason to fail a backup
        manifest["chroma_server_version"] = "unknown"
    return wanted


def _export_chroma(store: Store, files: BackupWriter, manifest: dict, wanted: dict, progress: Progress) -> None:
    chroma = store.chroma
    collections: dict[str, dict] = {}
    not_embedded: dict[str, list[str]] = {}
    total = sum(sum(c for _sha, c in rows.values()) for rows in wanted.values())
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress("exporting vectors", done, total)

    fetcher = store.open_chroma()  # the prefetch thread's own client (a client is not thread-safe)
    try:
        for kind, name in COLLECTIONS.items():
            rows = wanted.get(kind, {})
            rel = f"{CHROMA_DIR}/{name}.jsonl.gz"
            exists = chroma.has_collection(name)

            def fetch(batch, name=name, exists=exists) -> dict:
                ids = [f"{rid}:{n}" for rid, (_sha, chunks) in batch for n in range(chunks)]
                return fetcher.get(name, ids=ids, include=("metadatas", "documents", "embeddings")) if exists else {}

            with files.path(rel) as path, gzip.open(path, "wt", encoding="utf-8", compresslevel=3) as out:
                vectors, missing = _write_export(out, _prefetched(fetch, _record_batches(rows)), advance)
            collections[name] = {
                "kind": kind, "file": rel, "vectors": vectors, "rows": len(rows) - len(missing),
                "metadata": {"hnsw:space": "cosine"},
            }
            not_embedded[kind] = missing
    finally:
        fetcher.close()
    manifest["chroma"] = {"server_version": manifest.pop("chroma_server_version", None),
                          "collections": collections, "not_embedded": not_embedded}


def _prefetched(fetch: Callable, batches, ahead: int = 2):
    """(batch, fetch(batch)) for each batch, the next `ahead` fetched in a thread meanwhile: Chroma's server
    serialises a page while this process decodes and writes the one before (1 thread: one client, in order)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    batches = iter(batches)
    with ThreadPoolExecutor(1, thread_name_prefix="ctx-export") as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append((batch, pool.submit(fetch, batch)))
            if len(pending) > ahead:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()


def _write_export(out, fetched, advance: Callable[[int], None]) -> tuple[int, list[str]]:
    """Write the vectors of each fetched batch whose rows have every chunk with the row's hash; (vectors written,
    ids of rows left out). `advance` is told each batch's count of vectors asked for."""
    import base64

    import numpy as np

    vectors = 0
    missing: list[str] = []
    for batch, got in fetched:
        found = {}
        for vid, meta, doc, emb in zip(got.get("ids") or [], got.get("metadatas") or [],
                                       got.get("documents") or [], got.get("embeddings") or []):
            found[vid] = (meta or {}, doc, emb)
        for rid, (sha, chunks) in batch:
            parts = [found.get(f"{rid}:{n}") for n in range(chunks)]
            if any(p is None or p[0].get("sha") != sha for p in parts):
                missing.append(rid)
                continue
            for n, (meta, doc, emb) in enumerate(parts):
                blob = base64.b64encode(np.asarray(emb, dtype="<f4").tobytes()).decode()
                out.write(json.dumps({"id": f"{rid}:{n}", "document": doc, "metadata": meta,
                                      "embedding_f32le_b64": blob}, ensure_ascii=False) + "\n")
                vectors += 1
        advance(sum(chunks for _rid, (_sha, chunks) in batch))
    return vectors, missing


def _record_batches(rows: dict[str, tuple[str, int]]):
    """Rows grouped so each batch asks Chroma for about FETCH_IDS vectors and never splits a row's chunks."""
    batch, size = [], 0
    for rid, (sha, chunks) in rows.items():
        batch.append((rid, (sha, chunks)))
        size += chunks
        if size >= FETCH_IDS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def read_vectors(path: Path):
    """The vectors of one exported collection: (id, document, metadata, embedding as a list of floats)."""
    import base64

    import numpy as np

    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            item = json.loads(line)
            emb = np.frombuffer(base64.b64decode(item["embedding_f32le_b64"]), dtype="<f4").tolist()
            yield item["id"], item.get("document"), item.get("metadata") or {}, emb


# -- finding, listing and pruning backups -----------------------------------------------------------------
def resolve_backup(settings: Settings, ref: str | Path) -> Path:
    """A backup folder given as a path, or as a name under the backups folder."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve()
    under = settings.backups_path / str(ref)
    if under.is_dir():
        return under
    raise UsageError(f"No backup at {ref}", hint="Give a backup folder or a name from `ctx backup list`.")


@dataclass
class BackupInfo:
    name: str
    path: Path
    complete: bool
    ended_at: datetime | None
    size_bytes: int
    verified: bool | None = None
    verified_at: str | None = None
    problem: str = ""
    unfinished: bool = False  # interrupted before it was published: prune removes it after a day
    changed_at: datetime | None = None  # an unfinished backup in object storage: when it was last written
    encrypted: bool = False  # its files are age-encrypted (restore and a test restore need the identity)

    def as_dict(self, now: datetime | None = None) -> dict:
        out = asdict(self)
        out["path"] = str(self.path)
        out["ended_at"] = iso(self.ended_at) if self.ended_at else None
        out.pop("changed_at")
        ref = self.ended_at or self.changed_at
        if ref is None and isinstance(self.path, Path) and self.path.exists():  # a partial folder: age since it was last written
            ref = datetime.fromtimestamp(self.path.stat().st_mtime, timezone.utc)
        out["age_hours"] = round(((now or utc_now()) - ref).total_seconds() / 3600, 2) if ref else None
        return out


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_backups(root: Path) -> list[BackupInfo]:
    """Backups under `root`, newest first; partial (unfinished or crashed) folders are listed as incomplete."""
    if not root.is_dir():
        return []
    found: list[BackupInfo] = []
    for path in root.iterdir():
        if not path.is_dir() or not (_NAME.match(path.name) or _PARTIAL.match(path.name)):
            continue
        info = BackupInfo(path.name, path, False, None, _folder_size(path))
        if _NAME.match(path.name) and not (path / MANIFEST).exists():
            info.problem, info.unfinished = "unfinished (no manifest)", True
        elif _NAME.match(path.name):
            try:
                manifest = load_manifest(path)
                info.ended_at = parse_iso(manifest["ended_at"])
                info.complete = True
                info.encrypted = bool(manifest.get("encryption"))
            except Exception as exc:  # listed, flagged, never trusted
                info.problem = getattr(exc, "message", str(exc))
        else:
            info.problem, info.unfinished = "partial (unfinished or interrupted)", True
        try:
            state = json.loads((path / VERIFIED).read_text())
            info.verified, info.verified_at = bool(state.get("ok")), state.get("verified_at")
        except (OSError, ValueError):
            pass
        found.append(info)
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    found.sort(key=lambda b: (b.ended_at or epoch, b.name), reverse=True)
    return found


def newest_in(root: Path) -> tuple[Path, datetime] | None:
    """The newest complete backup under `root` (a folder with a manifest), by its recorded end time; cheap (no
    checksum): what health reports."""
    if not root.is_dir():
        return None
    best = None
    for manifest in root.glob("*/manifest.json"):
        try:
            data = json.loads(manifest.read_text())
            ended = parse_iso(data.get("ended_at") or data.get("end_time"))
        except (OSError, ValueError, TypeError, AttributeError):  # unreadable, not JSON, not an object, no date
            continue
        if best is None or ended > best[1]:
            best = (manifest.parent, ended)
    return best


@dataclass
class PrunePlan:
    keep: dict[str, list[str]] = field(default_factory=dict)  # name -> reasons
    delete: list[str] = field(default_factory=list)
    partial_delete: list[str] = field(default_factory=list)
    aborted_uploads: list[str] = field(default_factory=list)  # object storage: multipart uploads a killed run left
    deleted: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def plan_prune(
    backups: list[tuple[str, datetime]], keep_daily: int, keep_weekly: int, keep_monthly: int
) -> PrunePlan:
    """Grandfather-father-son: keep the newest backup of each of the last N days, ISO weeks and months that
    have a backup (a pause in backups never makes old ones expire faster), and always the newest backup."""
    ordered = sorted(backups, key=lambda b: b[1], reverse=True)
    plan = PrunePlan()
    if not ordered:
        return plan
    plan.keep[ordered[0][0]] = ["newest"]
    rules = (
        ("daily", keep_daily, lambda t: t.date()),
        ("weekly", keep_weekly, lambda t: tuple(t.isocalendar())[:2]),
        ("monthly", keep_monthly, lambda t: (t.year, t.month)),
    )
    for label, count, bucket_of in rules:
        seen: set = set()
        for name, ended in ordered:
            if len(seen) >= count:
                break
            bucket = bucket_of(ended.astimezone(timezone.utc))
            if bucket in seen:
                continue
            seen.add(bucket)
            plan.keep.setdefault(name, []).append(label)
    plan.delete = [name for name, _ in ordered if name not in plan.keep]
    return plan


def _stale_partials(infos: list[BackupInfo], now: datetime) -> list[str]:
    """Unfinished folders last written over a day ago: a killed run's. Damaged backups (bad manifest) are left
    for the operator to look at."""
    day_ago = (now - timedelta(days=1)).timestamp()
    return [b.name for b in infos if b.unfinished and b.path.stat().st_mtime < day_ago]


def remove_stale_partials(root: Path, report: Report = _quiet, now: datetime | None = None) -> None:
    """prune's rule for unfinished folders, applied by every backup to the folder it stages in: a killed
    S3-only backup leaves a full dump there as `.<name>.partial`, and no prune of that folder may ever run."""
    if not root.is_dir():
        return
    for name in _stale_partials(list_backups(root), now or utc_now()):
        report(f"backup: removing {root / name} (left by a backup that was killed)")
        shutil.rmtree(root / name, ignore_errors=True)


def prune_backups(
    root: Path, keep_daily: int, keep_weekly: int, keep_monthly: int, dry_run: bool = False,
    now: datetime | None = None, report: Report = _quiet,
) -> PrunePlan:
    """Apply `plan_prune` to the complete backups under `root`; also remove unfinished folders older than a day."""
    if min(keep_daily, keep_weekly, keep_monthly) < 0:
        raise UsageError("Keep counts cannot be negative", hint="Use 0 or more for --keep-daily/-weekly/-monthly.")
    now = now or utc_now()
    infos = list_backups(root)
    plan = plan_prune([(b.name, b.ended_at) for b in infos if b.complete], keep_daily, keep_weekly, keep_monthly)
    plan.partial_delete = _stale_partials(infos, now)
    if not dry_run:
        for name in plan.delete + plan.partial_delete:
            report(f"prune: removing {root / name}")
            shutil.rmtree(root / name)
        plan.deleted = True
    return plan


def record_verified(folder: Path, ok: bool, detail: str) -> None:
    """verified.json beside the manifest (outside the checksummed set), written atomically."""
    tmp = folder / f".{VERIFIED}.tmp"
    tmp.write_text(json.dumps({"ok": ok, "verified_at": iso(utc_now()), "ctx_version": __version__,
                               "detail": detail}, indent=2) + "\n")
    os.replace(tmp, folder / VERIFIED)
