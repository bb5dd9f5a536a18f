"""Background processes with pid files: start detached, tell live from stale, stop politely.

Linux /proc is read directly (no psutil) so `ctx health` and `ctx status` stay light.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Mapping


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def pid_alive(pid: int, expect: str = "") -> bool:
    """True when `pid` runs and (if given) its command line contains `expect`: a reused pid is not ours."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return False
    except (OSError, IndexError):
        pass
    return not expect or expect in cmdline(pid)


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def live_pid(pid_file: Path, expect: str) -> int | None:
    """The pid in `pid_file` if that process is alive and ours; a stale file (crash, reboot) is removed."""
    pid = read_pid(pid_file)
    if pid is not None and pid_alive(pid, expect):
        return pid
    if pid_file.exists():
        pid_file.unlink(missing_ok=True)
    return None


def spawn(argv: list[str], pid_file: Path, log_file: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
    """Start `argv` detached from our session (survives ctx exiting), output appended to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(f"{proc.pid}\n")
    os.replace(tmp, pid_file)
    return proc.pid


def terminate(pid: int, timeout: float = 15.0, expect: str = "") -> bool:
    """SIGTERM, wait, then SIGKILL. True when the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid, expect):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    time.sleep(0.2)
    _reap(pid)
    return not pid_alive(pid, expect)


def _reap(pid: int) -> None:
    """Collect our own child if it exited (tests start services from the same process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
