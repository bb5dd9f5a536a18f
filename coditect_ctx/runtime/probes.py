"""Readiness probes: a real round trip to each service (SELECT 1, PING, the v2 heartbeat), short timeouts.

Used by runtimes while they wait and to report their services; light imports only (no chromadb, no redis-py for
plain redis://). Chroma and Redis are spoken through the shared low-level clients (chroma_http.py, resp.py).
"""

from __future__ import annotations

from contextlib import closing
from typing import Callable

from ..chroma_http import ChromaConnection
from ..errors import ServiceError


def answers(probe: Callable[[], object]) -> bool:
    """True when the probe gets its answer, False whatever goes wrong: for polling until a service is up."""
    try:
        probe()
        return True
    except Exception:
        return False


def pg_version(url: str, timeout: float = 3.0) -> str:
    """Connect, run a query, return the server version. Raises psycopg.Error / OSError when it cannot."""
    import psycopg

    with psycopg.connect(url, connect_timeout=max(1, int(round(timeout))), autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
        return conn.execute("SHOW server_version").fetchone()[0]


def pg_ready(url: str, timeout: float = 2.0) -> bool:
    return answers(lambda: pg_version(url, timeout))


def chroma_version(url: str, token: str | None = None, timeout: float = 3.0) -> str:
    """Heartbeat, then the server version ("unknown" when only the heartbeat answers). Raises ServiceError."""
    with closing(ChromaConnection(url, token, timeout=timeout)) as client:
        client.heartbeat()
        try:
            return client.version()
        except ServiceError:
            return "unknown"


def chroma_ready(url: str, token: str | None = None, timeout: float = 2.0) -> bool:
    def heartbeat() -> int:
        with closing(ChromaConnection(url, token, timeout=timeout)) as client:
            return client.heartbeat()

    return answers(heartbeat)


def redis_info(url: str, timeout: float = 3.0) -> str:
    """PING, then the server version. Raises redis.RedisError / OSError when it cannot.

    Plain redis:// is spoken directly (three RESP commands on one socket): importing redis-py costs more than
    the whole check. TLS and anything unusual go through redis-py."""
    from .. import resp

    if resp.speaks(url):
        client = resp.RespClient(url, timeout)
        try:
            if not client.ping():
                raise ConnectionError("redis did not answer PING with PONG")
            return client.info("server").get("redis_version", "unknown").strip()
        finally:
            client.close()
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
        return str(client.info("server").get("redis_version", "unknown"))
    finally:
        client.close()


def redis_ready(url: str, timeout: float = 1.0) -> bool:
    return answers(lambda: redis_info(url, timeout))
