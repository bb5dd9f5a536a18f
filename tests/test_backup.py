"""ctx backup / restore / verify / list / prune against real PostgreSQL and Chroma servers."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from coditect_ctx import backup as bk
from coditect_ctx import snapshot as bk_snapshot
from coditect_ctx.kinds import TABLES as KIND_TABLES
from coditect_ctx.stores import Store
from coditect_ctx.stores import postgres as pg
from coditect_ctx.stores.chroma import COLLECTIONS, record_id_of, vector_id, vector_metadata

from .conftest import SAMPLES, settings_env

ANSI = re.compile(r"\x1b\[")
BOX = re.compile(r"[\u2500-\u259f]")  # box drawing and block elements: Rich panels and progress bars


# -- test data: rows inserted with SQL, vectors upserted with the metadata contract ----------------------
def _unit_vectors(n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 384)).astype("float32")
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def seed(store: Store, n: int = 30, seed_no: int = 1, prefix: str = "seed") -> None:
    """n rows per embeddable table (1-2 chunks each, vectors in Chroma), a submodule, tags, an audit row."""
    vectors: dict[str, tuple[list, list, list, list]] = {k: ([], [], [], []) for k in KIND_TABLES}
    with store.pg() as conn:
        sub = conn.execute(
            "INSERT INTO submodule_registry (name, repo_path) VALUES (%s, '/repo') "
            "ON CONFLICT (name) DO UPDATE SET repo_path = excluded.repo_path RETURNING id",
            (f"{prefix}-sub",),
        ).fetchone()[0]
        tag = conn.execute("INSERT INTO tags (name) VALUES (%s) ON CONFLICT (name) DO UPDATE SET name = excluded.name"
                           " RETURNING id", (f"{prefix}-tag",)).fetchone()[0]
        for i in range(n):
            chunks = 1 + i % 2
            for kind, table in KIND_TABLES.items():
                content = f"{prefix} {kind} {i} body text about backups and restores"
                sha = _sha(content)
                if kind == "checkpoint":
                    sql = ("INSERT INTO checkpoints (identity, ref, submodule_id, title, content, content_sha256,"
                           " embedded_sha256, embedded_chunks) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id")
                    args = (f"{prefix}-c-{i}", f"ref-{i}", sub, f"checkpoint {i}", content, sha, sha, chunks)
                elif kind == "session":
                    sql = ("INSERT INTO sessions (identity, submodule_id, title, content, content_sha256,"
                           " embedded_sha256, embedded_chunks, started_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now())"
                           " RETURNING id")
                    args = (f"{prefix}-s-{i}", sub, f"session {i}", content, sha, sha, chunks)
                elif kind == "pattern":
                    sql = ("INSERT INTO patterns (identity, submodule_id, name, content, content_sha256,"
                           " embedded_sha256, embedded_chunks) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id")
                    args = (f"{prefix}-p-{i}", sub, f"pattern {i}", content, sha, sha, chunks)
                else:
                    sql = ("INSERT INTO messages (identity, submodule_id, role, content, content_sha256,"
                           " embedded_sha256, embedded_chunks) VALUES (%s, %s, 'user', %s, %s, %s, %s) RETURNING id")
                    args = (f"{prefix}-m-{i}", sub, content, sha, sha, chunks)
                rid = str(conn.execute(sql, args).fetchone()[0])
                if kind == "session":
                    conn.execute("INSERT INTO session_tags (session_id, tag_id) VALUES (%s, %s)", (rid, tag))
                ids, embs, metas, docs = vectors[kind]
                for c in range(chunks):
                    ids.append(vector_id(rid, c))
                    metas.append(vector_metadata(record_type=kind, record_id=rid, chunk=c, submodule=f"{prefix}-sub",
                                                 title=f"{kind} {i}", timestamp=1.7e9 + i, privacy_level="TEAM",
                                                 tags=[f"{prefix}-tag"], content_sha256=sha))
                    docs.append(f"{content} (chunk {c})")
        conn.execute("INSERT INTO privacy_audit (record_type, record_identity, action, detections)"
                     " VALUES ('message', %s, 'redacted', '{\"email\": 1}')", (f"{prefix}-m-0",))
        conn.commit()
    for kind, (ids, _e, metas, docs) in vectors.items():
        store.chroma.ensure_collection(COLLECTIONS[kind])
        store.chroma.upsert(COLLECTIONS[kind], ids, _unit_vectors(len(ids), seed_no + len(kind)), metas, docs)


def pg_snapshot(store: Store) -> dict[str, list[tuple]]:
    """Every row of every data table, in a stable order (db_metadata left out: restore bumps its generation)."""
    tables = ("submodule_registry", "checkpoints", "sessions", "patterns", "messages", "tags", "session_tags",
              "pattern_tags", "privacy_audit", "context_loads", "schema_migrations")
    with store.pg() as conn:
        return {t: [tuple(map(str, r)) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2")] for t in tables}


def chroma_snapshot(store: Store, prefix: str = "") -> dict[str, dict[str, tuple]]:
    """Every vector: metadata, document and the exact float32 bytes of its embedding."""
    import numpy as np

    out = {}
    for name in COLLECTIONS.values():
        items = {}
        for page in store.chroma.iter_all(prefix + name, include=("metadatas", "documents", "embeddings")):
            for vid, meta, doc, emb in zip(page["ids"], page["metadatas"], page["documents"], page["embeddings"]):
                items[vid] = (json.dumps(meta, sort_keys=True), doc, np.asarray(emb, dtype="<f4").tobytes())
        out[name] = items
    return out


def assert_same_vectors(after: dict, before: dict) -> None:
    """Same ids, metadata and documents; embeddings equal to float32 rounding (Chroma may renormalise on upsert)."""
    import numpy as np

    assert {n: sorted(v) for n, v in after.items()} == {n: sorted(v) for n, v in before.items()}
    for name, items in before.items():
        for vid, (meta, doc, emb) in items.items():
            meta2, doc2, emb2 = after[name][vid]
            assert (meta2, doc2) == (meta, doc), vid
            assert np.allclose(np.frombuffer(emb2, "<f4"), np.frombuffer(emb, "<f4"), rtol=0, atol=1e-6), vid


def consistency_problems(store: Store) -> list[str]:
    """What validate checks between the stores: embedded rows have every chunk with their hash; no stray vectors."""
    problems = []
    with store.pg() as conn:
        for kind, table in KIND_TABLES.items():
            rows = {str(r[0]): (r[1], r[2], r[3]) for r in conn.execute(
                f"SELECT id, content_sha256, embedded_sha256, embedded_chunks FROM {table}")}
            have = {}
            for page in store.chroma.iter_all(COLLECTIONS[kind]):
                for vid, meta in zip(page["ids"], page["metadatas"]):
                    have[vid] = meta.get("sha")
            for rid, (content, embedded, chunks) in rows.items():
                if embedded == content:
                    for c in range(chunks):
                        if have.get(vector_id(rid, c)) != embedded:
                            problems.append(f"{table} {rid} chunk {c}: vector missing or stale")
            for vid in have:
                rid = record_id_of(vid)
                if rid not in rows or rows[rid][1] != rows[rid][0]:
                    problems.append(f"{COLLECTIONS[kind]} {vid}: vector of no embedded row")
    return problems


def run_ctx(settings, *args: str, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings_env(settings), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "coditect_ctx", *args], env=env, capture_output=True, text=True, **kw)


def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


# -- the round trip ----------------------------------------------------------------------------------------
def test_round_trip_brings_back_every_row_and_vector(fresh_stack, cli):
    settings = fresh_stack
    with Store(settings) as store:
        seed(store, n=40)
        rows_before, vectors_before = pg_snapshot(store), chroma_snapshot(store)
        probe = _unit_vectors(1, 99)[0]
        answers_before = {n: store.chroma.query(n, probe, n_results=10)["ids"][0] for n in COLLECTIONS.values()}

    result = cli(settings, "backup", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    made = json.loads(result.stdout)
    folder = Path(made["path"])
    assert folder.parent == settings.backups_path and (folder / "manifest.json").is_file()
    manifest = bk.load_manifest(folder)
    assert manifest["postgres"]["rows"]["messages"] == 40
    assert sum(c["vectors"] for c in manifest["chroma"]["collections"].values()) == sum(map(len, vectors_before.values()))
    assert set(manifest["files"]) == {"postgres.dump", bk_snapshot.SNAPSHOT_FILE,
                                      *(f"chroma/{n}.jsonl.gz" for n in COLLECTIONS.values())}
    from coditect_ctx.health import OK, check_backup, newest_backup

    assert newest_backup(settings)[0] == folder
    assert check_backup(settings).status == OK

    result = cli(settings, "down", "--volumes", "--yes")
    assert result.exit_code == 0, result.stdout + result.stderr
    from coditect_ctx import stack

    stack.setup(settings, prepare_model=False)
    with Store(settings) as store:
        assert pg_snapshot(store)["messages"] == []

    result = cli(settings, "restore", folder.name, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    restored = json.loads(result.stdout)
    assert restored["marked_not_embedded"] == 0
    with Store(settings) as store:
        assert pg_snapshot(store) == rows_before
        assert_same_vectors(chroma_snapshot(store), vectors_before)
        answers_after = {n: store.chroma.query(n, probe, n_results=10)["ids"][0] for n in COLLECTIONS.values()}
        assert answers_after == answers_before
        assert consistency_problems(store) == []
        with store.pg() as conn:
            assert pg.data_generation(conn) == manifest["postgres"]["data_generation"] + 1 == restored["data_generation"]

    # a second restore over the restored data needs --yes
    result = cli(settings, "restore", folder.name)
    assert result.exit_code == 2 and "--yes" in result.stderr


# -- refusals ----------------------------------------------------------------------------------------------
def test_restore_refuses_damaged_newer_or_unconfirmed(fresh_stack, cli, tmp_path):
    settings = fresh_stack
    with Store(settings) as store:
        seed(store, n=10)
        before = pg_snapshot(store)
    made = bk.create_backup(settings)
    for rel in ("postgres.dump", "chroma/messages_embeddings.jsonl.gz", "manifest.json"):
        copy = tmp_path / f"flipped-{rel.replace('/', '-')}"
        shutil.copytree(made.path, copy)
        flip_byte(copy / rel)
        result = cli(settings, "restore", str(copy), "--yes")
        assert result.exit_code == 5, (rel, result.stdout, result.stderr)
        assert "checksum mismatch" in result.stderr or "unreadable manifest" in result.stderr
        result = cli(settings, "backup", "verify", str(copy))
        assert result.exit_code == 5, (rel, result.stderr)

    newer = tmp_path / "newer"
    shutil.copytree(made.path, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["schema_version"] = 999
    bk.write_manifest(newer, {k: v for k, v in manifest.items() if k != "checksum"})
    result = cli(settings, "restore", str(newer), "--yes")
    assert result.exit_code == 4 and "newer than this ctx" in result.stderr

    result = cli(settings, "restore", str(made.path))
    assert result.exit_code == 2 and "holds data" in result.stderr

    partial = settings.backups_path / ".20200101T000000Z.partial"
    partial.mkdir()
    result = cli(settings, "restore", str(partial), "--yes")
    assert result.exit_code == 2 and "not a complete ctx backup" in result.stderr
    with Store(settings) as store:
        assert pg_snapshot(store) == before


# -- consistency under a concurrent writer -----------------------------------------------------------------
def _many_messages(folder: Path, n: int) -> Path:
    """A MEMORY-CONTEXT of n distinct messages: several embedding batches, so migrate is still writing rows,
    vectors and embedded marks while a backup runs."""
    by_checkpoint = folder / "MEMORY-CONTEXT" / "messages" / "by-checkpoint"
    by_checkpoint.mkdir(parents=True)
    checkpoint = "2025-03-01T00-00-00Z-Bulk-load"
    lines = [json.dumps({"message": {"index": i, "role": ("user", "assistant")[i % 2],
                                     "content": f"bulk message {i}: backups of a store that is written to, "
                                                f"case {i * 7919 % 10007} of {i % 13} on shard {i % 29}"},
                         "first_seen": "2025-03-01T00:00:00+00:00", "checkpoint": checkpoint}) for i in range(n)]
    (by_checkpoint / f"{checkpoint}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _messages(store: Store) -> tuple[int, int]:
    """(rows, rows marked embedded) in messages."""
    with store.pg() as conn:
        return conn.execute("SELECT count(*), count(embedded_sha256) FROM messages").fetchone()


def test_backup_during_a_real_migrate_restores_consistent(fresh_stack, cli, tmp_path):
    settings = fresh_stack
    with Store(settings) as store:
        seed(store, n=50)
        before = _messages(store)
    source = _many_messages(tmp_path / "bulk", 4000)
    # --wait: a backup holds the writer lock for the seconds its Chroma snapshot takes (snapshot.py); a migrate
    # that starts then waits for it, as one from cron should
    migrate = subprocess.Popen([sys.executable, "-m", "coditect_ctx", "migrate", str(source), "--json", "--wait", "120"],
                               env={**os.environ, **settings_env(settings)}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    made = None  # the first backup during which migrate marked rows embedded (their vectors written just before)
    try:
        with Store(settings) as store:
            embedded = _messages(store)[1]
            while made is None and migrate.poll() is None:
                backup = bk.create_backup(settings)
                embedded, at_start = _messages(store)[1], embedded
                if embedded != at_start:
                    made = backup
        out, err = migrate.communicate(timeout=900)
    finally:
        if migrate.poll() is None:
            migrate.kill()
            migrate.communicate()
    assert migrate.returncode == 0, err
    assert json.loads(out)["ok"] is True
    assert made is not None, "migrate embedded nothing while a backup ran: the test proves nothing"
    result = cli(settings, "restore", str(made.path), "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    with Store(settings) as store:
        assert consistency_problems(store) == []
        with store.pg() as conn:
            rows = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            unembedded = conn.execute("SELECT count(*) FROM messages WHERE embedded_sha256 IS NULL").fetchone()[0]
    assert rows == made.manifest["postgres"]["rows"]["messages"]
    listed = len(made.manifest["chroma"]["not_embedded"]["message"])
    # rows the snapshot saw before migrate marked them embedded come back unembedded, for the next migrate
    assert rows == before[0] + 4000 and unembedded >= listed


# -- a killed backup, and no password on a command line ---------------------------------------------------
def _pg_dump_cmdlines(port: int) -> list[str]:
    """pg_dump processes of the store on `port` (the machine may run other stores' backups meanwhile)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            args = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "pg_dump" in args and f" -p {port} " in f" {args} ":
            found.append(args)
    return found


def test_sigkill_mid_backup_leaves_nothing_complete_and_ps_shows_no_password(fresh_stack, cli):
    settings = fresh_stack
    with Store(settings) as store:
        seed(store, n=10)
        locker = store.pg()
        # pg_dump waits for this lock, so the backup is reliably half-way while we look at ps and kill it
        locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen([sys.executable, "-m", "coditect_ctx", "backup"], env={**os.environ, **settings_env(settings)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not _pg_dump_cmdlines(settings.pg_port) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            cmdlines = _pg_dump_cmdlines(settings.pg_port)
            assert cmdlines, f"pg_dump never showed up: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}"
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            assert "pg_dump" in ps
            assert settings.pg_password not in ps and all(settings.pg_password not in c for c in cmdlines)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            locker.rollback()
            locker.close()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.5)
    from coditect_ctx.health import newest_backup

    listed = bk.list_backups(settings.backups_path)
    assert listed and not any(b.complete for b in listed)
    assert newest_backup(settings) is None
    result = cli(settings, "backup", "list", "--json")
    assert [b["complete"] for b in json.loads(result.stdout)] == [False]

    # a finished backup afterwards lists as the one complete backup; prune clears the day-old partial folder
    done = run_ctx(settings, "backup")
    assert done.returncode == 0, done.stderr
    partial = next(b.path for b in bk.list_backups(settings.backups_path) if not b.complete)
    old = time.time() - 2 * 86400
    os.utime(partial, (old, old))
    result = cli(settings, "backup", "prune", "--keep-daily", "1", "--keep-weekly", "0", "--keep-monthly", "0", "--yes")
    assert result.exit_code == 0, result.stdout + result.stderr
    left = bk.list_backups(settings.backups_path)
    assert [b.complete for b in left] == [True]


# -- verify and list ---------------------------------------------------------------------------------------
def _scratch_left(store: Store) -> list[str]:
    with store.pg() as conn:
        dbs = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'ctx_verify_%'")]
    return dbs + [c["name"] for c in store.chroma.list_collections() if c["name"].startswith("verify_")]


def test_verify_restores_into_scratch_and_cleans_up(stack, cli, tmp_path):
    settings = stack
    prefix = f"verify-{uuid.uuid4().hex[:6]}"
    with Store(settings) as store:
        seed(store, n=8, prefix=prefix)
        made = bk.create_backup(settings, dest=tmp_path / "b")
        result = cli(settings, "backup", "verify", made.name, "--dest", str(tmp_path / "b"), "--json")
        assert result.exit_code == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["ok"] is True
        assert json.loads((made.path / "verified.json").read_text())["ok"] is True
        assert _scratch_left(store) == []
        listed = json.loads(cli(settings, "backup", "list", "--dest", str(tmp_path / "b"), "--json").stdout)
        assert listed[0]["name"] == made.name and listed[0]["verified"] is True and listed[0]["complete"]

        # a manifest whose counts disagree with its files (checksum made valid) fails after the scratch restore
        manifest = {k: v for k, v in made.manifest.items() if k != "checksum"}
        manifest["chroma"]["collections"]["messages_embeddings"]["vectors"] += 1
        bk.write_manifest(made.path, manifest)
        result = cli(settings, "backup", "verify", str(made.path))
        assert result.exit_code == 5 and "does not match" in result.stderr
        assert _scratch_left(store) == []
        assert json.loads((made.path / "verified.json").read_text())["ok"] is False
        text = cli(settings, "backup", "list", "--dest", str(tmp_path / "b")).stdout
        assert made.name in text and "FAILED" in text
        # leave the shared store as found
        with store.pg() as conn:
            conn.execute("DELETE FROM submodule_registry WHERE name = %s", (f"{prefix}-sub",))
            conn.execute("DELETE FROM tags WHERE name = %s", (f"{prefix}-tag",))
            conn.execute("DELETE FROM privacy_audit WHERE record_identity = %s", (f"{prefix}-m-0",))
            conn.commit()
        for name in COLLECTIONS.values():
            store.chroma.delete(name, where={"submodule": f"{prefix}-sub"})


# -- retention ---------------------------------------------------------------------------------------------
def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_plan_prune_keeps_newest_of_each_day_week_month():
    stamps = [
        "2026-11-25T02:00", "2026-11-24T14:00", "2026-11-24T02:00", "2026-11-23T02:00", "2026-11-20T02:00",
        "2026-11-16T02:00", "2026-11-09T02:00", "2026-10-31T02:00", "2026-10-01T02:00", "2026-09-15T02:00",
        "2026-06-01T02:00",
    ]
    backups = [(f"b{i}", _at(s)) for i, s in enumerate(stamps)]
    plan = bk.plan_prune(backups, keep_daily=3, keep_weekly=2, keep_monthly=3)
    # days: 11-25, 11-24 (the later one), 11-23; ISO weeks: 48 (11-25), 47 (11-20); months: Nov, Oct (10-31), Sep
    assert set(plan.keep) == {"b0", "b1", "b3", "b4", "b7", "b9"}
    assert plan.keep["b0"][0] == "newest"
    assert sorted(plan.delete) == sorted({"b2", "b5", "b6", "b8", "b10"})
    # keeping nothing still keeps the newest; nothing to prune is fine
    assert bk.plan_prune(backups, 0, 0, 0).keep == {"b0": ["newest"]}
    assert bk.plan_prune([], 3, 3, 3).delete == []


def _fake_backup(root: Path, ended: datetime) -> Path:
    folder = root / ended.strftime(bk.NAME_FORMAT)
    folder.mkdir(parents=True)
    (folder / "postgres.dump").write_bytes(b"x")
    bk.write_manifest(folder, {
        "format": bk.FORMAT, "name": folder.name, "started_at": bk.iso(ended), "ended_at": bk.iso(ended),
        "files": {"postgres.dump": {"sha256": bk.file_sha256(folder / "postgres.dump"), "bytes": 1}},
    })
    return folder


def test_prune_command_on_synthetic_backups(cli, tmp_path):
    from coditect_ctx.config import load_settings

    root = tmp_path / "backups"
    now = datetime.now(timezone.utc).replace(microsecond=0)
    made = [_fake_backup(root, now - timedelta(days=d, hours=1)) for d in (0, 1, 2, 3, 10, 40, 80)]
    junk = root / ".20200101T000000Z.partial"
    junk.mkdir()
    fresh_partial = root / f".{now.strftime(bk.NAME_FORMAT)}-9.partial"
    fresh_partial.mkdir()
    unfinished = root / "20200202T000000Z"  # renamed, manifest not yet: killed in the last instant
    unfinished.mkdir()
    damaged = _fake_backup(root, now - timedelta(days=400))
    flip_byte(damaged / "manifest.json", 0.3)
    old = time.time() - 3 * 86400
    for path in (junk, unfinished, damaged):
        os.utime(path, (old, old))
    settings = load_settings(home=str(tmp_path / "home"))
    args = ("backup", "prune", "--dest", str(root), "--keep-daily", "2", "--keep-weekly", "0", "--keep-monthly", "0")

    result = cli(settings, *args, "--dry-run", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    [plan] = json.loads(result.stdout)  # a list, one plan per repository, however many
    assert plan["repo"] == str(root)
    assert set(plan["delete"]) == {p.name for p in made[2:]}
    assert sorted(plan["partial_delete"]) == sorted([junk.name, unfinished.name])
    assert all(p.exists() for p in made) and junk.exists()

    result = cli(settings, *args)  # not a terminal, no --yes: refuses
    assert result.exit_code == 2 and all(p.exists() for p in made)

    result = cli(settings, *args, "--yes")
    assert result.exit_code == 0, result.stdout + result.stderr
    # the damaged backup stays for the operator to look at; the unfinished folders older than a day are gone
    assert sorted(p.name for p in root.iterdir()) == sorted([made[0].name, made[1].name, fresh_partial.name, damaged.name])
    listed = json.loads(cli(settings, "backup", "--dest", str(root), "list", "--json").stdout)
    assert [(b["name"], b["complete"]) for b in listed] == [(made[0].name, True), (made[1].name, True),
                                                             (damaged.name, False), (fresh_partial.name, False)]


# -- health reads the manifest ----------------------------------------------------------------------------
def test_health_warns_when_newest_backup_is_too_old(tmp_path):
    from coditect_ctx.config import load_settings
    from coditect_ctx.health import OK, WARNING, check_backup

    settings = load_settings(home=str(tmp_path / "home"), backup_dir=str(tmp_path / "b"))
    _fake_backup(tmp_path / "b", datetime.now(timezone.utc) - timedelta(hours=30))
    check = check_backup(settings)
    assert check.status == WARNING and "30." in check.message
    newer = _fake_backup(tmp_path / "b", datetime.now(timezone.utc) - timedelta(hours=2))
    check = check_backup(settings)
    assert check.status == OK and newer.name in check.message
    (tmp_path / "b" / f".{datetime.now(timezone.utc).strftime(bk.NAME_FORMAT)}.partial").mkdir()  # never counted
    assert check_backup(settings).status == OK and newer.name in check_backup(settings).message


# -- cron --------------------------------------------------------------------------------------------------
def test_backup_and_health_run_plain_under_cron(stack, tmp_path):
    settings = stack
    env = {"PATH": "/usr/bin:/bin", **settings_env(settings), "CTX_BACKUP_DIR": str(tmp_path / "cron")}
    common = dict(env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=tmp_path)
    backup = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()),
                             sys.executable, "-m", "coditect_ctx", "backup"], **common)
    assert backup.returncode == 0, backup.stderr
    assert re.match(r"backup \d{8}T\d{6}Z: \d+ rows", backup.stdout)
    health = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()),
                             sys.executable, "-m", "coditect_ctx", "health", "--format", "nagios"], **common)
    verdict = health.stdout.split(":", 1)[0]
    assert health.returncode == {"CTX OK": 0, "CTX WARNING": 1, "CTX CRITICAL": 2, "CTX UNKNOWN": 3}[verdict], health.stdout
    assert "backup ok" in health.stdout and "'backup_age_hours'=0;" in health.stdout
    for text in (backup.stdout, backup.stderr, health.stdout, health.stderr):
        assert not ANSI.search(text) and not BOX.search(text), text


