"""Backup and restore time and size at 100,000 records, beside a bare `pg_dump -Fc` of the same database.

Run: .venv/bin/python bench/bench_backup.py [--records 100000] [--source PATH ...] [--embed] [--keep]
A store of its own is started in a temporary CTX_HOME (free ports), the corpus is migrated into it (without
embedding unless --embed: the model would dominate the run), then synthetic messages are added with
INSERT ... SELECT generate_series until the store holds --records records; every row not embedded then
gets a random 384-dim unit vector in Chroma (a stand-in for the model). Prints figures only (no pass/fail):
the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
sys.path.insert(0, str(REPO))

from coditect_ctx.config import ensure_secrets, load_settings  # noqa: E402
from coditect_ctx.stores.chroma import COLLECTIONS, vector_id, vector_metadata  # noqa: E402

EMBEDDED = ("sessions", "checkpoints", "patterns", "messages")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mb(n: int) -> str:
    return f"{n / 1e6:8.1f} MB"


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def remove_store(settings, home: Path) -> None:
    """Stop a bench store's services and delete its home."""
    from coditect_ctx import stack

    try:
        stack.down(settings, volumes=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def record_count(store) -> int:
    with store.pg() as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in EMBEDDED)


def grow(store, records: int) -> int:
    """Synthetic messages (INSERT ... SELECT generate_series) until the store holds `records` records."""
    missing = records - record_count(store)
    if missing <= 0:
        return 0
    with store.pg() as conn:
        sub = conn.execute(
            "INSERT INTO submodule_registry (name) VALUES ('bench-synthetic') "
            "ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id").fetchone()[0]
        conn.execute(
            """INSERT INTO messages (identity, submodule_id, role, content, content_sha256, first_seen)
               SELECT 'bench-' || g, %s, CASE WHEN g %% 2 = 0 THEN 'user' ELSE 'assistant' END, t.body,
                      encode(sha256(convert_to(t.body, 'UTF8')), 'hex'), now() - g * interval '1 minute'
               FROM generate_series(1, %s) g,
                    LATERAL (SELECT 'synthetic message ' || g || ': the redis cache eviction fix, checkpoint '
                                    || (g %% 97) || ', sprint ' || (g %% 13) || ', ' || md5(g::text) AS body) t""",
            (sub, missing),
        )
        conn.commit()
    return missing


def random_vectors_for_unembedded(store, seed: int = 7) -> int:
    """One random unit vector per row not embedded yet (stands in for the model), then mark the row embedded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    kinds = {"sessions": "session", "checkpoints": "checkpoint", "patterns": "pattern", "messages": "message"}
    done = 0
    with store.pg() as conn:
        for table, kind in kinds.items():
            rows = conn.execute(
                f"SELECT id::text, content_sha256 FROM {table} WHERE embedded_sha256 IS DISTINCT FROM content_sha256"
            ).fetchall()
            name = COLLECTIONS[kind]
            store.chroma.ensure_collection(name)
            for start in range(0, len(rows), 1000):
                part = rows[start:start + 1000]
                vecs = rng.normal(size=(len(part), 384)).astype("float32")
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                metas = [vector_metadata(record_type=kind, record_id=rid, chunk=0, submodule="bench", title=kind,
                                         timestamp=None, privacy_level="TEAM", tags=[], content_sha256=sha)
                         for rid, sha in part]
                store.chroma.upsert(name, [vector_id(rid, 0) for rid, _ in part], vecs.tolist(), metas)
                conn.execute(f"UPDATE {table} SET embedded_sha256 = content_sha256, embedded_chunks = 1"
                             " WHERE id = ANY(%s::uuid[])", ([rid for rid, _ in part],))
                conn.commit()
                done += len(part)
                print(f"  random vectors upserted: {done}", end="\r", flush=True)
    print()
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--source", type=Path, action="append", help="MEMORY-CONTEXT folders to migrate (default: the corpus)")
    ap.add_argument("--embed", action="store_true", help="embed the migrated corpus with the real model (slow)")
    ap.add_argument("--keep", action="store_true", help="leave the store and backups behind")
    args = ap.parse_args()

    from coditect_ctx import stack
    from coditect_ctx.backup import create_backup
    from coditect_ctx.restore import restore_backup
    from coditect_ctx.stores import Store

    home = Path(tempfile.mkdtemp(prefix="ctx-bench-", dir="/tmp"))
    settings = ensure_secrets(load_settings(home=str(home), runtime="local", pg_port=free_port(),
                                            chroma_port=free_port(), redis_port=free_port()))
    print(f"store: {home}")
    try:
        stack.setup(settings, prepare_model=args.embed)
        sources = args.source or ([CORPUS] if CORPUS.is_dir() else [REPO / "coditect_ctx" / "samples" / "coditect-demo"])
        t = time.perf_counter()
        try:
            from coditect_ctx.migrate import run_migrate

            report = run_migrate(settings, sources, embed=args.embed)
            print(f"migrated {', '.join(map(str, sources))} in {time.perf_counter() - t:.1f} s"
                  f" (embedded vectors: {report.embedded_vectors})")
        except ImportError:
            print("coditect_ctx.migrate not available: synthetic records only")
        with Store(settings) as store:
            real = record_count(store)
            t = time.perf_counter()
            added = grow(store, args.records)
            faked = random_vectors_for_unembedded(store)
            print(f"records: {real} migrated + {added} synthetic = {record_count(store)};"
                  f" {faked} random unit vectors (synthetic rows + vectors in {time.perf_counter() - t:.1f} s)")
            with store.pg() as conn:
                db_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            vectors = sum(store.chroma.count(n) for n in COLLECTIONS.values())
            print(f"database size {mb(db_size)}, {vectors} vectors in Chroma")

            bare = home / "bare.dump"
            t = time.perf_counter()
            store.runtime.run_pg_tool("pg_dump", ["-Fc"], output=bare)
            bare_s = time.perf_counter() - t

        t = time.perf_counter()
        made = create_backup(settings)
        backup_s = time.perf_counter() - t
        files = made.manifest["files"]
        chroma_bytes = sum(f["bytes"] for rel, f in files.items() if rel.startswith("chroma/"))

        t = time.perf_counter()
        restored = restore_backup(settings, made.path, yes=True)
        restore_s = time.perf_counter() - t

        print()
        print(f"{'':32}{'seconds':>10}{'size':>14}")
        print(f"{'bare pg_dump -Fc':32}{bare_s:10.1f}{mb(bare.stat().st_size):>14}")
        print(f"{'ctx backup (total)':32}{backup_s:10.1f}{mb(made.size_bytes):>14}")
        print(f"{'  of which postgres.dump':32}{'':10}{mb(files['postgres.dump']['bytes']):>14}")
        print(f"{'  of which chroma/*.jsonl.gz':32}{'':10}{mb(chroma_bytes):>14}")
        print(f"{'ctx restore (total, checks)':32}{restore_s:10.1f}")
        print(f"restored: {sum(restored.rows.values())} rows, {sum(restored.vectors.values())} vectors;"
              f" checks: {', '.join(restored.checks)}")
    finally:
        if not args.keep:
            remove_store(settings, home)


if __name__ == "__main__":
    main()
