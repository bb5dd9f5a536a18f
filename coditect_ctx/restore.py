"""`ctx restore` and `ctx backup verify`: put a backup back, into the store or into scratch copies.

Refusals come first and change nothing: a checksum that does not match (DataError, exit 5), a schema newer
than this ctx (SchemaError, exit 4), a target that holds data without --yes (UsageError, exit 2).
PostgreSQL is restored with `pg_restore --clean --if-exists --single-transaction` (all or nothing), Chroma by
deleting and recreating each collection and upserting in batches. Rows the backup holds no vectors for are
marked not embedded, the cache generation is bumped, and the restored store is checked against the manifest.
Chroma comes back from the backup's physical snapshot when the store can use it (snapshot.py: same Chroma
version, a runtime that can swap its folder), else from the portable export. `verify` always test-restores the
portable export, into scratch collections. The kinds' tables and collections come from kinds.py.

An encrypted backup (backup.py, crypt.py) needs an identity (exit 2 without one, or with one that opens none of
its recipients: the backup is fine, the key is wrong). Its encrypted files' checksums are checked, then each is
decrypted into a staging folder under $CTX_HOME with its clear checksum checked, and restore and verify read
from there; `verify` without an identity checks the encrypted files' checksums only.
"""

from __future__ import annotations

import json
import secrets
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

from .backup import (
    DUMP_FILE, Progress, Report, _no_progress, _quiet, check_contents, check_files, decrypt_backup, encryption_of,
    identities_for, load_manifest, read_vectors, record_verified, staging_folder,
)
from .config import Settings
from .errors import CtxError, DataError, SchemaError, ServiceError, UsageError
from .kinds import COLLECTIONS, TABLES
from .points import reach
from .repos import local_copy, resolve_ref
from .stores import Store
from .stores.s3 import is_s3_url
from .stores import postgres as pg
from .stores.chroma import Chroma

UPSERT_BATCH = 1000  # <= Chroma's limit of 5000 ids; and the server refuses large bodies (HTTP 413):
UPSERT_BYTES = 8_000_000  # so a batch is also cut at about 8 MB of JSON
DATA_TABLES = (*TABLES.values(), "submodule_registry", "source_folders", "record_sources", "tags", "privacy_audit",
               "context_loads")


@dataclass
class RestoreResult:
    backup: str
    rows: dict[str, int] = field(default_factory=dict)
    vectors: dict[str, int] = field(default_factory=dict)
    marked_not_embedded: int = 0
    schema_applied: list[str] = field(default_factory=list)
    data_generation: int = 0
    checks: list[str] = field(default_factory=list)
    chroma: str = ""  # "snapshot", or "portable export (<why not the snapshot>)"
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def check_restorable(folder: Path, progress: Progress = _no_progress) -> dict:
    """Manifest, file checksums and schema version; the manifest when the backup (in clear) may be restored."""
    manifest = load_manifest(folder)
    check_files(folder, manifest, progress)
    return _check_clear(folder, manifest, progress)


@contextmanager
def opened_backup(settings: Settings, folder: Path, progress: Progress = _no_progress,
                  warn: Report = _quiet, export: bool = True) -> Iterator[tuple[Path, dict]]:
    """(the folder holding the backup's clear files, its manifest) once every check passed: the manifest, the
    stored files' checksums and, for an encrypted backup, the identity, then every file decrypted into a staging
    folder with its clear checksum; then contents (the portable export read to its end, unless not `export`: a
    restore from the Chroma snapshot does not read it) and schema version. The staging folder goes when the block
    ends."""
    manifest = load_manifest(folder)
    identities = identities_for(settings, folder, manifest, warn)  # before the long checks: a missing key says so now
    check_files(folder, manifest, progress)
    if identities is None:
        yield folder, _check_clear(folder, manifest, progress, export)
        return
    with staging_folder(settings) as staging:
        decrypt_backup(folder, manifest, staging, identities, progress)
        yield staging, _check_clear(staging, manifest, progress, export)


def _check_clear(folder: Path, manifest: dict, progress: Progress, export: bool = True) -> dict:
    """Contents (every vector parses; with `export`) and schema version of a backup whose files are in clear in
    `folder`."""
    if export:
        check_contents(folder, manifest, progress)
    latest = pg.latest_version()
    if int(manifest.get("schema_version") or 0) > latest:
        raise SchemaError(
            f"The backup has schema version {manifest['schema_version']}, newer than this ctx knows ({latest})",
            hint="Upgrade ctx (pip install -U coditect-ctx), then restore.",
        )
    return manifest