# -- migrate, back up, restore -----------------------------------------------------------------------------
def test_migrated_demo_survives_backup_and_restore(fresh_stack, cli):
    from coditect_ctx.migrate import run_migrate

    settings = fresh_stack
    report = run_migrate(settings, [SAMPLES / "coditect-demo"])
    assert report.embedded_vectors > 0
    with Store(settings) as store:
        rows_before, vectors_before = pg_snapshot(store), chroma_snapshot(store)
    made = bk.create_backup(settings)
    with Store(settings) as store:
        with store.pg() as conn:
            for table in ("submodule_registry", "tags", "privacy_audit", "context_loads"):
                conn.execute(f"DELETE FROM {table}")
            # the store moved on since the backup: restore must not reuse a generation cached answers may carry
            newer = pg.bump_generation(conn) + 100
            conn.execute("UPDATE db_metadata SET data_generation = %s", (newer,))
            conn.commit()
        for name in COLLECTIONS.values():
            store.chroma.delete_collection(name)
    result = cli(settings, "restore", str(made.path), "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["data_generation"] > newer
    with Store(settings) as store:
        assert pg_snapshot(store) == rows_before
        assert_same_vectors(chroma_snapshot(store), vectors_before)
        assert consistency_problems(store) == []


def test_backup_to_an_unwritable_place_fails_cleanly(stack, cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = cli(stack, "backup", "--dest", str(blocker / "backups"))
    assert result.exit_code == 2 and "Cannot write backups" in result.stderr
    assert "Traceback" not in result.stderr
