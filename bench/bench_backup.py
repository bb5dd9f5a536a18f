"""Backup and restore time at 100,000 records, beside the bare reads they cannot beat, measured in the same run.

Run: .venv/bin/python bench/bench_backup.py [--records 100000] [--keep]
     CTX_HOME=... (with CTX_PG_PORT, CTX_CHROMA_PORT, CTX_REDIS_PORT) uses an existing local store as it is.
A fresh store (temporary CTX_HOME, free ports, local runtime) gets the demo sample migrated without the model, then
synthetic messages with random unit vectors until it holds --records records (bench_search's grow). Then, in order:

  bare pg_dump -Fc           the database alone, nothing else
  bare Chroma read           every vector (ids, embeddings, metadata, documents), pages of 500, one client
  baseline                   the two added: what `ctx backup` is held to (at most 1.5 x)
  ctx backup                 local: Chroma snapshot (Chroma stopped for a file copy) + portable export + manifest
  ctx backup --portable      the portable export only
  ctx backup, encrypted      CTX_BACKUP_RECIPIENTS: every file through age (pyrage)
  ctx backup --to s3://      to moto's S3 server on 127.0.0.1 (staged locally, then uploaded in multipart parts)
  ctx restore                from the snapshot (the fast path; 100,000 vectors are held to 2 minutes)
  ctx restore --portable     re-upserting the portable export into Chroma
  ctx restore, encrypted     --identity: decrypted into a staging folder, then the fast path
  ctx restore s3://...       downloaded into a staging folder, then the fast path
Each with its ratio to the baseline, then where each restore's time goes (from its progress lines) and what the
portable reload costs on the client (decoding the export, encoding the JSON bodies) against the server's ingest.
Figures only, no pass/fail: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from bench_search import grow, record_count  # noqa: E402

from coditect_ctx.config import ensure_secrets, load_settings  # noqa: E402

SAMPLE = REPO / "coditect_ctx" / "samples" / "coditect-demo"
READ_PAGE = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_store(prefix: str = "ctx-bench-backup-", setup: bool = True, **extra):
    """Settings of a new local store in a temporary CTX_HOME on free ports; started unless not `setup`."""
    from coditect_ctx import stack

    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    settings = ensure_secrets(load_settings(home=str(home), runtime="local", pg_port=free_port(),
                                            chroma_port=free_port(), redis_port=free_port(), **extra))
    if setup:
        stack.setup(settings, prepare_model=False, report=lambda m: print(f"  setup: {m}", file=sys.stderr))
    return settings


def remove_store(settings) -> None:
    """Stop a bench store's services and delete its home."""
    from coditect_ctx import stack

    try:
        stack.down(settings, volumes=True)
    finally:
        shutil.rmtree(settings.home, ignore_errors=True)


def mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


class Timeline:
    """A job's report lines with the time each came, for a breakdown into phases."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.events: list[tuple[float, str]] = []

    def __call__(self, msg: str) -> None:
        self.events.append((time.perf_counter() - self.start, msg))

    def at(self, prefix: str) -> float | None:
        return next((t for t, m in self.events if m.startswith(prefix)), None)

    def phases(self, marks: list[tuple[str, str]], end: float) -> list[tuple[str, float]]:
        """(name, seconds) from each mark (a message prefix) that occurred to the next, in time order; the time
        before the first is the checks'."""
        found = sorted(((t, name) for name, prefix in marks if (t := self.at(prefix)) is not None))
        out = [("checks before (manifest, checksums, decrypt, export read)", found[0][0] if found else end)]
        for (t, name), nxt in zip(found, [*(t for t, _ in found[1:]), end]):
            out.append((name, nxt - t))
        return out


def start_moto(home: Path) -> tuple[object, str]:
    """moto's S3 server on a free port of 127.0.0.1 with a bucket `bench`; (its process, its endpoint). Keys are
    any (moto checks none unless told to); they reach boto3 through the AWS environment variables."""
    import subprocess

    import boto3

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(home / "moto.log", "w"))
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"})
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("moto's S3 server did not start")
            time.sleep(0.1)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    return proc, endpoint


def bare_chroma_read(store) -> tuple[float, int]:
    from coditect_ctx.kinds import COLLECTIONS

    t = time.perf_counter()
    n = 0
    for name in COLLECTIONS.values():
        if store.chroma.has_collection(name):
            for page in store.chroma.iter_all(name, include=("metadatas", "documents", "embeddings"), page=READ_PAGE):
                n += len(page["ids"])
    return time.perf_counter() - t, n


def client_costs(folder: Path, manifest: dict) -> tuple[float, float, int]:
    """Seconds to decode the portable export (read_vectors) and to encode it as upsert bodies (JSON), vectors."""
    from coditect_ctx.backup import read_vectors

    decode = encode = 0.0
    n = 0
    for meta in manifest["chroma"]["collections"].values():
        t = time.perf_counter()
        items = list(read_vectors(folder / meta["file"]))
        decode += time.perf_counter() - t
        t = time.perf_counter()
        for start in range(0, len(items), 1000):
            ids, docs, metas, embs = zip(*items[start:start + 1000])
            json.dumps({"ids": ids, "embeddings": embs, "metadatas": metas, "documents": docs}).encode()
        encode += time.perf_counter() - t
        n += len(items)
    return decode, encode, n


