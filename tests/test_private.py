"""Private by default: another user of the machine reads no file of the store and uses no service without its secrets.

One store of this module's own goes through setup, migrate, search and backup with the real `ctx` command (which
sets the umask), then its home is walked; as root, the same files and services are tried as `nobody`.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from coditect_ctx.runtime.local import find_redis_server

from .conftest import SAMPLES, _short_tmp, make_settings, settings_env

pytestmark = pytest.mark.slow


# Credentials an operator gives a backup run by environment; the services that run starts must not inherit them.
AWS_MARKER = "ctx-test-aws-secret-7f3c"


def run_ctx(settings, *args: str, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTX_")}
    env.update(settings_env(settings))
    env.update(extra)
    proc = subprocess.run([sys.executable, "-m", "coditect_ctx", *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"ctx {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def used_store(models_dir):
    """A local store after setup, migrate, search and backup, all run by the `ctx` command."""
    from coditect_ctx import stack

    home = _short_tmp("ctx-p-")
    settings = make_settings(home)
    (home / "models").symlink_to(models_dir, target_is_directory=True)
    run_ctx(settings, "setup", AWS_SECRET_ACCESS_KEY=AWS_MARKER, AWS_SESSION_TOKEN=AWS_MARKER)
    run_ctx(settings, "migrate", str(SAMPLES / "coditect-demo"))
    run_ctx(settings, "search", "connection pool")
    run_ctx(settings, "backup")
    yield settings
    stack.down(settings, volumes=True)
    shutil.rmtree(home, ignore_errors=True)


def loose_paths(home: Path) -> list[str]:
    """Paths under `home` (itself included) that others may read, write or enter, or a group may read or write.

    The one allowance: as root, PostgreSQL runs as its own system user, which passes through $CTX_HOME and logs/
    as their group (0710, group ctx-postgres)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(home):
        for path in [Path(dirpath), *(Path(dirpath) / n for n in filenames + dirnames)]:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) or (path != Path(dirpath) and stat.S_ISDIR(st.st_mode)):
                continue  # a folder is checked as its own dirpath; the test's models link points outside
            group_traverse_only = stat.S_ISDIR(st.st_mode) and st.st_mode & 0o070 == 0o010
            if st.st_mode & 0o007 or (st.st_mode & 0o070 and not group_traverse_only):
                out.append(f"{oct(st.st_mode & 0o777)} {path.relative_to(home)}")
    return sorted(out)


def test_nothing_in_the_home_is_readable_or_writable_by_others(used_store):
    home = used_store.home
    assert (home / "chroma" / "chroma.sqlite3").is_file() and list((home / "backups").iterdir())
    assert loose_paths(home) == []


def test_setup_tightens_a_store_made_by_an_older_ctx(used_store):
    home = used_store.home
    os.chmod(home, 0o701)
    os.chmod(home / "chroma", 0o755)
    os.chmod(home / "chroma" / "chroma.sqlite3", 0o644)
    os.chmod(home / "logs" / "chroma.log", 0o644)
    assert loose_paths(home)
    run_ctx(used_store, "setup")
    assert loose_paths(home) == []


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "LC_ALL": "C", "HOME": "/"}  # no CTX_*, no PGPASSWORD, no REDISCLI_AUTH
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=60)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root and runuser")


@needs_root
def test_another_user_reads_no_file(used_store):
    home = used_store.home
    files = [Path(d) / n for d, _, names in os.walk(home) for n in names if not (Path(d) / n).is_symlink()]
    readable = [str(f.relative_to(home)) for f in files if as_nobody("cat", str(f)).returncode == 0]
    assert readable == []
    assert as_nobody("ls", str(home)).returncode != 0


