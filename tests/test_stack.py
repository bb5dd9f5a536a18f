"""The stack on the embedded default: setup, down, status, secrets, ports, pid files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil

import pytest

from coditect_ctx import stack
from coditect_ctx.config import load_settings
from coditect_ctx.errors import PortInUseError
from coditect_ctx.runtime import procs
from coditect_ctx.runtime.local import LocalRuntime
from coditect_ctx.stores import Store

from .conftest import _short_tmp, make_settings, settings_env


def _listening(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":
                if len(addr) == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
                else:
                    found.add("ipv6:" + addr)
    return found


def test_setup_twice_changes_nothing(stack, cli):
    result = cli(stack, "setup", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema_applied"] == [] and data["collections_created"] == []
    assert data["changed"] is False
    assert data["schema_version"] >= 1


def test_status_reports_services_counts_and_sizes(stack, cli):
    result = cli(stack, "status", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert {s["name"]: s["running"] for s in data["services"]} == {"postgres": True, "chroma": True, "redis": True}
    assert data["services"][0]["version"].startswith("18")
    assert data["tables"]["db_metadata"] == 1
    assert set(data["collections"]) == {
        "sessions_embeddings", "checkpoints_embeddings", "patterns_embeddings", "messages_embeddings"}
    assert data["database_size"] > 0 and data["table_sizes"]["sessions"] > 0
    human = cli(stack, "status")
    assert "postgres" in human.stdout and "sessions_embeddings" in human.stdout


def test_services_listen_on_loopback_only(stack):
    for port in (stack.pg_port, stack.chroma_port, stack.redis_port):
        assert _listening(port) == {"127.0.0.1"}, f"port {port}"


def test_env_file_is_private_and_secrets_never_printed(stack, cli):
    env_file = stack.home / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    secrets = [stack.pg_password, stack.redis_password, stack.chroma_token]
    assert all(len(s) >= 32 for s in secrets)
    outputs = []
    for args in (["setup"], ["setup", "--json"], ["status"], ["status", "--json"], ["health", "--format", "json"],
                 ["health", "--format", "nagios"], ["health", "--format", "prometheus"], ["logs", "postgres"]):
        r = cli(stack, *args)
        outputs.append(r.stdout + r.stderr)
    joined = "\n".join(outputs)
    for secret in secrets:
        assert secret not in joined
    # nor on the command line of any process ps can see
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    for secret in secrets:
        assert secret not in ps


def test_passwords_are_random_per_store(tmp_path):
    a = make_settings(tmp_path / "a")
    b = make_settings(tmp_path / "b")
    assert a.pg_password != b.pg_password
    # a second call keeps the first password (a running server keeps working)
    again = make_settings(tmp_path / "a")
    assert again.pg_password == a.pg_password


def test_down_then_setup_keeps_every_row(fresh_stack, cli):
    with Store(fresh_stack) as store, store.pg() as conn:
        conn.execute("INSERT INTO submodule_registry (name) VALUES ('keep-me')")
        conn.commit()
    result = cli(fresh_stack, "down")
    assert result.exit_code == 0, result.stderr
    assert not any(s.running for s in LocalRuntime(fresh_stack).services())
    status = cli(fresh_stack, "status", "--json")
    assert status.exit_code == 3  # services down is reported by exit code too
    assert cli(fresh_stack, "setup").exit_code == 0
    with Store(fresh_stack) as store, store.pg() as conn:
        assert conn.execute("SELECT count(*) FROM submodule_registry WHERE name = 'keep-me'").fetchone()[0] == 1


def test_taken_port_gives_clear_error(tmp_path, cli):
    settings = make_settings(tmp_path / "h")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", settings.pg_port))
        blocker.listen()
        with pytest.raises(PortInUseError) as err:
            stack.setup(settings, prepare_model=False)
        assert str(settings.pg_port) in err.value.message and "CTX_PG_PORT" in err.value.hint
        result = cli(settings, "setup")
        assert result.exit_code == 3
        assert f"port {settings.pg_port}" in result.stderr
    stack.down(settings)


def test_stale_pid_files_are_cleaned(fresh_stack, cli):
    runtime = LocalRuntime(fresh_stack)
    runtime.stop()
    # a crash or reboot leaves pid files naming processes that are gone (or a pid reused by something else)
    (runtime.run / "redis.pid").write_text("999999\n")
    (runtime.run / "chroma.pid").write_text(f"{os.getpid()}\n")  # alive, but not chroma
    result = cli(fresh_stack, "setup")
    assert result.exit_code == 0, result.stderr
    assert all(s.running for s in runtime.services())
    assert procs.read_pid(runtime.run / "redis.pid") != 999999


def _stranger(argv0: str, cwd: Path) -> subprocess.Popen:
    """An unrelated live process (sleep) whose command line reads `argv0`, started through a shell."""
    proc = subprocess.Popen(["bash", "-c", f'exec -a "{argv0}" sleep 600'], cwd=cwd, start_new_session=True)
    deadline = time.monotonic() + 60
    while argv0 not in " ".join(psutil.Process(proc.pid).cmdline()):
        assert time.monotonic() < deadline, "the stranger never exec'd"
        time.sleep(0.05)
    return proc


def test_a_stranger_on_the_pid_is_never_taken_for_a_service(fresh_stack, cli, tmp_path):
    """A pid file naming a live process whose command line names the service and this CTX_HOME is not enough."""
    runtime = LocalRuntime(fresh_stack)
    runtime.stop()
    chroma_like = _stranger(f"chroma run --path {runtime.chroma_dir}", tmp_path)
    redis_like = _stranger(f"redis-server {runtime.redis_dir}/redis.conf", tmp_path)
    try:
        # a reboot leaves the bare pid; for Redis even the stranger's own start time is recorded (only the folder
        # is left to tell it apart)
        (runtime.run / "chroma.pid").write_text(f"{chroma_like.pid}\n")
        (runtime.run / "redis.pid").write_text(f"{redis_like.pid} {procs.start_time(redis_like.pid)}\n")
        result = cli(fresh_stack, "setup")
        assert result.exit_code == 0, result.stderr
        assert "already running" not in result.stdout + result.stderr
        assert all(s.running for s in runtime.services())
        assert procs.read_pid(runtime.run / "chroma.pid") not in (None, chroma_like.pid)
        assert procs.read_pid(runtime.run / "redis.pid") not in (None, redis_like.pid)
        assert cli(fresh_stack, "down").exit_code == 0
        assert chroma_like.poll() is None and redis_like.poll() is None, "ctx stopped a process that is not its own"
    finally:
        for proc in (chroma_like, redis_like):
            proc.kill()
            proc.wait()


def test_setup_right_after_the_postmaster_was_sigkilled(fresh_stack, cli):
    """A SIGKILLed postmaster stays a zombie until reaped (here its parent is init, which may never reap it):
    setup must not call it running, wait for its backends to exit, and start a new server."""
    runtime = LocalRuntime(fresh_stack)
    postmaster = procs.read_pid(runtime.pg_data / "postmaster.pid")
    os.kill(postmaster, signal.SIGKILL)
    result = cli(fresh_stack, "setup")
    assert result.exit_code == 0, result.stderr
    assert "postgres: started" in result.stdout + result.stderr
    assert procs.read_pid(runtime.pg_data / "postmaster.pid") != postmaster
    with Store(fresh_stack) as store, store.pg() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cache_off_without_redis(cli):
    # a home outside pytest's basetemp, as every started store has: a second pytest session resets that folder to
    # 0700, and ctx-postgres (as root) could no longer pass through it to its data directory
    settings = make_settings(_short_tmp("ctx-nr-"), redis_server="none")
    try:
        result = stack.setup(settings, prepare_model=False)
        assert result.cache.startswith("disabled")
        health = cli(settings, "health", "--format", "nagios")
        assert health.exit_code == 0, health.stdout
        assert "cache_enabled'=0" in health.stdout
        status = json.loads(cli(settings, "status", "--json").stdout)
        redis = [s for s in status["services"] if s["name"] == "redis"][0]
        assert redis["extra"]["disabled"] and "disabled" in redis["detail"]
    finally:
        stack.down(settings, volumes=True)
        shutil.rmtree(settings.home, ignore_errors=True)


def test_settings_precedence(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".env").write_text("CTX_PG_PORT=1111\nCTX_REDIS_PORT=2222\nCTX_CHROMA_PORT=3333\n")
    monkeypatch.setenv("CTX_HOME", str(home))
    monkeypatch.setenv("CTX_REDIS_PORT", "4444")
    s = load_settings(chroma_port=5555)
    assert (s.pg_port, s.redis_port, s.chroma_port) == (1111, 4444, 5555)  # .env < env < flag
    assert load_settings().runtime == "auto"
    monkeypatch.delenv("CTX_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_settings().home == tmp_path / "xdg" / "ctx"


def test_bad_setting_is_a_clear_error(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CTX_PG_PORT", "not-a-port")
    result = cli(None, "--home", str(tmp_path), "status")
    assert result.exit_code == 2
    assert "CTX_PG_PORT" in result.stderr


def test_version_and_help_list_every_command(cli):
    from coditect_ctx import __version__

    assert cli(None, "--version").stdout.strip() == f"ctx {__version__}"
    help_text = cli(None, "--help").stdout
    for command in ("setup", "status", "down", "health", "logs"):
        assert command in help_text


def test_down_volumes_needs_confirmation_when_not_a_terminal(fresh_stack):
    env = {**os.environ, **settings_env(fresh_stack)}
    proc = subprocess.run([sys.executable, "-m", "coditect_ctx", "down", "--volumes"], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert (fresh_stack.home / "postgres" / "data" / "PG_VERSION").exists()
    proc = subprocess.run([sys.executable, "-m", "coditect_ctx", "down", "--volumes", "--yes"], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert not (fresh_stack.home / "postgres" / "data").exists()
