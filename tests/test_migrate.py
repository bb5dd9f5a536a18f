"""`ctx migrate` and `ctx validate` on the project's samples, real corpus files and broken input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coditect_ctx import stack as stack_job
from coditect_ctx.migrate import run_migrate
from coditect_ctx.runtime import procs
from coditect_ctx.runtime.local import LocalRuntime
from coditect_ctx.stores import Store
from coditect_ctx.stores.chroma import COLLECTIONS

from .conftest import (
    CORPUS, HOSTILE_LEAKS, SAMPLES, _start, _short_tmp, make_settings, settings_env, vectors_by_identity,
    write_hostile_source,
)
from .conftest import run_ctx as _ctx

DEMO = SAMPLES / "coditect-demo"
SECRETS = ("sk-ant-api03", "@coditect-demo.example", "hunter2", "s3cr3t")


@pytest.fixture(scope="module")
def demo(models_dir):
    """A store of this module's own with the samples migrated once."""
    settings = make_settings(_short_tmp("ctx-m-"))
    _start(settings, models_dir)
    report = run_migrate(settings, [DEMO])
    yield settings, report
    stack_job.down(settings, volumes=True)


def _snapshot(settings) -> dict:
    """The store's content, independent of the random uuids: what two equivalent runs must share."""
    with Store(settings) as store, store.pg() as conn:
        out = {}
        ids = {}
        for kind, table in (("session", "sessions"), ("checkpoint", "checkpoints"), ("pattern", "patterns"),
                            ("message", "messages")):
            rows = conn.execute(
                f"SELECT id::text, identity, content_sha256, embedded_sha256, embedded_chunks FROM {table}").fetchall()
            ids.update({r[0]: r[1] for r in rows})
            out[kind] = sorted(r[1:] for r in rows)
        out["links"] = sorted(conn.execute(
            "SELECT s.identity, c.identity FROM sessions s JOIN checkpoints c ON c.id = s.checkpoint_id").fetchall())
        out["tags"] = sorted(conn.execute(
            "SELECT s.identity, t.name FROM session_tags st JOIN sessions s ON s.id = st.session_id "
            "JOIN tags t ON t.id = st.tag_id").fetchall())
        out["audit"] = sorted(conn.execute(
            "SELECT record_type, record_identity, detections::text FROM privacy_audit").fetchall())
        for kind, vectors in vectors_by_identity(store, ids).items():
            out[f"vectors:{kind}"] = vectors
    return out


# -- the samples ---------------------------------------------------------------------------------------
def test_samples_imported_once_each(demo):
    settings, report = demo
    assert report.exit_code == 0, report.as_dict()
    totals = report.totals()
    assert totals["checkpoint"]["imported"] == 6
    assert totals["session"]["imported"] == 7
    assert totals["session"]["skipped"] == 1  # the placeholder export
    assert totals["message"]["imported"] >= 6
    with Store(settings) as store, store.pg() as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 7
        names = {r[0] for r in conn.execute("SELECT name FROM submodule_registry")}
        assert names == {"coditect-demo", "demo-core"}
        # the session met as Markdown, JSON export and transcript is one row that knows all three
        formats = conn.execute(
            "SELECT source_formats FROM sessions WHERE title ILIKE '%Cloud SQL%'").fetchone()[0]
        assert {"session_md", "export_json", "transcript"} <= set(formats)
        # linked to its checkpoint by the **Checkpoint:** field, not by the file name's false Z
        linked = conn.execute("SELECT count(*) FROM sessions WHERE checkpoint_id IS NOT NULL").fetchone()[0]
        assert linked >= 5
        # conversation turns keep their order and roles
        roles = [r[0] for r in conn.execute(
            "SELECT m.role FROM messages m JOIN sessions s ON s.id = m.session_id "
            "WHERE s.title ILIKE '%Cloud SQL%' ORDER BY m.position")]
        assert roles[0] == "user" and "assistant" in roles
        # timestamps are UTC instants from the content
        started = conn.execute(
            "SELECT started_at FROM sessions WHERE title ILIKE '%Cloud SQL%'").fetchone()[0]
        assert started.utcoffset().total_seconds() == 0