RESTORE_MARKS = [
    ("download from S3, then the checks", "download:"),
    ("look at the target; unpack the snapshot (fast path)", "chroma: restoring from"),
    ("pg_restore, schema, marks", "postgres: pg_restore"),
    ("Chroma: reload the export", "chroma: reloading"),
    ("Chroma: stop, swap folders, start", "chroma: stopped"),
    ("counts + ctx validate", "checking the restored store"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--keep", action="store_true", help="leave the store and backups behind")
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"

    from pyrage import x25519

    from coditect_ctx.backup import create_backup
    from coditect_ctx.migrate import run_migrate
    from coditect_ctx.repos import backup_to
    from coditect_ctx.restore import restore_backup
    from coditect_ctx.stores import Store

    given = "CTX_HOME" in os.environ
    settings = load_settings() if given else fresh_store()
    print(f"store: {settings.home}")
    rows: list[tuple[str, float, str]] = []
    moto = None
    breakdowns: list[tuple[str, list[tuple[str, float]]]] = []
    try:
        if not given:
            run_migrate(settings, [SAMPLE], embed=False)
        t = time.perf_counter()
        grow(settings, args.records)
        with Store(settings) as store:
            with store.pg() as conn:
                records = record_count(conn)
            print(f"records: {records} (grown in {time.perf_counter() - t:.0f} s)")

            bare = settings.home / "bare.dump"
            t = time.perf_counter()
            store.runtime.run_pg_tool("pg_dump", ["-Fc"], output=bare)
            dump_s = time.perf_counter() - t
            rows.append(("bare pg_dump -Fc", dump_s, mb(bare.stat().st_size)))
            bare.unlink()
            read_s, vectors = bare_chroma_read(store)
            rows.append((f"bare Chroma read ({vectors} vectors)", read_s, ""))
        baseline = dump_s + read_s
        rows.append(("baseline (pg_dump + Chroma read)", baseline, ""))

        def backup(label: str, s, to: list[str] | None = None, **kw):
            timeline = Timeline()
            t = time.perf_counter()
            made = backup_to(s, to, report=timeline, **kw).backup if to else create_backup(s, report=timeline, **kw)
            rows.append((label, time.perf_counter() - t, mb(made.size_bytes)))
            snap = made.manifest["chroma"].get("snapshot")
            if snap:
                size = next(m["bytes"] for rel, m in made.manifest["files"].items() if rel.startswith("chroma-snapshot"))
                rows.append(("  of which Chroma stopped", snap["chroma_stopped_seconds"], f"snapshot {mb(size)}"))
            return made

        def restore(label: str, s, ref, **kw):
            timeline = Timeline()
            t = time.perf_counter()
            done = restore_backup(s, ref, yes=True, report=timeline, **kw)
            seconds = time.perf_counter() - t
            rows.append((label, seconds, f"Chroma from the {done.chroma.split(' (')[0]}"))
            breakdowns.append((label, timeline.phases(RESTORE_MARKS, seconds)))
            return done

        local = backup("ctx backup (local, snapshot + export)", settings)
        portable = backup("ctx backup --portable", settings, portable=True)
        identity = x25519.Identity.generate()
        key = settings.home / "bench-age-key.txt"
        key.write_text(str(identity) + "\n")
        key.chmod(0o600)
        encrypted_settings = dataclasses.replace(settings, backup_recipients=str(identity.to_public()),
                                                 backup_identity=str(key))
        encrypted = backup("ctx backup, encrypted (age)", encrypted_settings)
        moto, endpoint = start_moto(settings.home)
        s3_settings = dataclasses.replace(settings, s3_endpoint_url=endpoint)
        remote = backup("ctx backup --to s3:// (moto)", s3_settings, to=["s3://bench/ctx"])

        restore("ctx restore (snapshot)", settings, local.path)
        restore("ctx restore --portable", settings, local.path, portable=True)
        restore("ctx restore, encrypted (snapshot)", encrypted_settings, encrypted.path)
        restore("ctx restore s3://... (snapshot)", s3_settings, f"s3://bench/ctx/{remote.name}")
        decode, encode, n = client_costs(local.path, local.manifest)

        print()
        print(f"{'':44}{'seconds':>9}{'x baseline':>12}  notes")
        for label, seconds, note in rows:
            ratio = f"{seconds / baseline:12.2f}" if not label.startswith(("bare", "baseline", "  ")) else " " * 12
            print(f"{label:44}{seconds:9.1f}{ratio}  {note}")
        for label, phases in breakdowns:
            print(f"\n{label}: where the time goes")
            for name, seconds in phases:
                print(f"  {name:58}{seconds:7.1f} s")
        portable_load = dict(next(p for label, p in breakdowns if label == "ctx restore --portable"))
        load = portable_load.get("Chroma: reload the export", 0.0)
        print(f"\nportable reload of {n} vectors, {load:.1f} s: client decodes the export in {decode:.1f} s and encodes"
              f" the JSON bodies in {encode:.1f} s (measured apart); the rest, {max(load - decode - encode, 0):.1f} s,"
              " is HTTP and Chroma's ingest (server: parse, write log, HNSW insert)")
        print(f"(portable export {mb(sum(m['bytes'] for r, m in portable.manifest['files'].items() if r.startswith('chroma/')))})")
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait()
        if not args.keep and not given:
            remove_store(settings)


if __name__ == "__main__":
    main()
