"""Crashes and absurd input: a real `ctx` subprocess killed with SIGKILL exactly at each point where a crash matters
(coditect_ctx/points.py, reached under CTX_PAUSE_AT), then rerun; and one record of a 20 MB line, bounded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from coditect_ctx import backup as bk
from coditect_ctx import stack as stack_job
from coditect_ctx.kinds import COLLECTIONS
from coditect_ctx.migrate import run_migrate
from coditect_ctx.points import POINTS
from coditect_ctx.stores import Store
from coditect_ctx.vectors import count_pending

from .conftest import SAMPLES, _short_tmp, _start, make_settings, run_measured, settings_env
from .conftest import run_ctx as _ctx
from .test_migrate import _snapshot

DEMO = SAMPLES / "coditect-demo"

ABSURD_MB = 20


def _absurd_source(folder: Path) -> tuple[Path, str]:
    """A MEMORY-CONTEXT holding one session whose body is a single 20 MB line; and that line."""
    sessions = folder / "MEMORY-CONTEXT" / "sessions"
    sessions.mkdir(parents=True)
    words = "retry policy chroma embedding batch redis eviction schema migration checkpoint vector latency".split()
    line = " ".join(words[i % len(words)] + str(i % 997) for i in range(ABSURD_MB * 1024 * 1024 // 12))
    (sessions / "2025-03-10-One-absurd-line.md").write_text(f"# Session: One absurd line\n\n**Date:** 2025-03-10\n\n{line}\n")
    return folder, line


def test_an_absurd_record_embeds_its_first_chunks_only_in_bounded_memory(fresh_stack, tmp_path):
    source, line = _absurd_source(tmp_path / "absurd")
    env = {**os.environ, **settings_env(fresh_stack), "CTX_EMBED_MAX_CHUNKS": "16"}
    code, out, _err, peak_mb = run_measured([sys.executable, "-m", "coditect_ctx", "migrate", str(source), "--json"], env)
    report = json.loads(out)
    assert code == 0, report
    assert report["embedded_records"] == 1 and report["embedded_vectors"] == 16
    assert report["embed_capped"] == 1 and report["embed_max_chunks"] == 16
    assert peak_mb < 1024, f"ctx migrate peaked at {peak_mb:.0f} MB on one {ABSURD_MB} MB line"
    with Store(fresh_stack) as store, store.pg() as conn:
        stored, chunks = conn.execute("SELECT length(content), embedded_chunks FROM sessions").fetchone()
    assert stored >= len(line) and chunks == 16  # the whole text kept, its first 16 chunks embedded
    again = subprocess.run([sys.executable, "-m", "coditect_ctx", "validate"], env={**os.environ, **settings_env(fresh_stack)},
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stdout + again.stderr
    human = subprocess.run([sys.executable, "-m", "coditect_ctx", "migrate", str(source)],
                           env={**os.environ, **settings_env(fresh_stack), "CTX_EMBED_MAX_CHUNKS": "16"},
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert human.returncode == 0 and "embedded: 0 records" in human.stdout


# -- SIGKILL at each named point ---------------------------------------------------------------------------
def _kill_at(settings, point: str, *args: str) -> None:
    """Run `ctx ARGS` with CTX_PAUSE_AT=point, wait until it reports `point: <point>` on stderr (it then holds
    still there), SIGKILL it. Fails if the run ends without reaching the point."""
    assert point in POINTS
    env = {**os.environ, **settings_env(settings), "CTX_PAUSE_AT": point}
    proc = subprocess.Popen([sys.executable, "-m", "coditect_ctx", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.strip() == f"point: {point}":
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"ctx {' '.join(args)} never reached {point}: {''.join(seen)[-2000:]}"


def _revise(source: Path, revision: int) -> None:
    """Every session and checkpoint file of the copy gets a new last paragraph: a run has rows to update and
    vectors to replace."""
    for path in sorted(source.rglob("MEMORY-CONTEXT/*/*.md")):
        text = path.read_text().split("\n\nRevision ")[0]
        path.write_text(f"{text}\n\nRevision {revision}: the retry budget and the cache TTL were checked again.\n")


MIGRATE_POINTS = ("migrate-read", "migrate-write", "migrate-committed", "embed-upserted", "embed-batch")


def test_migrate_killed_at_each_point_reruns_to_the_uninterrupted_state(models_dir, tmp_path):
    """Two stores take the same history of revisions: the reference by uninterrupted runs, the victim by a run
    SIGKILLed at one point, then a rerun. After each, rows, content hashes, vector ids and documents agree."""
    source = tmp_path / "coditect-demo"
    shutil.copytree(DEMO, source)
    reference = make_settings(_short_tmp("ctx-ref-"))
    victim = make_settings(_short_tmp("ctx-kill-"))
    _start(reference, models_dir)
    _start(victim, models_dir)
    try:
        for revision, point in enumerate(MIGRATE_POINTS):
            _revise(source, revision)
            before = _snapshot(victim)
            assert run_migrate(reference, [source]).exit_code == 0
            _kill_at(victim, point, "migrate", str(source))
            # the kill landed where it was meant to: before the commit nothing changed, after it rows wait
            with Store(victim) as store, store.pg() as conn:
                pending = sum(count_pending(conn).values())
            if point in ("migrate-read", "migrate-write"):
                assert _snapshot(victim) == before, point
            else:
                assert pending > 0, point
            # --wait: PostgreSQL ends the killed run's session (and its writer lock) as soon as it sees the socket close
            rerun = _ctx(victim, "migrate", str(source), "--json", "--wait", "60")
            assert rerun.returncode == 0, rerun.stdout + rerun.stderr
            assert _snapshot(victim) == _snapshot(reference), point
            check = _ctx(victim, "validate")
            assert check.returncode == 0, f"{point}: {check.stdout}"
    finally:
        stack_job.down(reference, volumes=True)
        stack_job.down(victim, volumes=True)


def test_backup_killed_while_dumping_and_restore_killed_while_loading(fresh_stack, tmp_path):
    settings = fresh_stack
    assert run_migrate(settings, [DEMO]).exit_code == 0
    expected = _snapshot(settings)

    _kill_at(settings, "backup-dump", "backup")
    listed = bk.list_backups(settings.backups_path)
    assert listed and not any(b.complete for b in listed)  # only the partial folder: no backup to trust
    done = _ctx(settings, "backup", "--json")
    assert done.returncode == 0, done.stderr
    complete = [b for b in bk.list_backups(settings.backups_path) if b.complete]
    assert len(complete) == 1
    assert _ctx(settings, "backup", "verify", str(complete[0].path)).returncode == 0

    # the store then loses a table's rows and a collection; restore is killed with PostgreSQL back, one
    # collection reloaded and the others not
    with Store(settings) as store:
        with store.pg() as conn:
            conn.execute("TRUNCATE messages CASCADE")
            conn.commit()
        store.chroma.delete_collection(COLLECTIONS["message"])
    # (--portable: the point is in the reload of the portable export; the snapshot's swap has a test of its own)
    _kill_at(settings, "restore-load", "restore", str(complete[0].path), "--yes", "--portable")
    with Store(settings) as store:
        with store.pg() as conn:
            messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        assert messages > 0 and not store.chroma.has_collection(COLLECTIONS["message"])  # killed half-way
    again = _ctx(settings, "restore", str(complete[0].path), "--yes", "--wait", "60")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _snapshot(settings) == expected
    check = _ctx(settings, "validate")
    assert check.returncode == 0, check.stdout