def target_holds_data(store: Store) -> list[str]:
    """What in the target store would be overwritten ('messages: 12 rows', 'sessions_embeddings: 40 vectors')."""
    held: list[str] = []
    with store.pg() as conn:
        if pg.schema_version(conn):
            counts = pg.table_counts(conn)
            held += [f"{t}: {counts[t]} rows" for t in DATA_TABLES if counts.get(t)]
    existing = {c["name"] for c in store.chroma.list_collections()}
    for name in COLLECTIONS.values():
        if name in existing and (n := store.chroma.count(name)):
            held.append(f"{name}: {n} vectors")
    return held


def restore_backup(
    settings: Settings, ref: str | Path, yes: bool = False, report: Report = _quiet, progress: Progress = _no_progress,
    wait: float = 0.0, warn: Report = _quiet, portable: bool = False,
) -> RestoreResult:
    """Replace the store's PostgreSQL data and Chroma collections with a backup's, then check the result.

    Chroma comes back from the backup's physical snapshot when this store can use it (snapshot.py), else (and
    with `portable`) from the portable export. Everything from the first look at the target to the final check
    holds the store's writer lock (an advisory lock: `pg_restore --clean` recreating the tables leaves it held).
    `ref` in object storage (s3://.../NAME) is downloaded to a staging folder first (repos.local_copy), checked and
    restored from there like a local one."""
    from . import snapshot

    start = time.monotonic()
    ref = resolve_ref(settings, ref)  # a name `ctx backup list` showed, in whichever repository holds it
    # a backup in object storage that this identity cannot open is refused before it is downloaded
    with local_copy(settings, ref, report, progress, lambda m, url: identities_for(settings, url, m)) as folder:
        manifest = load_manifest(folder)
        with Store(settings) as store, store.writer_lock("restore", wait=wait, report=report):
            snapshot.recover(store, report)  # a restore killed mid-swap left Chroma stopped: mend that first
            why_not = snapshot.usable(store, manifest, portable)
            with opened_backup(settings, folder, progress, warn, export=bool(why_not)) as (source, manifest):
                result = _restore(settings, store, folder, source, manifest, yes, report, progress, why_not)
    if is_s3_url(ref):
        result.backup = str(ref)
    result.seconds = round(time.monotonic() - start, 3)
    return result


def _restore(settings: Settings, store: Store, folder: Path, source: Path, manifest: dict, yes: bool,
             report: Report, progress: Progress, why_not: str) -> RestoreResult:
    """The restore proper, under the writer lock; Chroma from the snapshot unless `why_not` says why not."""
    from . import snapshot

    result = RestoreResult(backup=str(folder), chroma=f"portable export ({why_not})" if why_not else "snapshot")
    report(f"chroma: restoring from the {result.chroma}")
    held = target_holds_data(store)
    generation_before = _generation(store)
    if held and not yes:
        raise UsageError(
            f"The store holds data that restore would replace ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''})",
            hint="Take a backup of it first (`ctx backup`), then run `ctx restore BACKUP --yes`.",
        )
    incoming = None if why_not else snapshot.unpack(store, source, manifest)
    report("postgres: pg_restore --clean --if-exists --single-transaction")
    restore_postgres(store, source, dbname=None)
    result.schema_applied = pg.migrate_schema(store.pg_url)  # a backup of an older ctx gets the newer schema
    with store.pg() as conn:
        marked = mark_not_embedded(conn, manifest)
        result.marked_not_embedded = sum(map(len, marked.values()))
        # past both the backup's and the replaced store's generation: no cached answer of either is reachable
        conn.execute("UPDATE db_metadata SET data_generation = greatest(data_generation, %s) WHERE id = 1",
                     (generation_before,))
        result.data_generation = pg.bump_generation(conn)
        conn.commit()
    if incoming is None:
        report("chroma: reloading the portable export")
        restore_chroma(store.chroma, source, manifest, prefix="", progress=progress)
    else:
        snapshot.swap_in(store, incoming, report)
        drop_vectors(store.chroma, marked)  # as the portable export would: no vectors for those rows
    report("checking the restored store (counts, ctx validate)")
    with store.pg() as conn:
        problems = compare_with_manifest(conn, store.chroma, manifest, prefix="")
        result.rows = pg.table_counts(conn)
    result.vectors = {name: store.chroma.count(name) for name in COLLECTIONS.values()}
    if problems:
        raise DataError("The restored store does not match the backup: " + "; ".join(problems),
                        hint="Run `ctx backup verify` on the backup; restore another one if it fails.")
    result.checks.append("counts match the manifest")
    result.checks += run_validate_hook(settings)
    return result


def _generation(store: Store) -> int:
    with store.pg() as conn:
        return pg.data_generation(conn) if pg.schema_version(conn) else 0


