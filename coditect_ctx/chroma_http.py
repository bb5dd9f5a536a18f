"""Chroma's v2 REST API on the wire: one kept-alive HTTP connection, its timeouts, the token, the errors.

The one transport every Chroma call of ctx goes through: the store client (stores/chroma.py, which adds
collections and records on top), the runtimes' readiness probes (the heartbeat) and the external runtime's
connection check. It sits below both stores/ and runtime/ (as resp.py does for Redis) so neither imports the
other, and imports nothing but the standard library, so `ctx health` stays light.

http.client does not read http_proxy/https_proxy (urllib would): every ctx process reaches Chroma directly at
the address the runtime hands out, so health and search can never disagree because one went through a proxy.
Why not the `chromadb` client: importing it costs more than a whole `ctx search`, and it would pull in an
embedding function that downloads a model at run time. The `chromadb` package only provides the local server.
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import quote, urlsplit

from .errors import ServiceError

API = "/api/v2"


class ChromaHTTPError(ServiceError):
    """The server answered, with an HTTP error status."""

    def __init__(self, status: int, body: str, path: str):
        super().__init__(
            f"chroma: {path} answered HTTP {status}: {body[:300]}",
            hint="Check the Chroma server log (`ctx status` shows where it runs).",
            service="chroma",
        )
        self.status = status


class ChromaConnection:
    """Requests to one Chroma server in one database.

    `timeout` bounds the connect (CTX_TIMEOUT), `read_timeout` each answer once connected (CTX_CHROMA_READ_TIMEOUT:
    a large upsert or query takes longer than a connect may). Not thread-safe: one per thread.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 3.0,
        read_timeout: float | None = None,
        tenant: str = "default_tenant",
        database: str = "default_database",
    ):
        parts = urlsplit(url)
        self.url = url
        self.scheme = parts.scheme or "http"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.scheme == "https" else 8000)
        self.prefix = parts.path.rstrip("/") + API
        self.token = token
        self.timeout = timeout
        self.read_timeout = timeout if read_timeout is None else read_timeout
        self.tenant = tenant
        self.database = database
        self._conn: "http.client.HTTPConnection | None" = None

    @classmethod
    def for_settings(cls, settings, url: str, token: str | None = None, read_timeout: float | None = None):
        """A client as the settings say: CTX_TIMEOUT to connect, CTX_CHROMA_READ_TIMEOUT (or `read_timeout`, which
        health passes to stay fast) per answer, CTX_CHROMA_TENANT and CTX_CHROMA_DATABASE."""
        return cls(url, token, timeout=settings.timeout,
                   read_timeout=settings.chroma_read_timeout if read_timeout is None else read_timeout,
                   tenant=settings.chroma_tenant, database=settings.chroma_database)

    # -- transport ---------------------------------------------------------------------------------------
    def _connection(self) -> "http.client.HTTPConnection":
        import http.client  # here, not at the top: a cached search never talks to Chroma (its import pulls in email.*)

        if self._conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=self.timeout)
            try:
                conn.connect()  # under the connect timeout (TLS handshake included) ...
            except BaseException:
                conn.close()
                raise
            conn.sock.settimeout(self.read_timeout)  # ... then every answer under the read timeout
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call: `path` below /api/v2. Raises ChromaHTTPError for an error status, ServiceError for no answer."""
        import http.client

        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
            headers["X-Chroma-Token"] = self.token
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):  # a kept-alive connection the server closed is retried once on a new one
            try:
                conn = self._connection()
                conn.request(method, self.prefix + path, body=payload, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, OSError) as exc:  # OSError covers refused, reset and timeouts
                fresh = self._conn is None
                self.close()
                if attempt == 2 or fresh or isinstance(exc, socket.timeout):
                    raise ServiceError(
                        f"chroma: no answer from {self.url} ({type(exc).__name__}: {exc})",
                        hint="Is Chroma running? `ctx status` shows the services; `ctx setup` starts them.",
                        service="chroma",
                    ) from exc
        if resp.status >= 400:
            raise ChromaHTTPError(resp.status, data.decode("utf-8", "replace"), path)
        return json.loads(data) if data else None

    # -- the server and its database ---------------------------------------------------------------------
    def heartbeat(self) -> int:
        return (self.request("GET", "/heartbeat") or {}).get("nanosecond heartbeat", 0)

    def version(self) -> str:
        return str(self.request("GET", "/version"))

    def database_path(self) -> str:
        return f"/tenants/{quote(self.tenant, safe='')}/databases/{quote(self.database, safe='')}"

    def database_info(self) -> dict:
        """The configured database as the server describes it; ChromaHTTPError 4xx when it does not exist."""
        return self.request("GET", self.database_path())

    def list_collections(self) -> list[dict]:
        return self.request("GET", self.database_path() + "/collections?limit=1000") or []
