"""Migration order never matters: two folders of one source, or one submodule alone, in any order or together.

The folders are small copies of real corpus files: two copies of the coditect-master repo (an older one and a newer
one with other transcripts) that share some records and differ in others, and a repo whose coditect-core submodule
shares a session with the master.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from coditect_ctx import stack as stack_job
from coditect_ctx.kinds import TABLES
from coditect_ctx.migrate import run_migrate
from coditect_ctx.stores import Store

from .conftest import CORPUS, _short_tmp, _start, make_settings, vectors_by_identity

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is absent (it is not part of this repo)")

MASTER = CORPUS / "coditect-master" / "MEMORY-CONTEXT"
CORE = CORPUS / "coditect-core" / "MEMORY-CONTEXT"
DEDUP = "2025-11-17T19-14-39Z-Week-1-Day-2---Deduplication-System-Complete"
SESSION_MD = f"sessions/{DEDUP}.md"
SESSION_MD_SHORT = "sessions/2025-11-18-Week-1-Day-2---Deduplication-System-Complete.md"  # same session, short form
SESSION_JSON = f"exports/{DEDUP}.json"
CHECKPOINT = "checkpoints/2025-11-18T00-14-39Z-Week-1-Day-2---Deduplication-System-Complete.md"
CHECKPOINT_B = "checkpoints/2025-11-18T00-48-10Z-Export-Dedup-Workflow---Session-Preserved.md"
TOON_A = "exports-archive/2025-11-18T06-58-00Z-EXPORT-SESSION-TOON.txt"
TOON_B = "exports-archive/2025-11-18T06-58-00Z-EXPORT-SESSION-TOON-20251123-223618.txt"  # same transcript
MASTER3 = "exports-archive/2025-11-17-EXPORT-MASTER3.txt"
JSONL_A = "messages/by-checkpoint/2025-11-20-EXPORT-command-dedup.jsonl"
JSONL_BOTH = "messages/by-checkpoint/2025-11-17-EXPORT-ROLLOUT-MASTER.jsonl"
CORE_SESSION = "sessions/2025-11-24-Deduplicate-345-archived-export-files.md"
CORE_CHECKPOINT = "checkpoints/2025-11-24T03-36-18Z-Deduplicate-345-archived-export-files.md"


def _copy(source: Path, folder: Path, *files: str) -> None:
    for rel in files:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, folder / rel)


def _two_copies(tmp: Path) -> tuple[Path, Path]:
    """Two folders both named coditect-master: overlapping records, different extra files, and one checkpoint whose
    copy in B is older (shorter): the longer one must win whichever folder is migrated last."""
    a, b = tmp / "a" / "coditect-master", tmp / "b" / "coditect-master"
    _copy(MASTER, a / "MEMORY-CONTEXT", SESSION_MD, SESSION_JSON, CHECKPOINT, TOON_A, JSONL_A, JSONL_BOTH)
    _copy(MASTER, b / "MEMORY-CONTEXT", SESSION_MD_SHORT, SESSION_JSON, CHECKPOINT_B, TOON_B, MASTER3, JSONL_BOTH)
    full = (MASTER / CHECKPOINT).read_text(encoding="utf-8")
    (b / "MEMORY-CONTEXT" / CHECKPOINT).write_text(full[: len(full) // 2], encoding="utf-8")
    return a, b


def _state(settings) -> dict:
    """Everything a user could see differ, free of the random row uuids: rows by identity with content hash and
    submodule, message links, each record's folders and files, and vectors by (identity, chunk, content hash)."""
    with Store(settings) as store, store.pg() as conn:
        out, ids = {}, {}
        for kind, table in TABLES.items():
            rows = conn.execute(
                f"""SELECT t.id::text, t.identity, t.content_sha256, r.name FROM {table} t
                    JOIN submodule_registry r ON r.id = t.submodule_id""").fetchall()
            ids.update({rid: identity for rid, identity, _sha, _src in rows})
            out[kind] = sorted(row[1:] for row in rows)
        out["message links"] = sorted(conn.execute(
            """SELECT m.identity, s.identity, m.position, m.first_seen, m.occurrences FROM messages m
               LEFT JOIN sessions s ON s.id = m.session_id""").fetchall(), key=str)
        out["session links"] = sorted(conn.execute(
            "SELECT s.identity, c.identity FROM sessions s JOIN checkpoints c ON c.id = s.checkpoint_id").fetchall())
        out["sources"] = sorted(conn.execute(
            """SELECT rs.record_type, rs.record_identity, f.memory_context_path, rs.source_path, r.name
               FROM record_sources rs JOIN source_folders f ON f.id = rs.folder_id
               JOIN submodule_registry r ON r.id = f.submodule_id""").fetchall())
        for kind, vectors in vectors_by_identity(store, ids).items():
            out[f"vectors {kind}"] = vectors
    return out


def _validate_exit(cli, settings) -> int:
    result = cli(settings, "validate", "--json")
    if result.exit_code:
        print(result.stdout)  # the verdict, shown with the failure
    return result.exit_code