def restore_postgres(store: Store, folder: Path, dbname: str | None) -> None:
    """pg_restore into the store's database (dbname None) or a scratch one; one transaction, stops at an error."""
    args = ["--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error"]
    try:
        store.runtime.run_pg_tool("pg_restore", args, dbname=dbname or store.settings.pg_db, input_file=folder / DUMP_FILE)
    except ServiceError as exc:
        if "input file" not in exc.message:  # pg_restore's words for an archive it cannot read (cut, not a dump)
            raise
        raise DataError(f"{folder / DUMP_FILE}: pg_restore cannot read it ({exc.message.rsplit('error: ', 1)[-1]})",
                        hint="The backup is damaged (nothing was replaced: pg_restore runs in one transaction); "
                             "use another one (`ctx backup list`).") from exc


def mark_not_embedded(conn, manifest: dict) -> dict[str, list[str]]:
    """Rows whose vectors the backup does not hold become 'not embedded', so repair embeds them again; their
    ids per kind.

    Those are the rows the manifest lists, and rows whose vectors were already stale when it was taken.
    The updated_at trigger is switched off for this: the rows' content did not change.
    """
    marked: dict[str, list[str]] = {}
    listed = manifest.get("chroma", {}).get("not_embedded", {})
    for kind, table in TABLES.items():
        ids = listed.get(kind) or []
        conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        cur = conn.execute(
            f"UPDATE {table} SET embedded_sha256 = NULL, embedded_chunks = 0"
            " WHERE (id = ANY(%s::uuid[]) OR embedded_sha256 IS DISTINCT FROM content_sha256)"
            " AND (embedded_sha256 IS NOT NULL OR embedded_chunks <> 0) RETURNING id::text",
            (ids,),
        )
        marked[kind] = [row[0] for row in cur]
        conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    return marked


def drop_vectors(chroma: Chroma, rows: dict[str, list[str]]) -> None:
    """Delete every vector of the given rows (ids per kind), whatever their chunk count."""
    for kind, ids in rows.items():
        for start in range(0, len(ids), 1000):
            chroma.delete(COLLECTIONS[kind], where={"record_id": {"$in": ids[start:start + 1000]}})


def restore_chroma(chroma: Chroma, folder: Path, manifest: dict, prefix: str, progress: Progress = _no_progress) -> None:
    """Delete and recreate every ctx collection (named with `prefix`), then upsert the backup's vectors."""
    collections = manifest["chroma"]["collections"]
    total = sum(c["vectors"] for c in collections.values())
    done = 0
    for name in COLLECTIONS.values():
        target = prefix + name
        chroma.delete_collection(target)
        chroma.ensure_collection(target)
        if name not in collections:
            continue
        batch: list[tuple] = []
        size = 0
        for item in read_vectors(folder / collections[name]["file"]):
            batch.append(item)
            size += len(item[1] or "") * 2 + len(json.dumps(item[2])) + 22 * len(item[3])
            if len(batch) >= UPSERT_BATCH or size >= UPSERT_BYTES:
                _upsert(chroma, target, batch)
                done += len(batch)
                progress("restoring vectors", done, total)
                batch, size = [], 0
        if batch:
            _upsert(chroma, target, batch)
            done += len(batch)
            progress("restoring vectors", done, total)
        reach("restore-load")


def _upsert(chroma: Chroma, name: str, batch: list[tuple]) -> None:
    ids, docs, metas, embs = zip(*batch)
    documents = list(docs) if any(d is not None for d in docs) else None
    if documents is not None:
        documents = [d if d is not None else "" for d in documents]
    chroma.upsert(name, list(ids), list(embs), [m or None for m in metas], documents)


def compare_with_manifest(conn, chroma: Chroma, manifest: dict, prefix: str) -> list[str]:
    """Row counts per table and vector counts per collection against the manifest; problems as text."""
    problems: list[str] = []
    counts = pg.table_counts(conn)
    for table, expected in (manifest.get("postgres", {}).get("rows") or {}).items():
        if counts.get(table) != expected:
            problems.append(f"{table}: {counts.get(table)} rows, backup has {expected}")
    for name, meta in manifest["chroma"]["collections"].items():
        got = chroma.count(prefix + name)
        if got != meta["vectors"]:
            problems.append(f"{name}: {got} vectors, backup has {meta['vectors']}")
    for kind, table in TABLES.items():
        embedded = conn.execute(
            f"SELECT coalesce(sum(embedded_chunks), 0) FROM {table} WHERE embedded_sha256 = content_sha256"
        ).fetchone()[0]
        got = chroma.count(prefix + COLLECTIONS[kind])
        if int(embedded) != got:
            problems.append(f"{table}: {embedded} chunks marked embedded, {COLLECTIONS[kind]} holds {got} vectors")
    return problems