def test_second_migrate_inserts_nothing(demo, cli):
    settings, first = demo
    before = _snapshot(settings)
    result = cli(settings, "migrate", str(DEMO), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    for kind, t in data["totals"].items():
        assert t["imported"] == 0 and t["updated"] == 0, (kind, t)
    assert data["embedded_records"] == 0
    assert _snapshot(settings) == before


def test_validate_agrees_after_migrate(demo, cli):
    settings, _ = demo
    result = cli(settings, "validate", "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0, data
    assert data["ok"] and all(r["ok"] for r in data["rows"])
    kinds = {(r["source"], r["kind"]) for r in data["rows"]}
    assert ("coditect-demo", "session") in kinds and ("demo-core", "checkpoint") in kinds


def test_pii_never_reaches_the_store(demo):
    settings, report = demo
    assert report.redacted_records > 0
    with Store(settings) as store, store.pg() as conn:
        for table in ("sessions", "checkpoints", "messages"):
            text = " ".join(r[0] for r in conn.execute(f"SELECT concat_ws(' ', content, metadata::text) FROM {table}"))
            for secret in SECRETS:
                assert secret not in text, (table, secret)
        audits = conn.execute("SELECT record_type, detections FROM privacy_audit").fetchall()
        assert audits and all(d for _, d in audits)
        summary = conn.execute("SELECT sum(records) FROM v_privacy_audit_summary").fetchone()[0]
        assert summary == len(audits)
        for name in COLLECTIONS.values():
            for page in store.chroma.iter_all(name, include=("documents", "metadatas")):
                blob = json.dumps(page)
                for secret in SECRETS:
                    assert secret not in blob


def test_hostile_names_and_paths_never_reach_the_store(fresh_stack, tmp_path):
    """A checkpoint named after an e-mail and an AWS key id, in a repo under the user's home: the ref, the source
    paths, the audit's paths and the registry's repo path are redacted like text, links by ref still hold, and
    `ctx validate` re-reads the files (from ~/proj) and agrees."""
    home = tmp_path / "home" / "alice.smith"
    repo = write_hostile_source(home)
    env = {**os.environ, **settings_env(fresh_stack), "HOME": str(home)}

    def ctx(*args):
        return subprocess.run([sys.executable, "-m", "coditect_ctx", *args], env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=600)

    proc = ctx("migrate", str(repo))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ref = "2025-11-20T10-00-00Z-[REDACTED-EMAIL]@example.org-AKIA[REDACTED]"
    with Store(fresh_stack) as store, store.pg() as conn:
        assert conn.execute("SELECT ref, source_path FROM checkpoints").fetchall() == [
            (ref, f"MEMORY-CONTEXT/checkpoints/{ref}.md")]
        assert conn.execute("SELECT repo_path, memory_context_path FROM submodule_registry").fetchall() == [
            ("~/proj", "~/proj/MEMORY-CONTEXT")]
        assert conn.execute(
            "SELECT source_path FROM privacy_audit WHERE record_type = 'checkpoint'").fetchall() == [
            (f"MEMORY-CONTEXT/checkpoints/{ref}.md",)]
        assert conn.execute("SELECT checkpoint_ref FROM sessions").fetchall() == [(ref,)]
        # the session and the messages still find their checkpoint by the (redacted) ref
        assert conn.execute("SELECT count(*) FROM sessions WHERE checkpoint_id IS NOT NULL").fetchone()[0] == 1
        assert conn.execute("SELECT count(*), count(checkpoint_id) FROM messages").fetchone() == (2, 2)
        stored = {table: [r[0] for r in conn.execute(f"SELECT row_to_json(t)::text FROM {table} t")]
                  for table in ("checkpoints", "sessions", "messages", "privacy_audit", "submodule_registry")}
        for name in COLLECTIONS.values():
            stored[name] = [json.dumps(page) for page in store.chroma.iter_all(name, include=("documents", "metadatas"))]
    assert stored["sessions"] and stored["messages"] and any(stored[n] for n in COLLECTIONS.values())
    for place, texts in stored.items():
        for leak in HOSTILE_LEAKS:
            assert not any(leak in text for text in texts), (place, leak)
    proc = ctx("validate", "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == 0 and data["ok"] and data["files_checked"], data
    assert {r["source"] for r in data["rows"]} == {"proj"} and all(r["files"] for r in data["rows"]), data


def test_dry_run_writes_nothing(fresh_stack, cli):
    before = _snapshot(fresh_stack)
    result = cli(fresh_stack, "migrate", str(DEMO), "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["dry_run"] and data["totals"]["session"]["imported"] == 7
    assert _snapshot(fresh_stack) == before


def test_submodule_names_a_single_source(fresh_stack):
    report = run_migrate(fresh_stack, [DEMO / "submodules" / "demo-core" / "MEMORY-CONTEXT"], submodule="core-renamed")
    assert set(report.sources) == {"core-renamed"}
    with Store(fresh_stack) as store, store.pg() as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM submodule_registry")] == ["core-renamed"]


# -- bad input -----------------------------------------------------------------------------------------
def test_bad_files_are_reported_and_the_rest_imported(fresh_stack, tmp_path):
    repo = tmp_path / "broken-repo"
    shutil.copytree(DEMO / "submodules" / "demo-core", repo)
    mc = repo / "MEMORY-CONTEXT"
    (mc / "sessions" / "2025-01-01-bad-utf8.md").write_bytes(b"# Session Export: x\n\xff\xfe\xfa broken")
    (mc / "sessions" / "2025-01-02-empty.md").write_bytes(b"")
    (mc / "exports").mkdir()
    (mc / "exports" / "2025-01-03-truncated.json").write_text('{"metadata": {"timestamp": "2025-')
    (mc / "checkpoints" / "2025-01-04T00-00-00Z-binary.md").write_bytes(bytes(range(256)) * 8)
    env = {**os.environ, **settings_env(fresh_stack)}
    proc = subprocess.run([sys.executable, "-m", "coditect_ctx", "migrate", str(repo)], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("bad-utf8", "empty", "truncated", "binary"):
        assert name in proc.stderr
    with Store(fresh_stack) as store, store.pg() as conn:
        assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 2


def test_path_without_memory_context_is_a_usage_error(fresh_stack, cli, tmp_path):
    result = cli(fresh_stack, "migrate", str(tmp_path))
    assert result.exit_code == 2 and "MEMORY-CONTEXT" in result.stderr
    result = cli(fresh_stack, "migrate", str(tmp_path / "does-not-exist"))
    assert result.exit_code == 2


def test_legacy_sqlite_patterns(fresh_stack, tmp_path):
    from .test_readers import _legacy_db

    mc = tmp_path / "legacy" / "MEMORY-CONTEXT"
    mc.mkdir(parents=True)
    _legacy_db(mc / "memory-context.db")
    report = run_migrate(fresh_stack, [tmp_path / "legacy"])
    assert report.exit_code == 0, report.as_dict()
    with Store(fresh_stack) as store, store.pg() as conn:
        name, usage = conn.execute("SELECT name, usage_count FROM patterns").fetchone()
        assert name == "Close sessions in finally" and usage == 7
        assert conn.execute("SELECT count(*) FROM v_patterns_by_usage").fetchone()[0] == 1
        assert conn.execute("SELECT embedded_chunks FROM patterns").fetchone()[0] >= 1
        assert store.chroma.count("patterns_embeddings") >= 1
        # the legacy session links to the legacy checkpoint
        assert conn.execute("SELECT count(*) FROM sessions WHERE checkpoint_id IS NOT NULL").fetchone()[0] == 1


# -- crash safety and a missing Chroma -----------------------------------------------------------------
def test_chroma_down_then_repair(fresh_stack, cli):
    runtime = LocalRuntime(fresh_stack)
    procs.terminate(procs.read_pid(runtime.run / "chroma.pid"))
    proc = _ctx(fresh_stack, "migrate", str(DEMO))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "chroma" in proc.stderr.lower() and "validate --repair" in proc.stderr
    with Store(fresh_stack) as store, store.pg() as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 7  # rows kept
        assert conn.execute("SELECT count(*) FROM sessions WHERE embedded_sha256 IS NULL").fetchone()[0] == 7
    assert cli(fresh_stack, "setup").exit_code == 0  # Chroma back
    assert _ctx(fresh_stack, "health", "--format", "nagios").returncode == 1  # drift: WARNING
    assert cli(fresh_stack, "validate").exit_code == 5
    repaired = cli(fresh_stack, "validate", "--repair", "--json")
    assert repaired.exit_code == 0, repaired.stdout
    assert any("embedded" in r for r in json.loads(repaired.stdout)["repaired"])
    assert cli(fresh_stack, "validate").exit_code == 0
    assert _ctx(fresh_stack, "health", "--format", "nagios").returncode == 0


def test_validate_finds_and_repairs_vector_damage(fresh_stack, cli):
    run_migrate(fresh_stack, [DEMO])
    with Store(fresh_stack) as store:
        page = store.chroma.get("sessions_embeddings", include=("metadatas", "embeddings"), limit=2)
        victim = page["ids"][0]
        store.chroma.delete("sessions_embeddings", ids=[victim])
        store.chroma.upsert("checkpoints_embeddings", ["00000000-0000-0000-0000-000000000000:0"],
                            [page["embeddings"][1]], [page["metadatas"][1]])
    result = cli(fresh_stack, "validate", "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 5
    assert sum(r["wrong_vector_count"] for r in data["rows"]) == 1
    assert sum(r["orphan_vectors"] for r in data["rows"]) == 1
    assert cli(fresh_stack, "validate", "--repair").exit_code == 0
    assert cli(fresh_stack, "validate").exit_code == 0


def test_validate_sees_content_changed_behind_its_back(fresh_stack, cli):
    run_migrate(fresh_stack, [DEMO])
    with Store(fresh_stack) as store, store.pg() as conn:
        conn.execute("UPDATE checkpoints SET content = content || ' tampered', "
                     "content_sha256 = md5(random()::text) WHERE ctid = (SELECT min(ctid) FROM checkpoints)")
        conn.commit()
    data = json.loads(cli(fresh_stack, "validate", "--repair", "--json").stdout)
    assert not data["ok"]
    assert any("ctx migrate" in u for u in data["unrepairable"])
    run_migrate(fresh_stack, [DEMO])  # the files win again
    assert cli(fresh_stack, "validate").exit_code == 0


# -- the real corpus -----------------------------------------------------------------------------------
@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is absent (it is not part of this repo)")
def test_real_submodule_and_test_dataset(fresh_stack, cli):
    """The coditect-core submodule and the master's test-dataset, real files, end to end."""
    report = run_migrate(fresh_stack, [CORPUS / "coditect-core"])
    assert report.exit_code == 0
    totals = report.totals()
    assert totals["checkpoint"]["imported"] == 18
    assert totals["session"]["imported"] == 6
    assert totals["session"]["skipped"] == 18  # placeholder exports
    assert cli(fresh_stack, "validate").exit_code == 0
    second = run_migrate(fresh_stack, [CORPUS / "coditect-core"])
    assert all(t["imported"] == 0 and t["updated"] == 0 for t in second.totals().values())
