"""One writer at a time: real `ctx` processes racing on one store.

A writer is held at a known point without sleeps: the test holds the lock, starts the writer with --wait, waits
until PostgreSQL shows it queued (pg_locks + its application_name), stops it with SIGSTOP and lets go: PostgreSQL
grants the stopped writer the lock, which it then holds for as long as the test needs; SIGCONT lets it finish. Every test ends with `ctx validate` exit 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from coditect_ctx import stack as stack_job
from coditect_ctx.config import _read_env_file
from coditect_ctx.migrate import run_migrate
from coditect_ctx.stores import Store
from coditect_ctx.stores.lock import LOCK_KEYS, parse_application_name

from .conftest import SAMPLES, _short_tmp, _start, free_port, make_settings, settings_env
from .conftest import run_ctx as ctx

DEMO = SAMPLES / "coditect-demo"
CHECKPOINT = "MEMORY-CONTEXT/checkpoints/2025-03-05T09-30-00Z-Redis-cache-eviction-policy-tuned.md"
BUSY = 75


def _env(settings) -> dict:
    return {**os.environ, **settings_env(settings)}


def spawn(settings, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "coditect_ctx", *args], env=_env(settings), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def lock_sessions(settings) -> list[tuple[dict | None, bool]]:
    """Every session holding or awaiting the writer lock: (parsed application_name, granted)."""
    with Store(settings) as store, store.pg(autocommit=True) as conn:
        rows = conn.execute(
            """SELECT a.application_name, l.granted FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.objsubid = 2""", LOCK_KEYS,
        ).fetchall()
    return [(parse_application_name(name), granted) for name, granted in rows]


def wait_for_lock(settings, proc: subprocess.Popen, granted: bool = True) -> None:
    """Until `proc` holds (or, granted=False, waits for) the writer lock; fails if it exits first."""
    deadline = time.monotonic() + 300  # a guard against a hung test, not a measurement
    while time.monotonic() < deadline:
        if any(who and who["pid"] == proc.pid and g == granted for who, g in lock_sessions(settings)):
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before reaching the lock: {out}{err}")
        time.sleep(0.05)
    raise AssertionError("never reached the lock")


@contextmanager
def held(settings, *args: str):
    """A `ctx` writer holding the writer lock, stopped right where it got it; it finishes (and must succeed) on
    leaving. Deterministic: the test holds the lock itself, the writer queues for it (--wait), is stopped while it
    waits inside PostgreSQL, and PostgreSQL hands it the lock when the test lets go."""
    with Store(settings) as store:
        gate = store.writer_lock("test")
        gate.__enter__()
        try:
            proc = spawn(settings, *args, "--wait", "600")
            wait_for_lock(settings, proc, granted=False)
            os.kill(proc.pid, signal.SIGSTOP)
        finally:
            gate.__exit__(None, None, None)
    try:
        wait_for_lock(settings, proc)
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err


def assert_busy(result: subprocess.CompletedProcess, holder: subprocess.Popen, command: str) -> None:
    assert result.returncode == BUSY, result.stdout + result.stderr
    assert f"`ctx {command}` (pid {holder.pid} on {socket.gethostname()[:20]}" in result.stderr, result.stderr
    assert "since 20" in result.stderr and "--wait" in result.stderr
    assert "Traceback" not in result.stderr


def demo_copy(tmp_path: Path) -> Path:
    """The samples in a folder the test may change."""
    target = tmp_path / "coditect-demo"
    shutil.copytree(DEMO, target)
    return target


def change(source: Path, text: str) -> None:
    with (source / CHECKPOINT).open("a", encoding="utf-8") as fh:
        fh.write(f"\n\n{text}\n")


def migrated_then_changed(settings, tmp_path: Path, note: str) -> Path:
    """A copy of the samples, migrated, then one checkpoint changed: the next migrate has work to do."""
    source = demo_copy(tmp_path)
    assert run_migrate(settings, [source]).exit_code == 0
    change(source, note)
    return source


def assert_validates(settings, *extra: str) -> None:
    result = ctx(settings, "validate", *extra)
    assert result.returncode == 0, result.stdout + result.stderr


def test_second_migrate_exits_75_or_waits_and_readers_are_never_blocked(fresh_stack, tmp_path):
    settings = fresh_stack
    source = migrated_then_changed(settings, tmp_path, "A later note: maxmemory-policy allkeys-lru kept for the session cache.")
    with held(settings, "migrate", str(source)) as first:
        busy = ctx(settings, "migrate", str(source))
        assert_busy(busy, first, "migrate")
        as_json = json.loads(ctx(settings, "migrate", str(source), "--json").stdout)
        assert as_json["ok"] is False and as_json["holder"]["pid"] == first.pid
        assert as_json["holder"]["command"] == "ctx migrate"
        # readers neither take the lock nor wait for it
        for reader in (("status",), ("search", "redis eviction", "--mode", "text"), ("show", "nothing-like-this"),
                       ("health",), ("validate",), ("backup",)):
            result = ctx(settings, *reader)
            assert result.returncode != BUSY and "Traceback" not in result.stderr, (reader, result.stderr)
        assert ctx(settings, "search", "redis eviction", "--mode", "text").returncode == 0
        # a second migrate with --wait queues behind the first, visibly (its session awaits the lock) ...
        second = spawn(settings, "migrate", str(source), "--wait", "600")
        wait_for_lock(settings, second, granted=False)
        change(source, "And later still: the eviction alert threshold moved to 90 %.")
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, out + err  # ... and runs once the first is done
    assert "waiting up to 600 s for `ctx migrate`" in err
    assert_validates(settings)  # the last content is in PostgreSQL, and its vectors are the current ones


def test_sigkilled_holder_releases_the_lock_at_once(fresh_stack, tmp_path):
    settings = fresh_stack
    source = demo_copy(tmp_path)
    proc = spawn(settings, "migrate", str(source))
    wait_for_lock(settings, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    result = ctx(settings, "migrate", str(source))  # no --wait: PostgreSQL itself released the dead holder's lock
    assert result.returncode == 0, result.stdout + result.stderr
    assert_validates(settings)


def test_migrate_and_validate_repair_take_turns(fresh_stack, tmp_path):
    settings = fresh_stack
    source = migrated_then_changed(settings, tmp_path, "Eviction revisited after the load test.")
    with held(settings, "migrate", str(source)) as first:
        assert_busy(ctx(settings, "validate", "--repair"), first, "migrate")
        assert_busy(ctx(settings, "setup"), first, "migrate")
        assert_busy(ctx(settings, "down", "--volumes", "--yes"), first, "migrate")
        assert ctx(settings, "status").returncode == 0  # down --volumes deleted nothing
    with Store(settings) as store, store.pg() as conn:  # vectors whose rows look orphaned to a stale read
        conn.execute("UPDATE checkpoints SET embedded_sha256 = NULL")
        conn.commit()
    with held(settings, "validate", "--repair") as repair:
        assert_busy(ctx(settings, "migrate", str(source)), repair, "validate --repair")
    assert_validates(settings)


def test_restore_and_backup_while_migrate_writes(fresh_stack, tmp_path, models_dir):
    settings = fresh_stack
    source = demo_copy(tmp_path)
    assert run_migrate(settings, [source]).exit_code == 0
    before = json.loads(ctx(settings, "backup", "--json").stdout)["path"]
    change(source, "Eviction: volatile-lru tried and dropped.")
    with held(settings, "migrate", str(source)) as first:
        assert_busy(ctx(settings, "restore", before, "--yes"), first, "migrate")
        during = ctx(settings, "backup", "--json")  # a reader: neither blocked nor blocking
        assert during.returncode == 0, during.stderr
        during = json.loads(during.stdout)["path"]
    assert_validates(settings)  # the refused restore changed nothing
    with held(settings, "restore", before, "--yes") as restore:
        assert_busy(ctx(settings, "migrate", str(source)), restore, "restore")
    assert_validates(settings, "--no-files")
    assert ctx(settings, "migrate", str(source)).returncode == 0
    assert_validates(settings)
    # the backup taken during the migrate restores into a fresh store, and that store validates
    other = make_settings(_short_tmp("ctx-f-"))
    _start(other, models_dir)
    try:
        restored = ctx(other, "restore", during, "--yes")
        assert restored.returncode == 0, restored.stdout + restored.stderr
        repaired = ctx(other, "validate", "--repair", "--no-files")  # rows the backup listed as not embedded
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert ctx(other, "migrate", str(source)).returncode == 0
        assert_validates(other)
    finally:
        stack_job.down(other, volumes=True)


def test_racing_first_setups_make_one_set_of_secrets(models_dir):
    home = _short_tmp("ctx-r-")
    (home / "models").symlink_to(models_dir, target_is_directory=True)
    env = {"CTX_HOME": str(home), "CTX_RUNTIME": "local", "CTX_PG_PORT": str(free_port()),
           "CTX_CHROMA_PORT": str(free_port()), "CTX_REDIS_PORT": str(free_port())}
    run = {**os.environ, **env}
    procs = [subprocess.Popen([sys.executable, "-m", "coditect_ctx", "setup"], env=run, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True) for _ in range(2)]
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, out + err
        secrets = _read_env_file(home / ".env")
        assert sorted(secrets) == ["CTX_CHROMA_TOKEN", "CTX_PG_PASSWORD", "CTX_REDIS_PASSWORD"]
        assert not list(home.glob(".env*.tmp"))
        validate = subprocess.run([sys.executable, "-m", "coditect_ctx", "validate"], env=run, capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL)
        assert validate.returncode == 0, validate.stdout + validate.stderr  # the services took the secrets .env holds
    finally:
        subprocess.run([sys.executable, "-m", "coditect_ctx", "down"], env=run, capture_output=True)
        # with PostgreSQL down nobody can hold the lock: down --volumes goes ahead
        gone = subprocess.run([sys.executable, "-m", "coditect_ctx", "down", "--volumes", "--yes"], env=run,
                              capture_output=True, text=True)
        assert gone.returncode == 0, gone.stderr
        assert not (home / "postgres").exists()