def run_validate_hook(settings: Settings) -> list[str]:
    """The checks `ctx validate` runs (PostgreSQL against Chroma and links; not the source files, which the
    machine restored to may not have). Rows restore marked not embedded are expected, not a failure: they are
    named in the result for `ctx validate --repair`. Anything else raises DataError.

    Returns what was checked.
    """
    from .validate import run_validate

    report = run_validate(settings, repair=False, files=False)
    failures = list(report.problems)
    pending = 0
    for row in report.rows:
        pending += row.not_embedded
        bad = {k: v for k, v in vars(row).items()
               if k in ("orphan_vectors", "wrong_vector_count", "stale_vectors") and v}
        if bad:
            failures.append(f"{row.source}/{row.kind}: " + ", ".join(f"{k}={v}" for k, v in bad.items()))
    if failures:
        raise DataError("The restored store fails validation: " + "; ".join(failures),
                        hint="Run `ctx validate` for details and `ctx validate --repair` to mend it.")
    checks = ["ctx validate (PostgreSQL vs Chroma, links)"]
    if pending:
        checks.append(f"{pending} rows await re-embedding (`ctx validate --repair`)")
    return checks


# -- verify: a test restore into scratch copies ------------------------------------------------------------
@dataclass
class VerifyResult:
    backup: str
    ok: bool
    detail: str
    scratch_database: str
    scratch_prefix: str
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def verify_backup(
    settings: Settings, ref: str | Path, report: Report = _quiet, progress: Progress = _no_progress,
    warn: Report = _quiet, test_restore: bool = False,
) -> VerifyResult:
    """Restore into CREATE DATABASE ctx_verify_<random> and collections verify_<random>_*, compare with the
    manifest, always drop the scratch copies, and record the outcome in verified.json. Raises when it fails.

    An encrypted backup with no identity given gets its encrypted files' checksums checked, no test restore
    (and no verified.json unless it fails: `backup list`'s "verified" means test-restored). A backup in object
    storage is downloaded to a staging folder first; its verified.json goes back beside it. `test_restore`
    (`--restore`): an encrypted backup without the identity is refused (exit 2, before any download) instead."""
    start = time.monotonic()
    ref = resolve_ref(settings, ref)
    check = (lambda m, url: identities_for(settings, url, m)) if test_restore else None
    with local_copy(settings, ref, report, progress, check) as folder:
        result = _verify_folder(settings, folder, report, progress, warn, start, test_restore)
    return replace(result, backup=str(ref)) if is_s3_url(ref) else result


def _verify_folder(settings: Settings, folder: Path, report: Report, progress: Progress, warn: Report,
                   start: float, test_restore: bool = False) -> VerifyResult:
    token = secrets.token_hex(4)
    scratch_db, prefix = f"ctx_verify_{token}", f"verify_{token}_"
    try:
        manifest = load_manifest(folder)
        if encryption_of(manifest) and not settings.backup_identity and not test_restore:
            check_files(folder, manifest, progress)
            detail = (f"encrypted backup: the {len(manifest['files'])} encrypted files match their checksums; not "
                      "test-restored (that needs the identity: --identity FILE)")
            return VerifyResult(str(folder), True, detail, "", "", round(time.monotonic() - start, 3))
        with opened_backup(settings, folder, progress, warn) as (source, manifest), Store(settings) as store:
            created = False
            try:
                with store.pg(autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{scratch_db}"')
                    created = True
                report(f"verify: restoring into database {scratch_db} and collections {prefix}*")
                restore_postgres(store, source, dbname=scratch_db)
                with pg.connect(_url_for_db(store.pg_url, scratch_db)) as conn:
                    mark_not_embedded(conn, manifest)
                    conn.commit()
                    restore_chroma(store.chroma, source, manifest, prefix, progress)
                    problems = compare_with_manifest(conn, store.chroma, manifest, prefix)
            finally:
                _drop_scratch(store, scratch_db if created else None, prefix)
        if problems:
            raise DataError("Test restore does not match the manifest: " + "; ".join(problems),
                            hint="Do not rely on this backup; take a new one (`ctx backup`).")
    except CtxError as exc:
        if (folder / "manifest.json").exists() and not isinstance(exc, UsageError):  # a wrong key is not the backup's fault
            record_verified(folder, False, exc.message)
        raise
    detail = f"restored into scratch copies; {len(manifest['files'])} checksums and all counts match"
    record_verified(folder, True, detail)
    return VerifyResult(str(folder), True, detail, scratch_db, prefix, round(time.monotonic() - start, 3))


def _url_for_db(url: str, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(url, dbname=dbname)


def _drop_scratch(store: Store, scratch_db: str | None, prefix: str) -> None:
    for name in COLLECTIONS.values():
        try:
            store.chroma.delete_collection(prefix + name)
        except CtxError:
            pass
    if scratch_db:
        with store.pg(autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{scratch_db}" WITH (FORCE)')