def chroma_call(settings, method: str, path: str, headers: dict, body: dict | None = None) -> int:
    import json
    import urllib.error
    import urllib.request

    base = f"http://127.0.0.1:{settings.chroma_port}/api/v2/tenants/default_tenant/databases/default_database"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={**headers, **({"Content-Type": "application/json"} if data else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_chroma_demands_the_token(used_store):
    s = used_store
    calls = [("GET", "/collections", None), ("POST", "/collections", {"name": "intruder"}),
             ("DELETE", "/collections/sessions_embeddings", None)]
    for headers in ({}, {"Authorization": "Bearer bogus"}, {"X-Chroma-Token": "bogus"},
                    {"Authorization": "Bearer " + s.chroma_token[:-1]}):
        assert [chroma_call(s, m, p, headers, b) for m, p, b in calls] == [403, 403, 403], headers
    assert chroma_call(s, "GET", "/collections/sessions_embeddings", {"Authorization": "Bearer " + s.chroma_token}) == 200
    assert chroma_call(s, "GET", "/collections/intruder", {"Authorization": "Bearer " + s.chroma_token}) in (400, 404)


def test_setup_replaces_a_chroma_run_left_by_an_older_ctx_and_serves_its_data(used_store):
    from coditect_ctx.runtime import procs
    from coditect_ctx.runtime.base import wait_until
    from coditect_ctx.runtime.local import find_chroma
    from coditect_ctx.runtime.probes import chroma_ready
    from coditect_ctx.stores import Store

    s, home = used_store, used_store.home
    with Store(s) as store:
        before = {c["name"]: store.chroma.count(c["name"]) for c in store.chroma.list_collections()}
    assert sum(before.values()) > 0
    pid_file = home / "run" / "chroma.pid"
    assert procs.terminate(procs.live_pid(pid_file, procs.Identity(home / "chroma")))
    procs.spawn([str(find_chroma()), "run", "--path", str(home / "chroma"), "--host", "127.0.0.1", "--port", str(s.chroma_port)],
                pid_file, home / "logs" / "chroma.log", cwd=home / "chroma")
    wait_until("chroma", lambda: chroma_ready(f"http://127.0.0.1:{s.chroma_port}"), 60)
    assert chroma_call(s, "GET", "/collections", {}) == 200  # what an older ctx ran: open to anyone
    assert "restarting it with token authentication" in run_ctx(s, "setup").stderr
    assert chroma_call(s, "GET", "/collections", {}) == 403
    with Store(s) as store:
        assert {c["name"]: store.chroma.count(c["name"]) for c in store.chroma.list_collections()} == before


@needs_root
def test_another_user_cannot_use_the_services_without_the_secrets(used_store):
    s = used_store
    psql = shutil.which("psql") or str(Path(os.environ.get("CTX_PG_BIN", "")) / "psql")
    proc = as_nobody(psql, "-w", "-h", "127.0.0.1", "-p", str(s.pg_port), "-U", s.pg_user, "-d", s.pg_db, "-c", "SELECT 1")
    assert proc.returncode != 0 and "password" in proc.stderr
    redis_cli = find_redis_server(s).with_name("redis-cli")
    proc = as_nobody(str(redis_cli), "-h", "127.0.0.1", "-p", str(s.redis_port), "KEYS", "*")
    assert "NOAUTH" in proc.stdout + proc.stderr
    url = f"http://127.0.0.1:{s.chroma_port}/api/v2/tenants/default_tenant/databases/default_database/collections"
    for argv in (["-X", "GET"], ["-X", "POST", "-H", "Content-Type: application/json", "-d", '{"name": "x"}'],
                 ["-X", "DELETE", "-H", "Authorization: Bearer bogus"]):
        proc = as_nobody("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *argv, url + ("/sessions_embeddings" if "DELETE" in argv else ""))
        assert proc.stdout == "403", argv


SQUATTER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.settimeout(2)
    try:
        c.sendall(b"R" + (8).to_bytes(4, "big") + (3).to_bytes(4, "big"))  # what a fake PostgreSQL says: send the password
        print(repr(c.recv(4096)), flush=True)
    except OSError:
        pass
    c.close()
"""


@needs_root
def test_a_port_another_user_holds_while_the_store_is_down_is_sent_no_secret(used_store):
    """After `ctx down` (a reboot, a crash) anyone may listen on the store's ports; ctx refuses to talk to them."""
    s = used_store
    run_ctx(s, "down")
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")  # one that nobody may run (not /root/...)
    if python is None:
        pytest.skip("no system python3 for the squatter")
    squatters = {port: subprocess.Popen(["runuser", "-u", "nobody", "--", python, "-c", SQUATTER, str(port)],
                                        stdout=subprocess.PIPE, text=True, cwd="/")
                 for port in (s.pg_port, s.chroma_port, s.redis_port)}
    try:
        assert all(p.stdout.readline() == "listening\n" for p in squatters.values())
        env = {k: v for k, v in os.environ.items() if not k.startswith("CTX_")}
        for args in (["search", "connection pool"], ["migrate", str(SAMPLES / "coditect-demo")], ["backup"]):
            proc = subprocess.run([sys.executable, "-m", "coditect_ctx", *args], env={**env, **settings_env(s)},
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 3, proc.stdout + proc.stderr
            assert f"port {s.pg_port} on 127.0.0.1 is held by another user (nobody" in " ".join(proc.stderr.split())
    finally:
        for p in squatters.values():
            p.terminate()
        received = {port: p.communicate(timeout=30)[0] for port, p in squatters.items()}
    assert received == {port: "" for port in squatters}  # no connection at all, so no secret
    run_ctx(s, "setup")


def test_services_do_not_inherit_the_credentials_of_the_run_that_started_them(used_store):
    """`ctx setup` (or a backup that restarts Chroma for its snapshot) run with AWS keys in its environment: no
    service keeps them, nor any ctx secret, in its environment (/proc/PID/environ lives as long as the service)."""
    from coditect_ctx.runtime.procs import read_pid

    run = used_store.home / "run"
    pids = {name: read_pid(run / f"{name}.pid") for name in ("chroma", "redis")}
    pids["postgres"] = int((used_store.home / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    assert all(pids.values()), pids
    for name, pid in pids.items():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if AWS_MARKER.encode() in v], f"{name} holds the run's AWS credentials"
        assert not [v for v in environ if v.startswith(b"CTX_") and b"PASSWORD" in v], f"{name} holds a ctx password"
