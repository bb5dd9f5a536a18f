"""A minimal Redis client (RESP over one socket) for plain redis:// URLs.

Why: importing redis-py costs 0.15-0.3 s here (asyncio, OpenTelemetry), as much as a whole cached search or a
health check. ctx needs a handful of commands, so it speaks them directly; rediss:// and anything unusual go
through redis-py instead (see `speaks`).
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import unquote, urlsplit


def speaks(url: str | None) -> bool:
    """True for URLs this client handles: plain redis:// without query options."""
    if not url:
        return False
    parts = urlsplit(url)
    return parts.scheme == "redis" and not parts.query


class RespError(Exception):
    """Redis answered with an error."""


class RespClient:
    """One connection speaking RESP; enough for AUTH, SELECT, GET, SET, PING and INFO."""

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        if parts.password:
            args = [unquote(parts.username), unquote(parts.password)] if parts.username else [unquote(parts.password)]
            self.call(b"AUTH", *args)
        db = parts.path.strip("/")
        if db and db != "0":
            self.call(b"SELECT", db)

    def call(self, *args) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self) -> Any:
        line = self.reader.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.reader.read(size + 2)
            return data[:-2]
        if kind == b"*":
            return [self._read() for _ in range(max(0, int(rest)))]
        raise RespError(f"unexpected reply {line[:20]!r}")

    def ping(self) -> bool:
        return self.call(b"PING") == "PONG"

    def info(self, section: str = "server") -> dict[str, str]:
        text = (self.call(b"INFO", section) or b"").decode("utf-8", "replace")
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))

    def get(self, key: str) -> bytes | None:
        return self.call(b"GET", key)

    def set(self, key: str, value: bytes, ex: int | None = None) -> Any:
        return self.call(b"SET", key, value, b"EX", ex) if ex else self.call(b"SET", key, value)

    def close(self) -> None:
        try:
            self.reader.close()
            self.sock.close()
        except OSError:
            pass
