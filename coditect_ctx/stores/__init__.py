"""One handle on the three stores, opened lazily: a job asks for what it uses and pays for nothing else.

`Store` owns the way from settings to clients: the runtime's addresses (`Endpoints`, the only thing it takes from
runtime/), PostgreSQL connections and the Chroma client. The search cache is opened by the searcher itself.
"""

from __future__ import annotations

from functools import cached_property

from ..config import Settings
from ..runtime import Endpoints, Runtime, get_runtime
from .chroma import Chroma


class Store:
    def __init__(self, settings: Settings, runtime: Runtime | None = None):
        self.settings = settings
        self._runtime = runtime

    @cached_property
    def runtime(self) -> Runtime:
        return self._runtime or get_runtime(self.settings, probe=False)

    @cached_property
    def endpoints(self) -> Endpoints:
        return self.runtime.endpoints()

    @property
    def pg_url(self) -> str:
        return self.endpoints.pg_url

    def pg(self, autocommit: bool = False, timeout: float | None = None):
        from .postgres import connect

        return connect(self.pg_url, timeout or self.settings.timeout + 2, autocommit=autocommit)

    def writer_lock(self, command: str, wait: float = 0.0, report=None, if_reachable: bool = False):
        """The store-wide writer lock (stores/lock.py), held by every command that changes data."""
        from .lock import writer_lock

        return writer_lock(self.pg_url, command, wait=wait, timeout=self.settings.timeout + 2, report=report,
                           if_reachable=if_reachable)

    @cached_property
    def chroma(self) -> Chroma:
        return self.open_chroma()

    def open_chroma(self, read_timeout: float | None = None) -> Chroma:
        """A Chroma client of its own (the caller closes it): for another thread, or a shorter read timeout."""
        ep = self.endpoints
        return Chroma.for_settings(self.settings, ep.chroma_url, ep.chroma_token, read_timeout=read_timeout)

    def check_chroma(self) -> None:
        """ServiceError unless Chroma answers its heartbeat within CTX_TIMEOUT. A hung server accepts connections
        and never answers: a job about to read a lot asks this first, rather than wait CTX_CHROMA_READ_TIMEOUT
        (sized for large pages and upserts) on its first request."""
        probe = self.open_chroma(read_timeout=self.settings.timeout)
        try:
            probe.heartbeat()
        finally:
            probe.close()

    def close(self) -> None:
        if "chroma" in self.__dict__:
            self.chroma.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
