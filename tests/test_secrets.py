"""Secrets in ctx itself: never in a repr, a traceback, the .env quoting, a child's environment, or left behind
by an interrupted pg_dump."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from coditect_ctx.config import load_settings
from coditect_ctx.runtime.external import ExternalRuntime
from coditect_ctx.runtime.local import LocalRuntime

from .conftest import free_port, make_settings

# characters a generated or hand-written secret may hold, each a hazard somewhere (URL, shell, .env, regex)
PG_SECRET = "pg-Sekr1t/@:%$x"
REDIS_SECRET = "redis-Sekr1t#=x"
CHROMA_SECRET = "chroma-Sekr1t'x"
URL_SECRET = "url-Sekr1t"


def _secrets_in(text: str, values) -> list[str]:
    return [v for v in values if v in text]


def test_settings_and_endpoints_hide_secrets_in_repr_and_str(tmp_path):
    settings = make_settings(tmp_path / "home")  # real generated secrets in a real .env
    generated = [settings.pg_password, settings.redis_password, settings.chroma_token]
    assert all(len(v) >= 32 for v in generated)
    endpoints = LocalRuntime(settings).endpoints()
    for obj in (settings, endpoints):
        for text in (repr(obj), str(obj), f"{obj}", repr([obj]), repr({"x": obj})):
            assert _secrets_in(text, generated) == [], text
    assert "pg_password='***'" in repr(settings) and "redis_url='redis://:***@127.0.0.1:" in repr(endpoints)
    assert "pg_url='postgresql://ctx:***@127.0.0.1:" in repr(endpoints)

    external = load_settings(
        runtime="external", pg_url=f"postgresql://admin:{URL_SECRET}@db.example.com:5432/ctx?sslmode=require",
        redis_url=f"rediss://:{URL_SECRET}2@cache.example.com:6380/0", chroma_url=f"https://u:{URL_SECRET}3@chroma.example.com",
        chroma_token=CHROMA_SECRET, pg_password=PG_SECRET, redis_password=REDIS_SECRET,
    )
    ep = ExternalRuntime(external).endpoints()
    for obj in (external, ep):
        text = repr(obj) + str(obj)
        assert _secrets_in(text, [URL_SECRET, CHROMA_SECRET, PG_SECRET, REDIS_SECRET]) == [], text
        assert "postgresql://admin:***@db.example.com:5432/ctx?sslmode=require" in text  # the rest stays readable


def test_debug_traceback_of_a_real_failure_shows_no_secret(tmp_path):
    # the external runtime against closed ports: a real failure, shown as a traceback because CTX_DEBUG=1
    closed = free_port()
    env = {
        **os.environ, "CTX_DEBUG": "1", "CTX_HOME": str(tmp_path / "home"), "CTX_RUNTIME": "external", "CTX_TIMEOUT": "1",
        "CTX_PG_URL": f"postgresql://admin:{URL_SECRET}@127.0.0.1:{closed}/ctx",
        "CTX_REDIS_URL": f"redis://:{REDIS_SECRET}@127.0.0.1:{closed}/0",
        "CTX_CHROMA_URL": f"http://127.0.0.1:{closed}", "CTX_CHROMA_TOKEN": CHROMA_SECRET,
    }
    proc = subprocess.run([sys.executable, "-m", "coditect_ctx", "backup"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr, proc.stderr
    assert _secrets_in(proc.stdout + proc.stderr, [URL_SECRET, REDIS_SECRET, CHROMA_SECRET]) == [], proc.stderr


# -- child processes: no CTX_* secret in their environment; pg_dump ended with ctx ---------------------------
def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if item)


def _children(ppid: int, name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("Name", "").strip() == name and fields.get("PPid", "").strip() == str(ppid):
            found.append(int(entry))
    return found


def _pg_dumps_of(settings) -> list[int]:
    """Every pg_dump process running against this store's port, whoever its parent."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"pg_dump") and str(settings.pg_port).encode() in args:
                found.append(int(entry))
    return found