def test_two_folders_of_one_source_in_any_order(models_dir, tmp_path, cli):
    a, b = _two_copies(tmp_path)
    stores = {order: make_settings(_short_tmp(f"ctx-o{n}-")) for n, order in enumerate(("AB", "BA", "A+B"))}
    try:
        for settings in stores.values():
            _start(settings, models_dir)
        for first, second in ((a, b), (b, a)):
            settings = stores["AB" if first == a else "BA"]
            assert run_migrate(settings, [first]).exit_code == 0
            later = run_migrate(settings, [second])
            assert later.exit_code == 0
            # the second folder joins the name as one more source, said so, never a silent re-point
            assert any("one more folder of source 'coditect-master'" in note for note in later.notes), later.notes
        together = cli(stores["A+B"], "migrate", str(a), str(b), "--json")
        assert together.exit_code == 0, together.stdout + together.stderr

        states = {order: _state(settings) for order, settings in stores.items()}
        assert states["AB"] == states["BA"] == states["A+B"]
        state = states["A+B"]
        # every record kept every folder and file it came from: the shared session lists both folders' files
        session_files = {(folder, path) for kind, _i, folder, path, _n in state["sources"] if path.endswith(
            (SESSION_MD, SESSION_MD_SHORT, SESSION_JSON)) and kind == "session"}
        assert session_files == {
            (str(a / "MEMORY-CONTEXT"), f"MEMORY-CONTEXT/{SESSION_MD}"),
            (str(a / "MEMORY-CONTEXT"), f"MEMORY-CONTEXT/{SESSION_JSON}"),
            (str(b / "MEMORY-CONTEXT"), f"MEMORY-CONTEXT/{SESSION_MD_SHORT}"),
            (str(b / "MEMORY-CONTEXT"), f"MEMORY-CONTEXT/{SESSION_JSON}"),
        }
        assert {name for *_rest, name in state["sources"]} == {"coditect-master"}
        # the older, shorter copy of the checkpoint lost in every order
        full = (MASTER / CHECKPOINT).read_text(encoding="utf-8")
        with Store(stores["AB"]) as store, store.pg() as conn:
            content = conn.execute("SELECT content FROM checkpoints WHERE source_path LIKE %s",
                                   (f"%{Path(CHECKPOINT).name}",)).fetchone()[0]
            folders = conn.execute("SELECT count(*) FROM source_folders").fetchone()[0]
        assert len(content) > len(full) // 2 and folders == 2
        for settings in stores.values():
            assert _validate_exit(cli, settings) == 0
    finally:
        for settings in stores.values():
            stack_job.down(settings, volumes=True)


def test_one_submodule_alone_never_narrows_what_a_full_run_merged(fresh_stack, tmp_path, cli):
    """A session both the master and its coditect-core submodule name: migrating the submodule alone afterwards
    (or first) leaves it as the full run merged it, with both folders' files and the master as its submodule."""
    repo = tmp_path / "coditect-master"
    core = repo / "coditect-core"
    _copy(MASTER, repo / "MEMORY-CONTEXT", SESSION_MD, CHECKPOINT, TOON_A)
    _copy(MASTER, core / "MEMORY-CONTEXT", SESSION_JSON)
    _copy(CORE, core / "MEMORY-CONTEXT", CORE_SESSION, CORE_CHECKPOINT)

    assert run_migrate(fresh_stack, [core], submodule="coditect-core").exit_code == 0  # the submodule first
    assert run_migrate(fresh_stack, [repo]).exit_code == 0
    full = _state(fresh_stack)
    narrow = run_migrate(fresh_stack, [repo], submodule="coditect-core")
    assert narrow.exit_code == 0
    assert any(f"also read {repo / 'MEMORY-CONTEXT'}" in note for note in narrow.notes), narrow.notes
    assert all(t["imported"] == 0 and t["updated"] == 0 for t in narrow.totals().values()), narrow.totals()
    assert _state(fresh_stack) == full
    shared = [row for row in full["session"] if row[0] in {i for k, i, _f, p, _n in full["sources"]
                                                            if k == "session" and p.endswith(SESSION_JSON)}]
    assert [name for _i, _sha, name in shared] == ["coditect-master"]
    assert _validate_exit(cli, fresh_stack) == 0
    data = json.loads(cli(fresh_stack, "validate", "--json").stdout)
    assert {row["source"] for row in data["rows"]} >= {"coditect-master", "coditect-core"}


def test_a_store_from_before_002_gets_its_folders_and_sources(fresh_stack, cli):
    """Upgrading a store migrated by a ctx without record_sources: 002 registers each source's folder and each
    record's own file; `ctx validate` names what is missing until the next migrate, which changes no record."""
    from coditect_ctx.stores import postgres as pg

    from .conftest import SAMPLES

    demo = SAMPLES / "coditect-demo"
    assert run_migrate(fresh_stack, [demo]).exit_code == 0
    with Store(fresh_stack) as store:
        with store.pg() as conn:  # the store as the older ctx left it
            conn.execute("DROP TABLE record_sources, source_folders")
            conn.execute("DELETE FROM schema_migrations WHERE version = 2")
            conn.commit()
        assert pg.migrate_schema(store.pg_url) == ["002_record_sources"]
        with store.pg() as conn:
            folders = conn.execute("SELECT count(*) FROM source_folders").fetchone()[0]
            registered = conn.execute("SELECT count(*) FROM submodule_registry").fetchone()[0]
            unsourced = conn.execute(
                """SELECT count(*) FROM sessions s WHERE NOT EXISTS
                   (SELECT 1 FROM record_sources rs WHERE rs.record_type = 'session' AND rs.record_identity = s.identity)"""
            ).fetchone()[0]
    assert folders == registered > 1 and unsourced == 0
    before = json.loads(cli(fresh_stack, "validate", "--json").stdout)
    assert all(not (r["only_in_files"] or r["only_in_postgres"] or r["content_differs"]) for r in before["rows"])
    again = run_migrate(fresh_stack, [demo])
    assert all(t["imported"] == 0 and t["updated"] == 0 for t in again.totals().values()), again.totals()
    assert _validate_exit(cli, fresh_stack) == 0
