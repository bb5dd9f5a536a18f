"""`ctx health`: exit codes per failing service, formats, timeouts, and staying light."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from coditect_ctx.runtime import procs
from coditect_ctx.runtime.local import LocalRuntime

from .conftest import settings_env


def _health(settings, *args, **env_extra):
    """Run `ctx health` the way cron does: a real process, no terminal (the 60 s is a hang guard, not a figure)."""
    env = {**os.environ, **settings_env(settings), **env_extra}
    return subprocess.run([sys.executable, "-m", "coditect_ctx", "health", *args], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)


def test_all_ok(stack):
    proc = _health(stack, "--format", "nagios")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("CTX OK: ") and "|" in line and len(line.splitlines()) == 1
    assert "'disk_used_pct'=" in line


def test_health_goes_where_search_goes_whatever_http_proxy_says(stack):
    """Every Chroma call is direct: a proxy variable pointing nowhere changes no verdict (urllib would follow it)."""
    env = {**os.environ, **settings_env(stack), "http_proxy": "http://127.0.0.1:1", "HTTP_PROXY": "http://127.0.0.1:1",
           "no_proxy": "", "NO_PROXY": ""}
    proc = subprocess.run([sys.executable, "-m", "coditect_ctx", "health", "--json"], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    chroma = [c for c in json.loads(proc.stdout)["checks"] if c["name"] == "chroma"][0]
    assert chroma["status"] == "OK", chroma


def test_json_and_prometheus(stack, tmp_path):
    proc = _health(stack, "--json")
    data = json.loads(proc.stdout)
    assert data["status"] == "OK" and {c["name"] for c in data["checks"]} >= {"postgres", "chroma", "redis", "disk", "drift"}
    prom_file = tmp_path / "ctx.prom"
    proc = _health(stack, "--format", "prometheus", "--output", str(prom_file))
    assert proc.returncode == 0
    text = prom_file.read_text()
    assert text == proc.stdout
    samples = [l for l in text.splitlines() if l and not l.startswith("#")]
    assert all(len(l.rsplit(" ", 1)) == 2 and float(l.rsplit(" ", 1)[1]) >= 0 for l in samples)
    assert 'ctx_check_status{check="postgres"} 0' in samples
    assert not list(tmp_path.glob(".*.tmp"))


def test_postgres_stopped_is_critical_and_named(fresh_stack):
    runtime = LocalRuntime(fresh_stack)
    runtime._pg_ctl(["stop", "-m", "immediate", "-w"])
    proc = _health(fresh_stack, "--format", "nagios")
    assert proc.returncode == 2, proc.stdout
    assert proc.stdout.startswith("CTX CRITICAL") and "PostgreSQL" in proc.stdout


def test_chroma_killed_is_critical(fresh_stack):
    runtime = LocalRuntime(fresh_stack)
    pid = procs.read_pid(runtime.run / "chroma.pid")
    procs.terminate(pid)
    proc = _health(fresh_stack, "--format", "nagios")
    assert proc.returncode == 2 and "chroma CRITICAL" in proc.stdout


def test_redis_killed_is_critical(fresh_stack):
    runtime = LocalRuntime(fresh_stack)
    procs.terminate(procs.read_pid(runtime.run / "redis.pid"))
    proc = _health(fresh_stack, "--format", "nagios")
    assert proc.returncode == 2 and "redis CRITICAL" in proc.stdout


def test_hung_service_times_out_as_critical(fresh_stack):
    """A service that accepts but never answers (SIGSTOP) must not hang health."""
    runtime = LocalRuntime(fresh_stack)
    pid = procs.read_pid(runtime.run / "redis.pid")
    os.kill(pid, 19)  # SIGSTOP
    try:
        proc = _health(fresh_stack, "--format", "nagios", CTX_TIMEOUT="1")
    finally:
        os.kill(pid, 18)  # SIGCONT
    assert proc.returncode == 2 and "redis CRITICAL" in proc.stdout
    assert "timed out" in proc.stdout, proc.stdout  # health gave up on its own timeout, it did not wait the hang out


def test_missing_schema_and_collections_are_critical(fresh_stack):
    from coditect_ctx.stores import Store

    with Store(fresh_stack) as store:
        store.chroma.delete_collection("patterns_embeddings")
    proc = _health(fresh_stack, "--format", "nagios")
    assert proc.returncode == 2 and "patterns_embeddings" in proc.stdout


def test_nothing_running_is_critical_not_a_traceback(tmp_path):
    from .conftest import make_settings

    settings = make_settings(tmp_path / "never-started")
    proc = _health(settings, "--format", "nagios")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_drift_is_a_warning(fresh_stack):
    from coditect_ctx.stores import Store

    with Store(fresh_stack) as store, store.pg() as conn:
        sub = conn.execute("INSERT INTO submodule_registry (name) VALUES ('x') RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO checkpoints (identity, ref, submodule_id, title, content_sha256) "
                     "VALUES ('c1', 'c1', %s, 't', 'abc')", (sub,))
        conn.commit()
    proc = _health(fresh_stack, "--format", "nagios")
    assert proc.returncode == 1 and "drift WARNING" in proc.stdout and "'embeddings_pending'=1" in proc.stdout


def test_health_stays_light(stack):
    env = {**os.environ, **settings_env(stack)}
    code = (
        "import sys; sys.argv=['ctx','health','--format','nagios']\n"
        "from coditect_ctx.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'chromadb', 'transformers', 'onnxruntime', 'docker') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
