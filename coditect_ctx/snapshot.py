"""Physical snapshots of Chroma's folder: restore puts 100,000 vectors back in seconds instead of re-ingesting them.

A backup carries `chroma-snapshot.tar` (Chroma's whole persistent folder, as files) beside the portable export when
  - the runtime can stop Chroma and read its folder (local; see Runtime.chroma_folder), and
  - the store's writer lock is free: backup holds it from PostgreSQL's exported snapshot until Chroma runs again,
    so no migrate, repair or restore writes between the two. When a writer holds it, the backup takes the portable
    export only (it never waits, never copies a store being written), and says so;
  - `ctx backup --portable` was not given.
Chroma is stopped (SIGTERM: it shuts down cleanly, its files at rest) for the time the folder takes to copy, then
started again; searches in that window fail. The manifest records the file (checksummed like every other) and
the server version that wrote it.

Restore uses the snapshot only when the target's runtime can swap Chroma's folder and its Chroma reports the same
version as the one that wrote it; otherwise, and with `ctx restore --portable`, it reloads the portable export. The
archive (tar, zstd-compressed) is unpacked beside the live folder first (a damaged one fails before anything is replaced), then Chroma is
stopped, the folders swapped by rename and Chroma started again.

Owns the snapshot file, its manifest entry and the folder swap; the runtime owns stopping and starting Chroma.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from .errors import DataError, ServiceError, StoreBusyError
from .points import reach
from .stores import Store

SNAPSHOT_FILE = "chroma-snapshot.tar.zst"
ZSTD_LEVEL = 3  # 100,000 vectors: 281 MB of files -> 188 MB in ~2 s (gzip -1: 192 MB in 17 s; level 1: 189 MB)
INCOMING = ".incoming"  # suffix beside the live folder: the snapshot unpacked, before the swap
REPLACED = ".replaced"  # suffix beside the live folder: the folder the swap moved aside (removed after)
COPYING = ".snapshot.tar"  # suffix beside the live folder: backup's plain copy, before it is compressed

Report = Callable[[str], None]


# -- taking one --------------------------------------------------------------------------------------------
def hold_for_snapshot(store: Store, stack: ExitStack, report: Report) -> str:
    """Take the writer lock on `stack` when a snapshot can be taken; '' then, else why not (the backup goes on
    with the portable export only)."""
    if store.runtime.chroma_folder() is None:
        return f"the {store.runtime.name} runtime cannot stop Chroma to copy its files"
    try:
        stack.enter_context(store.writer_lock("backup", wait=0))
    except StoreBusyError as exc:
        report(f"backup: {exc.message}; taking the portable export only (no Chroma snapshot)")
        return "the store was busy: " + exc.message.split(": ", 1)[-1]
    return ""


def take_snapshot(store: Store, files, report: Report) -> dict:
    """Stop Chroma, copy its folder, start it again, then write the copy compressed as SNAPSHOT_FILE through
    `files` (backup.BackupWriter: in clear, or encrypted); the manifest entry. The caller holds the writer lock.

    The plain copy is made beside Chroma's folder (the same disk that holds Chroma's files in clear, never the
    backup folder) so Chroma is stopped only as long as a file copy takes; it is removed when compressed."""
    import zstandard

    try:
        version = store.chroma.version()
    except ServiceError:
        version = "unknown"
    store.chroma.close()
    live = store.runtime.chroma_folder()
    plain = live.with_name(live.name + COPYING)
    plain.unlink(missing_ok=True)  # what a killed backup left
    try:
        started = time.monotonic()
        with store.runtime.chroma_stopped(report) as live:
            report(f"chroma: copying {live}")
            fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(live.iterdir()):
                    tar.add(path, arcname=path.name)
        stopped = round(time.monotonic() - started, 1)
        report(f"chroma: running again after {stopped} s; compressing {SNAPSHOT_FILE}")
        with files.path(SNAPSHOT_FILE) as target, open(plain, "rb") as src, open(target, "wb") as out:
            zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1).copy_stream(src, out)
    finally:
        plain.unlink(missing_ok=True)
    return {"file": SNAPSHOT_FILE, "format": "tar+zstd", "server_version": version, "runtime": store.runtime.name,
            "chroma_stopped_seconds": stopped}


# -- restoring one -----------------------------------------------------------------------------------------
def usable(store: Store, manifest: dict, portable: bool) -> str:
    """'' when restore may use the backup's snapshot on this store, else why it reloads the portable export."""
    snap = (manifest.get("chroma") or {}).get("snapshot")
    if portable:
        return "--portable"
    if not snap:
        return "the backup has no Chroma snapshot"
    if store.runtime.chroma_folder() is None:
        return f"the {store.runtime.name} runtime cannot replace Chroma's files"
    have = store.chroma.version()
    if have != snap.get("server_version"):
        return f"the snapshot was written by Chroma {snap.get('server_version')}, this store runs {have}"
    return ""


def unpack(store: Store, folder: Path, manifest: dict) -> Path:
    """Unpack the snapshot (from `folder`, which holds the backup's files in clear) beside Chroma's live folder (Chroma keeps running); the unpacked folder. DataError, with
    nothing replaced, when the archive does not read to its end, holds anything but files and folders below its
    root, or holds no Chroma database."""
    import zstandard

    live = store.runtime.chroma_folder()
    incoming = live.with_name(live.name + INCOMING)
    shutil.rmtree(incoming, ignore_errors=True)  # what an interrupted restore left
    incoming.mkdir(mode=0o700)
    path = folder / manifest["chroma"]["snapshot"]["file"]
    try:
        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream, \
                tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not (member.isfile() or member.isdir()):
                    raise ValueError(f"unexpected member {member.name!r}")
                tar.extract(member, incoming, filter="data")
        if not (incoming / "chroma.sqlite3").is_file():
            raise ValueError("no chroma.sqlite3 in it")
    except (OSError, EOFError, tarfile.TarError, zstandard.ZstdError, ValueError) as exc:
        shutil.rmtree(incoming, ignore_errors=True)
        raise DataError(f"{path}: not a readable Chroma snapshot ({exc})",
                        hint="The backup is damaged (nothing was replaced); restore with --portable, or use another "
                             "backup (`ctx backup list`).") from exc
    return incoming


def recover(store: Store, report: Report) -> None:
    """Mend what a restore killed mid-swap left (the caller holds the writer lock): the folder moved aside goes back
    when nothing took its place, leftovers go, and a Chroma left stopped is started again."""
    live = store.runtime.chroma_folder()
    if live is None:
        return
    replaced, incoming = live.with_name(live.name + REPLACED), live.with_name(live.name + INCOMING)
    if not (replaced.exists() or incoming.exists()):
        return
    report("chroma: an earlier restore was interrupted; putting Chroma's folder back and starting it")
    if replaced.exists() and not live.exists():
        replaced.rename(live)
    shutil.rmtree(replaced, ignore_errors=True)
    shutil.rmtree(incoming, ignore_errors=True)
    store.chroma.close()
    store.runtime.start(report)


def swap_in(store: Store, incoming: Path, report: Report) -> None:
    """Stop Chroma, put the unpacked folder in the live one's place, start Chroma. Interrupted between the two
    renames, Chroma starts on an empty folder next time; a rerun of the restore fills it."""
    store.chroma.close()
    with store.runtime.chroma_stopped(report) as live:
        replaced = live.with_name(live.name + REPLACED)
        shutil.rmtree(replaced, ignore_errors=True)
        live.rename(replaced)
        reach("restore-swap")
        incoming.rename(live)
        report("chroma: snapshot files in place")
    shutil.rmtree(replaced, ignore_errors=True)
