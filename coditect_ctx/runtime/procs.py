"""Background processes with pid files: start detached, tell ours from a stranger, stop politely.

A process is ours only when all of these hold (psutil, imported when first needed):
- the pid in the pid file runs and is not a zombie (a SIGKILLed service is a zombie until reaped, and on a machine
  whose init does not reap, forever);
- its start time is the one recorded next to the pid when we started it: a pid reused by anything else after a
  crash or a reboot has another start time;
- its command line or working directory names this store's folder for the service (under CTX_HOME).
A command line that merely contains the service's name is never enough.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

# Never handed to a process ctx starts: ctx's own settings (passwords, tokens, URLs holding them, the backup
# identity) and the object-storage credentials a backup run is given (a service restarted by `ctx backup` keeps its
# environment for as long as it runs, readable in /proc/PID/environ).
CHILD_ENV_DROP = ("CTX_", "AWS_")


def child_env(allow: Iterable[str] = (), base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a process ctx starts (a service, a PostgreSQL tool): ours without any CTX_* or AWS_*
    variable except those named in `allow` (a child that needs its own secret gets it explicitly), plus `extra`."""
    keep = set(allow)
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith(CHILD_ENV_DROP) or k in keep}
    env.update(extra)
    return env


def listener_uids(ports: list[int]) -> dict[int, set[int]] | None:
    """The users owning the TCP sockets that listen on each of `ports` of 127.0.0.1 or any address (Linux
    /proc/net/tcp, tcp6: readable by anyone for every socket, and read once for all the ports: the kernel builds
    the table on each read, milliseconds on a busy machine); an empty set for a port nothing listens on, None where
    /proc has no table. Another user may bind a store's port while its service is down: secrets must not be sent
    to that listener."""
    wanted = {}
    for port in ports:
        for address in ("0100007F", "00000000", "0" * 32, f"{'0' * 16}FFFF000001000000", f"{'0' * 24}01000000"):
            wanted[f"{address}:{port:04X}"] = port
    uids: dict[int, set[int]] = {port: set() for port in ports}
    seen = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            cols = line.split()
            if len(cols) > 7 and cols[3] == "0A":  # 0A: LISTEN
                port = wanted.get(cols[1].upper())
                if port is not None:
                    uids[port].add(int(cols[7]))
    return uids if seen else None


# Everything ctx and its services create is private to the user running the store: files 0600, folders 0700.
PRIVATE_UMASK = 0o077


@dataclass(frozen=True)
class Identity:
    """How to recognise one of ctx's own services: the folder under CTX_HOME that it runs in and names."""

    folder: Path

    def names_home(self, proc) -> bool:
        folder = str(self.folder)
        try:
            if any(arg == folder or arg.startswith(folder + os.sep) for arg in proc.cmdline()):
                return True
            return proc.cwd() == folder
        except Exception:  # psutil.Error: gone, or not ours to inspect
            return False


def _process(pid: int):
    """The live (non-zombie) process `pid`, or None."""
    import psutil

    if pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.Error:
        return None


def command_line(pid: int) -> str:
    """The process's arguments joined by spaces ("" when it is gone or not ours to read)."""
    proc = _process(pid)
    try:
        return " ".join(proc.cmdline()) if proc else ""
    except Exception:  # psutil.Error
        return ""


def start_time(pid: int) -> float | None:
    proc = _process(pid)
    try:
        return round(proc.create_time(), 2) if proc else None
    except Exception:
        return None


def exists(pid: int) -> bool:
    """True while `pid` names any process, a zombie included."""
    import psutil

    return pid > 0 and psutil.pid_exists(pid)


def pid_alive(pid: int) -> bool:
    """True when `pid` runs (a zombie is dead: it only waits to be reaped)."""
    return _process(pid) is not None


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _recorded_start(pid_file: Path) -> float | None:
    try:
        return float(pid_file.read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None


def is_ours(pid: int, started: float | None, identity: Identity, slack: float = 0.0) -> bool:
    """`pid` runs, started at `started` (within `slack` seconds: 0 for our own records) and names our folder."""
    proc = _process(pid)
    now_started = start_time(pid)
    if proc is None or started is None or now_started is None or abs(now_started - round(started, 2)) > slack + 0.005:
        return False
    return identity.names_home(proc)


def live_pid(pid_file: Path, identity: Identity) -> int | None:
    """The pid in `pid_file` if that process is alive and ours; a stale file (crash, reboot, reused pid) is removed."""
    pid = read_pid(pid_file)
    if pid is not None and is_ours(pid, _recorded_start(pid_file), identity):
        return pid
    if pid_file.exists():
        pid_file.unlink(missing_ok=True)
    return None


def spawn(argv: list[str], pid_file: Path, log_file: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
    """Start `argv` detached from our session (survives ctx exiting), output appended to `log_file`; its
    environment is `env`, else `child_env()` (no CTX_* secret).

    The pid file holds "<pid> <start time>": the pair that identifies this very process later."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else child_env(),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            umask=PRIVATE_UMASK,
        )
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(f"{proc.pid} {start_time(proc.pid) or 0}\n")
    os.replace(tmp, pid_file)
    return proc.pid


def make_private(root: Path) -> None:
    """Take group and other permissions off every file and folder under `root` (a store made by an older ctx,
    or by a service that ignored the umask). Symbolic links are not followed."""
    for dirpath, _dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for path in [here, *(here / name for name in filenames)]:
            try:
                st = os.lstat(path)
                if not os.path.islink(path) and st.st_mode & 0o077:
                    os.chmod(path, st.st_mode & 0o7700)
            except OSError:
                pass


def terminate(pid: int, timeout: float = 15.0) -> bool:
    """SIGTERM, wait, then SIGKILL. True when the process is gone. Call it only with a pid known to be ours."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    time.sleep(0.2)
    _reap(pid)
    return not pid_alive(pid)


def wait_gone(pids_alive, timeout: float) -> bool:
    """Poll `pids_alive()` (a list of live pids) until it is empty or `timeout` passes. True when empty."""
    deadline = time.monotonic() + timeout
    while pids_alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def processes_in(folder: Path) -> list[int]:
    """Live processes whose working directory is `folder` (a PostgreSQL cluster's postmaster and backends)."""
    import psutil

    out = []
    target = str(folder)
    for proc in psutil.process_iter(["cwd", "status"]):
        if proc.info.get("cwd") == target and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            out.append(proc.pid)
    return out


def _reap(pid: int) -> None:
    """Collect our own child if it exited (tests start services from the same process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
