"""The small interface every runtime implements: start, stop, report, and hand out addresses; the addresses of
services a runtime runs itself on loopback ports (`loopback_endpoints`), and waiting for them.

A runtime knows where services run (processes, containers, someone else's servers) and nothing of the schema.
Everything above it (stores, jobs) only sees `Endpoints`.
"""

from __future__ import annotations

import socket
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from urllib.parse import quote

from ..config import SECRET, URL, Settings, masked_repr, pg_url_for
from ..errors import PortInUseError, ServiceError, UsageError

SERVICES = ("postgres", "chroma", "redis")
Progress = Callable[[str, int, "int | None"], None]  # progress(step, done, total): total None while unknown


@dataclass(frozen=True)
class Endpoints:
    """Addresses of the three services. `redis_url` is None when the cache is off. Its repr masks secrets."""

    pg_url: str = field(metadata=URL)
    chroma_url: str = field(metadata=URL)
    chroma_token: str | None = field(default=None, metadata=SECRET)
    redis_url: str | None = field(default=None, metadata=URL)
    redis_note: str = ""  # why the cache is off, when it is

    def __repr__(self) -> str:
        return masked_repr(self)


def loopback_endpoints(settings: Settings, cache_off: str = "") -> Endpoints:
    """The addresses of services a runtime runs itself on 127.0.0.1 ports (local, docker): passwords quoted, the
    Chroma token its server demands (runtime/chroma_server.py). `cache_off` says why there is no cache, when there
    is none."""
    s = settings
    return Endpoints(
        pg_url=pg_url_for(s.pg_user, s.pg_password, "127.0.0.1", s.pg_port, s.pg_db),
        chroma_url=f"http://127.0.0.1:{s.chroma_port}",
        chroma_token=s.chroma_token or None,
        redis_url=None if cache_off else f"redis://:{quote(s.redis_password, safe='')}@127.0.0.1:{s.redis_port}/0",
        redis_note=cache_off,
    )


@dataclass
class ServiceStatus:
    name: str
    runtime: str
    address: str
    running: bool
    version: str | None = None
    detail: str = ""
    extra: dict = field(default_factory=dict)


class Runtime(ABC):
    name: str = "?"

    def __init__(self, settings: Settings):
        self.settings = settings

    @abstractmethod
    def endpoints(self) -> Endpoints:
        """Where the services answer (whether or not they run now)."""

    def prepare(self, report: Callable[[str], None] = lambda msg: None, progress: Progress = lambda *a: None) -> None:
        """Get what start() needs onto this machine (the docker runtime's images), creating nothing."""

    @abstractmethod
    def start(self, report: Callable[[str], None] = lambda msg: None) -> None:
        """Start what is not running and wait (bounded) until each service answers."""

    @abstractmethod
    def stop(self, volumes: bool = False, report: Callable[[str], None] = lambda msg: None) -> None:
        """Stop the services; keep data unless `volumes`."""

    @abstractmethod
    def services(self) -> list[ServiceStatus]:
        """The state of each service, cheaply (no heavy imports)."""

    @abstractmethod
    def run_pg_tool(
        self,
        tool: str,
        args: list[str],
        *,
        dbname: str | None = None,
        output: Path | None = None,
        input_file: Path | None = None,
    ) -> str:
        """Run a PostgreSQL client tool (pg_dump, pg_restore, psql) against this runtime's server.

        Connection options are added by the runtime; the password travels in the child's environment or a
        passfile, never on a command line `ps` shows. stdout goes to `output` when given (a dump), `input_file`
        is read by the tool (a restore). Returns the tool's text output; raises ServiceError on failure.
        """

    def chroma_folder(self) -> Path | None:
        """Chroma's persistent folder when this runtime can stop Chroma and have its files read or replaced while
        it is stopped (`chroma_stopped`): what physical snapshots need. None when it cannot (the default)."""
        return None

    @contextmanager
    def chroma_stopped(self, report: Callable[[str], None] = lambda msg: None) -> Iterator[Path]:
        """Stop Chroma, yield its folder (which the body may read, or replace by renaming), then start Chroma
        and wait until it answers, whatever the body did. Only where `chroma_folder()` is not None."""
        raise UsageError(f"The {self.name} runtime cannot stop Chroma to read or replace its files",
                         hint="Restore from the portable export (`ctx restore --portable`).")
        yield Path()  # pragma: no cover  (a generator, for contextmanager)

    def log_path(self, service: str) -> Path | None:
        return None

    def logs(self, service: str, follow: bool = False, lines: int = 50) -> Iterator[str]:
        """The last `lines` of a service's log, then new lines while `follow` (file-based runtimes)."""
        path = self.log_path(service)
        if path is None or not path.exists():
            raise UsageError(f"{service}: no log at {path}", hint="Has `ctx setup` run with this CTX_HOME?")
        yield from tail_lines(path, lines).splitlines()
        if follow:
            with open(path, encoding="utf-8", errors="replace") as fh:
                fh.seek(0, 2)
                while True:
                    line = fh.readline()
                    if line:
                        yield line.rstrip("\n")
                    else:
                        time.sleep(0.3)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def require_free_port(service: str, port: int, setting: str) -> None:
    if not port_is_free(port):
        raise port_in_use(service, port, setting)


def port_in_use(service: str, port: int, setting: str) -> PortInUseError:
    """The error for a taken port; its hint names a port that is free right now (the next one up that binds)."""
    candidates = [*range(port + 1, min(port + 200, 65536)), *range(port - 1, max(port - 200, 1023), -1)]
    free = next((p for p in candidates if port_is_free(p)), None)
    example = f" (e.g. {setting}={free}, free now)" if free else ""
    return PortInUseError(
        f"{service}: port {port} on 127.0.0.1 is already in use by another process",
        hint=f"Stop that process, or choose another port with {setting}{example}.",
        service=service,
    )


def tcp_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    service: str,
    ready: Callable[[], bool],
    timeout: float,
    *,
    alive: Callable[[], bool] = lambda: True,
    log: Path | None = None,
    hint: str = "",
    interval: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll `ready` until it is true or `timeout` passes; fail at once when `alive` says the process died."""
    deadline = clock() + timeout
    while True:
        if ready():
            return
        dead = not alive()
        if dead or clock() >= deadline:
            what = "exited during start-up" if dead else f"did not answer within {timeout:.0f} s"
            tail = tail_lines(log) if log else ""
            raise ServiceError(
                f"{service} {what}" + (f"; log: {log}" if log else "") + (f"\n--- last log lines ---\n{tail}" if tail else ""),
                hint=hint or f"Read the log, fix the cause, then run `ctx setup` again.",
                service=service,
            )
        sleep(interval)


def tail_lines(path: Path | None, n: int = 15) -> str:
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 16384))
        data = fh.read().decode("utf-8", "replace")
    return "\n".join(data.splitlines()[-n:])
