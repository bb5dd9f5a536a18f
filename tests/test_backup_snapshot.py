"""Fast restore from a backup's Chroma snapshot (snapshot.py), against real servers and the real CLI: the round trip,
the fall-backs to the portable export, a damaged snapshot refused, and a restore killed mid-swap rerun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from coditect_ctx import backup as bk
from coditect_ctx.snapshot import SNAPSHOT_FILE
from coditect_ctx.stores import Store
from coditect_ctx.stores.chroma import COLLECTIONS

from .conftest import SAMPLES, run_ctx
from .test_backup import (
    _unit_vectors, assert_same_vectors, chroma_snapshot, consistency_problems, flip_byte, pg_snapshot, seed,
)
from .test_crashes import _kill_at

QUERY = "database connection pool and the redis cache"


def _state(settings) -> tuple[dict, dict, dict, list]:
    """Rows, vectors, each collection's nearest neighbours of a probe vector, and `ctx search`'s hits."""
    with Store(settings) as store:
        probe = _unit_vectors(1, 99)[0]
        nearest = {n: store.chroma.query(n, probe, n_results=10)["ids"][0] for n in COLLECTIONS.values()}
        rows, vectors = pg_snapshot(store), chroma_snapshot(store)
    found = run_ctx(settings, "search", QUERY, "--mode", "semantic", "--limit", "20", "--json")
    assert found.returncode == 0, found.stderr
    hits = [(h["type"], h["id"]) for h in json.loads(found.stdout)["results"]]
    assert hits
    return rows, vectors, nearest, hits


def _assert_state(settings, expected: tuple[dict, dict, dict, list], files: bool = False) -> None:
    """The store is as `expected` says, and `ctx validate` passes (with the source files when the rows came from
    files; seeded rows have none)."""
    rows, vectors, nearest, hits = _state(settings)
    assert rows == expected[0]
    assert_same_vectors(vectors, expected[1])
    assert nearest == expected[2]
    assert hits == expected[3]
    with Store(settings) as store:
        assert consistency_problems(store) == []
    check = run_ctx(settings, "validate", *(() if files else ("--no-files",)))
    assert check.returncode == 0, check.stdout + check.stderr


def _wreck(settings) -> None:
    """The store moves on after the backup: messages gone, a collection gone."""
    with Store(settings) as store:
        with store.pg() as conn:
            conn.execute("TRUNCATE messages CASCADE")
            conn.commit()
        store.chroma.delete_collection(COLLECTIONS["message"])


def _restore(settings, *args: str) -> dict:
    done = run_ctx(settings, "restore", *args, "--yes", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_snapshot_restore_round_trip_and_portable_on_request(fresh_stack):
    from coditect_ctx.migrate import run_migrate

    settings = fresh_stack
    assert run_migrate(settings, [SAMPLES / "coditect-demo"]).embedded_vectors > 0
    expected = _state(settings)

    made = run_ctx(settings, "backup", "--json")
    assert made.returncode == 0, made.stderr
    made = json.loads(made.stdout)
    assert made["chroma_snapshot"] is True
    folder = Path(made["path"])
    manifest = bk.load_manifest(folder)
    snap = manifest["chroma"]["snapshot"]
    assert snap["file"] == SNAPSHOT_FILE and SNAPSHOT_FILE in manifest["files"]
    with Store(settings) as store:
        assert snap["server_version"] == store.chroma.version()
    assert run_ctx(settings, "search", QUERY, "--json").returncode == 0  # Chroma runs again after the copy

    _wreck(settings)
    restored = _restore(settings, folder.name)
    assert restored["chroma"] == "snapshot"
    assert restored["marked_not_embedded"] == 0
    _assert_state(settings, expected, files=True)

    _wreck(settings)
    restored = _restore(settings, folder.name, "--portable")
    assert restored["chroma"] == "portable export (--portable)"
    _assert_state(settings, expected, files=True)

    # --portable at backup time: no snapshot, Chroma never stopped; restore then reloads the export
    plain = run_ctx(settings, "backup", "--portable", "--json")
    assert plain.returncode == 0, plain.stderr
    plain = json.loads(plain.stdout)
    assert plain["chroma_snapshot"] is False
    assert SNAPSHOT_FILE not in bk.load_manifest(Path(plain["path"]))["files"]
    _wreck(settings)
    assert _restore(settings, plain["path"])["chroma"] == "portable export (the backup has no Chroma snapshot)"
    _assert_state(settings, expected, files=True)


def test_other_chroma_version_falls_back_and_busy_store_takes_no_snapshot(fresh_stack, tmp_path):
    settings = fresh_stack
    with Store(settings) as store:
        seed(store, n=20)
    expected = _state(settings)
    made = bk.create_backup(settings)
    older = tmp_path / "older"
    shutil.copytree(made.path, older)
    manifest = bk.load_manifest(older)
    manifest["chroma"]["snapshot"]["server_version"] = "0.4.24"
    bk.write_manifest(older, {k: v for k, v in manifest.items() if k != "checksum"})

    _wreck(settings)
    restored = _restore(settings, str(older))
    assert restored["chroma"].startswith("portable export (the snapshot was written by Chroma 0.4.24")
    _assert_state(settings, expected)

    # a writer holds the lock (a migrate, say): the backup neither waits nor copies a store being written
    with Store(settings) as store, store.writer_lock("migrate"):
        busy = run_ctx(settings, "backup", "--json")
    assert busy.returncode == 0, busy.stderr
    busy = json.loads(busy.stdout)
    assert busy["chroma_snapshot"] is False and "busy" in busy["snapshot_skipped"]
    assert "ctx migrate" in busy["snapshot_skipped"]


def test_damaged_snapshot_is_refused_and_changes_nothing(fresh_stack, tmp_path):
    settings = fresh_stack
    with Store(settings) as store:
        seed(store, n=10)
        made = bk.create_backup(settings)
        seed(store, n=5, prefix="later")  # the store moved on: a refused restore must leave this as it is
        before_rows, before_vectors = pg_snapshot(store), chroma_snapshot(store)

    flipped = tmp_path / "flipped"
    shutil.copytree(made.path, flipped)
    flip_byte(flipped / SNAPSHOT_FILE)
    refused = run_ctx(settings, "restore", str(flipped), "--yes")
    assert refused.returncode == 5 and "checksum mismatch" in refused.stderr, refused.stderr

    # forged: the archive cut short and the checksums signed again; caught unpacking, before anything is replaced
    forged = tmp_path / "forged"
    shutil.copytree(made.path, forged)
    archive = forged / SNAPSHOT_FILE
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    manifest = bk.load_manifest(forged)
    manifest["files"][SNAPSHOT_FILE] = {"sha256": bk.file_sha256(archive), "bytes": archive.stat().st_size}
    bk.write_manifest(forged, {k: v for k, v in manifest.items() if k != "checksum"})
    refused = run_ctx(settings, "restore", str(forged), "--yes")
    assert refused.returncode == 5 and "not a readable Chroma snapshot" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    with Store(settings) as store:
        assert pg_snapshot(store) == before_rows
        assert_same_vectors(chroma_snapshot(store), before_vectors)
    assert not list(settings.home.glob("chroma.*"))  # no unpacked leftovers


def test_restore_killed_mid_swap_is_rerun_to_the_backup(fresh_stack):
    settings = fresh_stack
    with Store(settings) as store:
        seed(store, n=20)
    expected = _state(settings)
    made = bk.create_backup(settings)
    _wreck(settings)

    # killed with Chroma stopped and its folder moved aside, the snapshot's not in place yet
    _kill_at(settings, "restore-swap", "restore", str(made.path), "--yes")
    assert not (settings.home / "chroma").exists()
    again = run_ctx(settings, "restore", str(made.path), "--yes", "--wait", "60", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["chroma"] == "snapshot"
    _assert_state(settings, expected)
    assert sorted(p.name for p in settings.home.glob("chroma*")) == ["chroma"]
