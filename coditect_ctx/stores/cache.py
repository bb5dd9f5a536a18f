"""Redis as a cache that can only ever be slower, never wrong or alarming.

Keys carry everything an answer depends on (the caller puts the model id and the store's data generation in
them), so nothing is ever invalidated by hand: a bumped generation simply makes old keys unreachable and they
age out by TTL. Any Redis failure is a cache miss; the first one turns the cache off for this process.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

PREFIX = "ctx:v1:"


def cache_key(*parts: Any) -> str:
    raw = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return PREFIX + hashlib.sha256(raw.encode()).hexdigest()[:40]


class Cache:
    def __init__(self, url: str | None, timeout: float = 0.5):
        self.url = url
        self.timeout = timeout
        self._client = None
        self.enabled = bool(url)
        self.last_error: str | None = None

    def _redis(self):
        if self._client is None:
            from .. import resp

            if resp.speaks(self.url):
                self._client = resp.RespClient(self.url, self.timeout)
            else:
                import redis

                self._client = redis.Redis.from_url(
                    self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
                )
        return self._client

    def _fail(self, exc: Exception) -> None:
        self.enabled = False
        self.last_error = f"{type(exc).__name__}: {exc}"

    def get_bytes(self, key: str) -> bytes | None:
        if not self.enabled:
            return None
        try:
            return self._redis().get(key)
        except Exception as exc:  # a cache must never break the caller
            self._fail(exc)
            return None

    def set_bytes(self, key: str, value: bytes, ttl: int = 86400) -> None:
        if not self.enabled:
            return
        try:
            self._redis().set(key, value, ex=ttl)
        except Exception as exc:
            self._fail(exc)

    def get_json(self, key: str) -> Any:
        raw = self.get_bytes(key)
        return json.loads(raw) if raw is not None else None

    def set_json(self, key: str, value: Any, ttl: int = 86400) -> None:
        self.set_bytes(key, json.dumps(value, default=str).encode(), ttl)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None