def test_child_processes_get_no_ctx_secrets_and_interrupted_pg_dump_is_ended(tmp_path, monkeypatch, models_dir):
    from coditect_ctx import backup as bk
    from coditect_ctx import stack as stack_job
    from coditect_ctx.runtime import pgtools, procs
    from coditect_ctx.stores import Store

    from .conftest import _short_tmp, settings_env

    secrets_env = {
        "CTX_PG_PASSWORD": PG_SECRET, "CTX_REDIS_PASSWORD": REDIS_SECRET, "CTX_CHROMA_TOKEN": CHROMA_SECRET,
        "CTX_PG_URL": f"postgresql://ctx:{URL_SECRET}@127.0.0.1:1/x", "CTX_REDIS_URL": f"redis://:{URL_SECRET}@127.0.0.1:1/0",
    }
    for key, value in secrets_env.items():
        monkeypatch.setenv(key, value)
    secret_values = [PG_SECRET, REDIS_SECRET, CHROMA_SECRET, URL_SECRET]

    # the helper: nothing of ctx's own unless allowed by name; PostgreSQL tools get exactly their password
    assert not [k for k in procs.child_env() if k.startswith("CTX_")]
    assert procs.child_env(allow=["CTX_CHROMA_TOKEN"])["CTX_CHROMA_TOKEN"] == CHROMA_SECRET
    tool = pgtools.tool_env(PG_SECRET)
    assert tool["PGPASSWORD"] == PG_SECRET and not [k for k in tool if k.startswith("CTX_")]

    settings = make_settings(_short_tmp("ctx-sec-"))  # secrets from the environment, as an operator may give them
    assert settings.pg_password == PG_SECRET and settings.redis_password == REDIS_SECRET
    stack_job.setup(settings, prepare_model=False)
    (settings.home / "models").symlink_to(models_dir, target_is_directory=True)
    try:
        pids = {
            "postgres": int((settings.home / "postgres" / "data" / "postmaster.pid").read_text().split()[0]),
            "chroma": int((settings.home / "run" / "chroma.pid").read_text().split()[0]),
            "redis": int((settings.home / "run" / "redis.pid").read_text().split()[0]),
        }
        for service, pid in pids.items():
            env = _environ(pid)
            assert env, service  # readable: we are its user or root
            assert [k for k in env if k.startswith("CTX_")] == [], service
            assert _secrets_in("\n".join(f"{k}={v}" for k, v in env.items()), secret_values) == [], service

        for sig, code, line in ((signal.SIGTERM, 143, "Terminated."), (signal.SIGINT, 130, "Interrupted.")):
            with Store(settings) as store:
                locker = store.pg()
                locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")  # pg_dump waits: reliably mid-dump
                proc = subprocess.Popen([sys.executable, "-m", "coditect_ctx", "backup"],
                                        env={**os.environ, **settings_env(settings)}, cwd=tmp_path,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
                try:
                    deadline = time.monotonic() + 90
                    while not _children(proc.pid, "pg_dump") and proc.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.05)
                    dumps = _children(proc.pid, "pg_dump")
                    assert dumps, f"no pg_dump child of ctx: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}"
                    env = _environ(dumps[0])
                    assert env["PGPASSWORD"] == PG_SECRET  # the one secret pg_dump needs
                    assert [k for k in env if k.startswith("CTX_")] == []
                    assert _secrets_in("\n".join(env.values()), [REDIS_SECRET, CHROMA_SECRET, URL_SECRET]) == []
                    os.kill(proc.pid, sig)  # to ctx alone, not its process group
                    out, err = proc.communicate(timeout=60)
                finally:
                    locker.rollback()
                    locker.close()
                    if proc.poll() is None:
                        proc.kill()
            assert proc.returncode == code, err
            assert err.strip().splitlines()[-1] == line and "Traceback" not in err and out == "", err  # one line, after progress
            assert _pg_dumps_of(settings) == []  # no orphan pg_dump left running
            assert [b for b in bk.list_backups(settings.backups_path) if b.complete] == []

        # a pg_dump that cannot finish within CTX_PG_TOOL_TIMEOUT is ended, and the backup fails in one line
        with Store(settings) as store:
            locker = store.pg()
            locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            try:
                proc = subprocess.run([sys.executable, "-m", "coditect_ctx", "backup"], capture_output=True, text=True,
                                      env={**os.environ, **settings_env(settings), "CTX_PG_TOOL_TIMEOUT": "2"},
                                      cwd=tmp_path, timeout=300)
            finally:
                locker.rollback()
                locker.close()
        assert proc.returncode == 3, proc.stderr
        assert "pg_dump did not finish within 2 s and was stopped" in proc.stderr and "CTX_PG_TOOL_TIMEOUT" in proc.stderr
        assert _pg_dumps_of(settings) == []
        assert [b for b in bk.list_backups(settings.backups_path) if b.complete] == []
    finally:
        stack_job.down(settings, volumes=True)


