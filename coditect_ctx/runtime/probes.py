"""Readiness probes: a real round trip to each service (SELECT 1, PING, the v2 heartbeat), short timeouts.

Used by runtimes while they wait and by `ctx health`; light imports only (no chromadb).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def pg_version(url: str, timeout: float = 3.0) -> str:
    """Connect, run a query, return the server version. Raises psycopg.Error / OSError when it cannot."""
    import psycopg

    with psycopg.connect(url, connect_timeout=max(1, int(round(timeout))), autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
        return conn.execute("SHOW server_version").fetchone()[0]


def pg_ready(url: str, timeout: float = 2.0) -> bool:
    try:
        pg_version(url, timeout)
        return True
    except Exception:
        return False


def chroma_get(base_url: str, path: str, token: str | None = None, timeout: float = 3.0) -> Any:
    req = urllib.request.Request(base_url.rstrip("/") + path, headers=chroma_headers(token))
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def chroma_headers(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
        headers["X-Chroma-Token"] = token
    return headers


def chroma_version(base_url: str, token: str | None = None, timeout: float = 3.0) -> str:
    chroma_get(base_url, "/api/v2/heartbeat", token, timeout)
    try:
        return str(chroma_get(base_url, "/api/v2/version", token, timeout))
    except (urllib.error.URLError, OSError, ValueError):
        return "unknown"


def chroma_ready(base_url: str, token: str | None = None, timeout: float = 2.0) -> bool:
    try:
        chroma_get(base_url, "/api/v2/heartbeat", token, timeout)
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


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
    try:
        redis_info(url, timeout)
        return True
    except Exception:
        return False

