"""ctx under faults: bad settings, unusable folders, hostile file names, crashes nobody foresaw, dead or hung
services. Each case is tried on real processes and real services; each must end in one `Error:` line, a
`Hint:` line and the README's exit code, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CORPUS, SAMPLES, free_port, settings_env

DEMO_CORE = SAMPLES / "coditect-demo" / "submodules" / "demo-core"


def _ctx(*args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`ctx` as cron runs it: a real process, no terminal."""
    return subprocess.run([sys.executable, "-m", "coditect_ctx", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def _one_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The run failed the friendly way: exit `code`, an Error and a Hint line naming `words`, no traceback."""
    err = proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{err}"
    assert "Traceback" not in err and "Traceback" not in proc.stdout, err
    assert "Error: " in err and "Hint: " in err, err
    for word in words:
        assert word in err, f"{word!r} not in:\n{err}"
    return err


def _pids(home: Path) -> list[int]:
    return [int(p.read_text().split()[0]) for p in (home / "run").glob("*.pid") if p.read_text().strip()]


def _kill_all(home: Path) -> None:
    for pid in _pids(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# -- settings are range-checked when read -----------------------------------------------------------------
@pytest.mark.parametrize("setting, value", [("CTX_PG_PORT", "70000"), ("CTX_PG_PORT", "0"),
                                            ("CTX_REDIS_PORT", "-5"), ("CTX_TIMEOUT", "0"),
                                            ("CTX_CHROMA_READ_TIMEOUT", "-1"), ("CTX_TIMEOUT", "nan")])
def test_out_of_range_setting_is_refused_before_anything_starts(tmp_path, setting, value):
    home = tmp_path / "home"
    env = {"CTX_HOME": str(home), "CTX_RUNTIME": "local", "CTX_PG_PORT": str(free_port()),
           "CTX_CHROMA_PORT": str(free_port()), "CTX_REDIS_PORT": str(free_port()), setting: value}
    try:
        proc = _ctx("setup", env=env, timeout=300)
        _one_error(proc, 2, setting, value)
        assert not _pids(home), "a service was started with a setting that cannot work"
    finally:
        _kill_all(home)


@pytest.mark.parametrize("setting, value, wanted", [("CTX_PG_PORT", "abc", "Give a whole number."),
                                                    ("CTX_EMBED_MAX_CHUNKS", "1.5", "Give a whole number."),
                                                    ("CTX_TIMEOUT", "soon", "Give a number.")])
def test_unparseable_setting_says_what_to_give(tmp_path, setting, value, wanted):
    proc = _ctx("status", env={"CTX_HOME": str(tmp_path / "home"), "CTX_RUNTIME": "local", setting: value}, timeout=120)
    assert wanted in _one_error(proc, 2, setting, repr(value))


def test_zero_timeout_is_a_config_error_not_critical_services(stack):
    proc = _ctx("health", env={**settings_env(stack), "CTX_TIMEOUT": "0"})
    err = _one_error(proc, 2, "CTX_TIMEOUT")
    assert "CRITICAL" not in proc.stdout + err


# -- CTX_HOME that cannot be written --------------------------------------------------------------------
def test_home_that_is_a_file_is_named(tmp_path):
    home = tmp_path / "not-a-folder"
    home.write_text("x")
    proc = _ctx("setup", env={"CTX_HOME": str(home), "CTX_RUNTIME": "local"})
    _one_error(proc, 2, str(home), "not a folder")


def test_immutable_home_is_named(tmp_path):
    """chattr +i: even root cannot create a file in it (as a read-only mount would do)."""
    home = tmp_path / "frozen"
    home.mkdir()
    if subprocess.run(["chattr", "+i", str(home)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        proc = _ctx("setup", env={"CTX_HOME": str(home), "CTX_RUNTIME": "local", "CTX_PG_PORT": str(free_port()),
                                  "CTX_CHROMA_PORT": str(free_port()), "CTX_REDIS_PORT": str(free_port())})
        _one_error(proc, 2, str(home), "not writable")
        assert list(home.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(home)], check=True)


# -- the port-in-use hint ---------------------------------------------------------------------------------
def test_port_in_use_hint_names_a_free_port(tmp_path):
    """The two ports above the taken one are taken too: the hint must skip them and name one that binds."""
    from coditect_ctx.runtime.base import port_is_free

    held = []
    base = free_port()
    try:
        for port in (base, base + 1, base + 2):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                pytest.skip(f"port {port} is not free for the test")
            s.listen()
            held.append(s)
        home = tmp_path / "home"
        proc = _ctx("setup", env={"CTX_HOME": str(home), "CTX_RUNTIME": "local", "CTX_PG_PORT": str(base),
                                  "CTX_CHROMA_PORT": str(free_port()), "CTX_REDIS_PORT": str(free_port())})
        err = _one_error(proc, 3, f"port {base}", "CTX_PG_PORT=")
        suggested = int(err.split("CTX_PG_PORT=")[1].split()[0].rstrip(",)."))
        assert suggested not in (base, base + 1, base + 2)
        assert port_is_free(suggested)
    finally:
        for s in held:
            s.close()
        _kill_all(tmp_path / "home")


# -- health never crashes: UNKNOWN --------------------------------------------------------------------------
def test_health_that_cannot_finish_is_unknown_not_warning(stack, tmp_path):
    """An unforeseen failure (here: --output into a folder that does not exist) is UNKNOWN (3), never 1 (WARNING)."""
    target = tmp_path / "no-such-folder" / "ctx.prom"
    proc = _ctx("health", "--format", "prometheus", "--output", str(target), env=settings_env(stack))
    _one_error(proc, 3, str(target.parent))


def test_health_reads_a_hostile_backup_manifest(stack, tmp_path):
    """A manifest that is JSON but not an object is no backup; health carries on (it used to crash)."""
    dest = tmp_path / "backups"
    (dest / "20260101T000000Z").mkdir(parents=True)
    (dest / "20260101T000000Z" / "manifest.json").write_text("[]")
    proc = _ctx("health", "--json", env={**settings_env(stack), "CTX_BACKUP_DIR": str(dest)})
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    assert proc.returncode == report["exit_code"] == 0, proc.stdout
    assert "backup" not in {c["name"] for c in report["checks"]}


# -- hostile files and names --------------------------------------------------------------------------------
FORGED = "2025-01-05-x\n\x1b[31mok: all files imported\x1b[0m.md"


def _hostile_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "hostile-repo"
    shutil.copytree(DEMO_CORE, repo)
    sessions = repo / "MEMORY-CONTEXT" / "sessions"
    (sessions / "2025-01-01-loop.md").symlink_to("2025-01-01-loop.md")
    (sessions / "2025-01-02-dangling.md").symlink_to("/nonexistent/elsewhere.md")
    (sessions / FORGED).write_bytes(b"")  # empty: reported as failed, under its hostile name
    return repo


def test_symlink_loops_dangling_links_and_forged_names_are_reported_escaped(fresh_stack, tmp_path):
    repo = _hostile_repo(tmp_path)
    env = settings_env(fresh_stack)
    proc = _ctx("migrate", str(repo), env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("failed:")]
    assert any("2025-01-01-loop.md" in line and "symlink loop" in line for line in failed), proc.stderr
    assert any("2025-01-02-dangling.md" in line and "dangling symlink" in line for line in failed), proc.stderr
    assert any("2025-01-05-x\\n\\x1b[31mok: all files imported\\x1b[0m.md" in line for line in failed), proc.stderr
    out = proc.stdout + proc.stderr
    assert "\x1b" not in out
    assert not any(line.startswith("ok: all files imported") for line in out.splitlines())

    as_json = json.loads(_ctx("migrate", str(repo), "--json", env=env).stdout)
    reasons = {f["file"].rsplit("/", 1)[-1]: f["reason"] for per in as_json["sources"].values()
               for s in per.values() for f in s["failures"]}
    assert reasons[FORGED] == "empty file"
    assert reasons["2025-01-01-loop.md"].startswith("symlink loop")
    assert reasons["2025-01-02-dangling.md"].startswith("dangling symlink")


# -- backups and restore under damage and dead services --------------------------------------------------
@pytest.fixture
def migrated(fresh_stack):
    """A store of the test's own holding demo-core, embedded."""
    proc = _ctx("migrate", str(DEMO_CORE), env=settings_env(fresh_stack))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return fresh_stack


def _store_state(settings) -> dict:
    from coditect_ctx.kinds import COLLECTIONS
    from coditect_ctx.stores import Store
    from coditect_ctx.stores import postgres as pg

    with Store(settings) as store, store.pg() as conn:
        state = {t: n for t, n in pg.table_counts(conn).items()}
        state["generation"] = pg.data_generation(conn)
        for name in COLLECTIONS.values():
            state[name] = store.chroma.count(name)
    return state


@pytest.mark.parametrize("part", ["collection", "dump"])
def test_forged_backup_with_a_truncated_gzip_is_refused_before_anything_is_replaced(migrated, tmp_path, part):
    """A collection's gzip (or the PostgreSQL dump) is cut in half and the manifest re-signed: every checksum matches."""
    import hashlib

    from coditect_ctx.backup import MANIFEST, write_manifest

    env = {**settings_env(migrated), "CTX_BACKUP_DIR": str(tmp_path / "backups")}
    taken = _ctx("backup", "--json", env=env)
    assert taken.returncode == 0, taken.stderr
    folder = Path(json.loads(taken.stdout)["path"])
    manifest = json.loads((folder / MANIFEST).read_text())
    name, meta = max(manifest["chroma"]["collections"].items(), key=lambda kv: kv[1]["vectors"])
    if part == "dump":
        meta = {"file": manifest["postgres"]["file"]}
    victim = folder / meta["file"]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    manifest["files"][meta["file"]] = {"sha256": hashlib.sha256(victim.read_bytes()).hexdigest(),
                                       "bytes": victim.stat().st_size}
    del manifest["checksum"]
    write_manifest(folder, manifest)

    before = _store_state(migrated)
    assert before[name] > 0
    # A restore from the backup's Chroma snapshot never reads the portable export (restore.py); the export is what
    # this forgery cuts, so the restore is asked for the portable path, which checks every export first.
    restore = ("restore", folder.name, "--yes") + (("--portable",) if part == "collection" else ())
    for argv in (restore, ("backup", "verify", folder.name)):
        proc = _ctx(*argv, env=env)
        _one_error(proc, 5, meta["file"].rsplit("/", 1)[-1], "nothing was replaced")
    assert _store_state(migrated) == before
    assert _ctx("validate", "--no-files", env=env).returncode == 0


def test_backup_with_chroma_dead_is_a_service_error(migrated, tmp_path):
    from coditect_ctx.runtime import procs
    from coditect_ctx.runtime.local import LocalRuntime

    procs.terminate(procs.read_pid(LocalRuntime(migrated).run / "chroma.pid"))
    dest = tmp_path / "backups"
    proc = _ctx("backup", "--dest", str(dest), env=settings_env(migrated))
    _one_error(proc, 3, "Chroma", "ctx setup")
    assert not [p for p in dest.glob("*") if not p.name.startswith(".")], "a backup was published without vectors"


# -- a service killed while migrate embeds ---------------------------------------------------------------
CORE = CORPUS / "coditect-core"
needs_corpus = pytest.mark.skipif(not CORE.is_dir(), reason="../shared/corpus is absent (it is not part of this repo)")


def _embedded_so_far(settings) -> tuple[int, int]:
    """Rows marked embedded (their current content has its vectors), and their vectors."""
    from coditect_ctx.kinds import TABLES
    from coditect_ctx.stores import postgres as pg
    from coditect_ctx.stores import Store

    records = vectors = 0
    with Store(settings) as store, store.pg() as conn:
        if not pg.schema_version(conn):
            return 0, 0
        for table in TABLES.values():
            n, v = conn.execute(f"SELECT count(*), coalesce(sum(embedded_chunks), 0) FROM {table} "
                                "WHERE embedded_sha256 = content_sha256").fetchone()
            records, vectors = records + n, vectors + int(v)
    return records, vectors


def _migrate_held_after_first_batch(settings, release: Path, *args) -> subprocess.Popen:
    """A real `ctx migrate` of the corpus, held (points.py) right after its first batch is in Chroma and marked in
    PostgreSQL, with more to embed; it goes on once `release` exists. Deterministic: no race with the run's end."""
    env = {**os.environ, **settings_env(settings), "CTX_PAUSE_AT": "embed-batch", "CTX_PAUSE_RELEASE": str(release)}
    proc = subprocess.Popen([sys.executable, "-m", "coditect_ctx", "migrate", str(CORE), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.strip() == "point: embed-batch":
            break
    assert proc.poll() is None, "migrate ended before its first batch was marked: " + "".join(seen)[-2000:]
    assert _embedded_so_far(settings)[0] > 0
    return proc


@needs_corpus
def test_migrate_report_counts_what_was_embedded_before_chroma_died(fresh_stack, tmp_path):
    from coditect_ctx.runtime import procs
    from coditect_ctx.runtime.local import LocalRuntime

    release = tmp_path / "release"
    proc = _migrate_held_after_first_batch(fresh_stack, release, "--json")
    os.kill(procs.read_pid(LocalRuntime(fresh_stack).run / "chroma.pid"), signal.SIGKILL)
    release.touch()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    report = json.loads(out)
    records, vectors = _embedded_so_far(fresh_stack)
    assert records > 0 and report["not_embedded"] > 0
    assert (report["embedded_records"], report["embedded_vectors"]) == (records, vectors)
    assert "chroma" in report["embed_error"]


@needs_corpus
def test_postgres_killed_while_migrate_embeds_is_a_service_error(fresh_stack, tmp_path):
    from coditect_ctx.runtime.local import LocalRuntime

    release = tmp_path / "release"
    proc = _migrate_held_after_first_batch(fresh_stack, release)
    postmaster = int((LocalRuntime(fresh_stack).pg_data / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGKILL)
    release.touch()
    out, err = proc.communicate(timeout=600)
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    _one_error(proc, 3, "PostgreSQL", "ctx setup")


def test_search_with_postgres_hung_is_one_error_naming_it(migrated):
    """A stopped (hung) PostgreSQL accepts connections and never answers: a search, cached or not, says so in one
    line (the data generation is read first, through pgwire.py, which gives up after CTX_TIMEOUT + 2 s)."""
    from coditect_ctx.runtime.local import LocalRuntime

    env = {**settings_env(migrated), "CTX_TIMEOUT": "1"}
    assert _ctx("search", "retry policy", env=env, timeout=120).returncode == 0  # cached from now on
    postmaster = int((LocalRuntime(migrated).pg_data / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)
    try:
        cached = _ctx("search", "retry policy", env=env, timeout=120)
        fresh = _ctx("search", "a question never asked before", "--mode", "text", env=env, timeout=120)
    finally:
        os.kill(postmaster, signal.SIGCONT)
    for proc in (cached, fresh):
        _one_error(proc, 3, "postgres", "ctx status")
    assert _ctx("search", "retry policy", env=env, timeout=120).returncode == 0


# -- Chroma hung or dead: search answers from PostgreSQL, validate has no verdict ---------------------------
def _with_chroma_unavailable(settings, how: str):
    from coditect_ctx.runtime import procs
    from coditect_ctx.runtime.local import LocalRuntime

    # a read timeout far beyond the hang guards below: validate must find the hung server by its own short probe
    env = {**settings_env(settings), "CTX_TIMEOUT": "1", "CTX_CHROMA_READ_TIMEOUT": "3600"}
    pid = procs.read_pid(LocalRuntime(settings).run / "chroma.pid")
    os.kill(pid, signal.SIGSTOP if how == "hung" else signal.SIGKILL)
    try:
        hybrid = _ctx("search", "how should the chroma client retry", "--json", env=env, timeout=120)
        table = _ctx("search", "how should the chroma client retry", env=env, timeout=120)
        semantic = _ctx("search", "retry policy", "--mode", "semantic", env=env, timeout=120)
        text = _ctx("search", "retry policy", "--mode", "text", env=env, timeout=120)
        validate = _ctx("validate", env=env, timeout=300)
        validate_json = _ctx("validate", "--json", env=env, timeout=300)
        backup = _ctx("backup", env=env, timeout=300)
    finally:
        if how == "hung":
            os.kill(pid, signal.SIGCONT)
    assert hybrid.returncode == 1, hybrid.stderr
    data = json.loads(hybrid.stdout)
    assert data["degraded"] == ["semantic"] and data["results"], hybrid.stdout + text.stdout + text.stderr
    assert all("semantic" not in r["scores"] for r in data["results"])
    word = "timed out" if how == "hung" else "no answer"
    assert "warning: no semantic ranking" in hybrid.stderr and word in hybrid.stderr, hybrid.stderr
    assert table.returncode == 1 and "warning: no semantic ranking" in table.stderr and table.stdout.strip()
    _one_error(semantic, 3, "semantic search needs Chroma", "--mode text")
    assert text.returncode == 0 and text.stdout.strip(), text.stderr
    assert validate.returncode == 3, validate.stdout + validate.stderr
    assert "chroma did not answer" in validate.stdout and "wrong vector count" not in validate.stdout
    _one_error(backup, 3, "chroma")
    rows = json.loads(validate_json.stdout)["rows"]  # vectors not counted are not shown as none
    assert rows and all(r["chroma_records"] is None and r["chroma_vectors"] is None for r in rows), rows
    return env


def test_search_and_validate_with_chroma_hung(migrated):
    env = _with_chroma_unavailable(migrated, "hung")
    again = _ctx("search", "how should the chroma client retry", "--json", env=env)  # Chroma answers again
    assert again.returncode == 0 and json.loads(again.stdout)["degraded"] == [], again.stderr  # nothing partial cached
    assert _ctx("validate", env=env).returncode == 0


def test_hybrid_search_with_chroma_hung_gives_the_text_answer_without_waiting_for_it(migrated):
    """Every collection is asked at once, beside the full-text SQL, each answer bounded by CTX_TIMEOUT (not by
    CTX_CHROMA_READ_TIMEOUT): a hung Chroma leaves a hybrid search with exactly the text mode's answer."""
    import threading

    from coditect_ctx.runtime import procs
    from coditect_ctx.runtime.local import LocalRuntime
    from coditect_ctx.search import Searcher, make_query

    from .conftest import with_settings

    settings = with_settings(migrated, timeout=1.0, chroma_read_timeout=3600.0)
    question = "how should the chroma client retry"
    with Searcher(settings) as searcher:
        text = searcher.search(make_query(question, mode="text"), use_cache=False).result
        filtered = searcher.search(make_query(question, mode="text", submodule="demo-core", limit=3), use_cache=False).result
    pid = procs.read_pid(LocalRuntime(settings).run / "chroma.pid")
    answers: dict = {}

    def hybrid() -> None:
        with Searcher(settings) as searcher:
            answers["all"] = searcher.search(make_query(question), use_cache=False).result
            answers["filtered"] = searcher.search(make_query(question, submodule="demo-core", limit=3), use_cache=False).result

    os.kill(pid, signal.SIGSTOP)
    try:
        worker = threading.Thread(target=hybrid, daemon=True)
        worker.start()
        worker.join(120)  # a guard against a hang (the read timeout is an hour), not a measure of speed
        assert not worker.is_alive(), "hybrid search waited for the hung Chroma"
    finally:
        os.kill(pid, signal.SIGCONT)
    for name, alone in (("all", text), ("filtered", filtered)):
        result = answers[name]
        assert result.degraded == ["semantic"] and "timed out" in result.degraded_reason, result.degraded_reason
        assert result.hits and [(h.type, h.id, h.score) for h in result.hits] == [(h.type, h.id, h.score) for h in alone.hits]


def test_search_and_validate_with_chroma_dead(migrated):
    env = _with_chroma_unavailable(migrated, "dead")
    assert _ctx("setup", env=env).returncode == 0
    again = _ctx("search", "how should the chroma client retry", "--json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["degraded"] == [], again.stderr