# -- .env: python-dotenv's own quoting, read without interpolation ------------------------------------------
TRICKY = {
    "CTX_PG_PASSWORD": "it's a \"pass\" $HOME ${X} # not a comment = \\ end\\",
    "CTX_REDIS_PASSWORD": "  spaced ' and \\' and \\\\ ",
    "CTX_CHROMA_TOKEN": "${X}$X'$'\"#=",
    "CTX_PG_URL": "postgresql://u:p%40ss'$x@db.example.com:5432/ctx?sslmode=require#frag",
}


def test_env_file_round_trips_every_character(tmp_path, monkeypatch):
    from coditect_ctx.config import _write_env_file, ensure_secrets

    monkeypatch.setenv("X", "EXPANDED")  # reading must not expand ${X} or $X
    home = tmp_path / "home"
    home.mkdir()
    _write_env_file(home / ".env", TRICKY)
    assert (home / ".env").stat().st_mode & 0o777 == 0o600
    settings = load_settings(home=str(home))
    assert (settings.pg_password, settings.redis_password, settings.chroma_token, settings.pg_url) == tuple(TRICKY.values())

    # a hand-kept .env with loose permissions: setup makes it private again, and keeps every value and comment
    env_file = home / ".env"
    env_file.write_text("# mine\n" + env_file.read_text())
    env_file.chmod(0o644)
    ensured = ensure_secrets(load_settings(home=str(home)))
    assert env_file.stat().st_mode & 0o777 == 0o600 and env_file.read_text().startswith("# mine\n")
    assert ensured.pg_password == TRICKY["CTX_PG_PASSWORD"] and ensured.chroma_token == TRICKY["CTX_CHROMA_TOKEN"]
    again = load_settings(home=str(home))
    assert (again.pg_password, again.redis_password, again.chroma_token, again.pg_url) == tuple(TRICKY.values())
    assert sorted(p.name for p in home.iterdir()) == [".env"]  # no temporary file left


# -- rotating the secrets of a stopped store -----------------------------------------------------------------
def test_rotating_secrets_of_a_stopped_store_is_editing_env_then_setup(fresh_stack, tmp_path):
    from coditect_ctx import stack as stack_job
    from coditect_ctx.chroma_http import ChromaConnection, ChromaHTTPError
    from coditect_ctx.config import _write_env_file, pg_url_for
    from coditect_ctx.runtime import probes
    from coditect_ctx.runtime.base import loopback_endpoints
    from coditect_ctx.stores import Store

    from .conftest import settings_env

    old = fresh_stack
    with Store(old) as store:
        store.pg().execute("CREATE TABLE rotation_probe (x int)").connection.commit()
    stack_job.down(old)
    new_pg, new_redis, new_token = "new-pg-'$x${X}\\ #=", "new-redis-'$x #=", "new-token-$x${X}"
    _write_env_file(old.env_file, {"CTX_PG_PASSWORD": new_pg, "CTX_REDIS_PASSWORD": new_redis,
                                   "CTX_CHROMA_TOKEN": new_token})
    proc = subprocess.run([sys.executable, "-m", "coditect_ctx", "setup"], env={**os.environ, **settings_env(old)},
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _secrets_in(proc.stdout + proc.stderr, [new_pg, new_redis, new_token, old.pg_password, old.redis_password]) == []

    new = load_settings(home=str(old.home), runtime="local", pg_port=old.pg_port, chroma_port=old.chroma_port,
                        redis_port=old.redis_port)
    assert (new.pg_password, new.redis_password, new.chroma_token) == (new_pg, new_redis, new_token)
    url = lambda password: pg_url_for(old.pg_user, password, "127.0.0.1", old.pg_port, old.pg_db)  # noqa: E731
    assert probes.pg_ready(url(new_pg)) and not probes.pg_ready(url(old.pg_password))
    assert probes.redis_ready(loopback_endpoints(new).redis_url)
    assert not probes.redis_ready(loopback_endpoints(old).redis_url)
    chroma_url = loopback_endpoints(new).chroma_url
    with closing(ChromaConnection.for_settings(new, chroma_url, new_token)) as client:
        assert len(client.list_collections()) >= 1
    with closing(ChromaConnection.for_settings(new, chroma_url, old.chroma_token)) as client:
        with pytest.raises(ChromaHTTPError):
            client.list_collections()
    with Store(new) as store:  # the data is still there
        assert store.pg().execute("SELECT count(*) FROM rotation_probe").fetchone()[0] == 0
