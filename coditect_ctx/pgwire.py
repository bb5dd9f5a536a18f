"""A minimal PostgreSQL client (the frontend/backend protocol over one socket) for one-row reads on plain URLs.

Why: a cached `ctx search` reads one value from PostgreSQL (the data generation its cache keys carry, so a cached
answer is never stale), and importing psycopg cost more than the rest of that search (0.1-0.25 s here: asyncio,
its C extension, type adapters). This client speaks just enough of the protocol for that read: start-up, password
authentication (SCRAM-SHA-256, MD5 or cleartext), one simple query, text values. Anything else - TLS (`sslmode`),
Unix sockets, other URL options, an authentication it does not know - is not spoken (`speaks` says False, or
PgWireError is raised) and the caller uses psycopg instead.
"""

from __future__ import annotations

import socket
import struct
from urllib.parse import unquote, urlsplit


class PgWireError(Exception):
    """The server refused, or asked for something this client does not speak: use psycopg."""


def speaks(url: str | None) -> bool:
    """True for postgresql:// URLs with a host, a password and no options (the local and docker runtimes')."""
    if not url:
        return False
    parts = urlsplit(url)
    return parts.scheme in ("postgresql", "postgres") and not parts.query and bool(parts.hostname) \
        and parts.password is not None


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _cstr(value: str) -> bytes:
    return value.encode() + b"\0"


class PgWire:
    """One connection: `query_one(sql)` returns the first row's text values (None for NULL), or None."""

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        self.user = unquote(parts.username or "")
        self.password = unquote(parts.password or "")
        database = unquote(parts.path.lstrip("/")) or self.user
        self.sock = socket.create_connection((parts.hostname, parts.port or 5432), timeout=timeout)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.reader = self.sock.makefile("rb")
            body = struct.pack("!i", 196608) + _cstr("user") + _cstr(self.user) + _cstr("database") + _cstr(database) \
                + _cstr("client_encoding") + _cstr("UTF8") + b"\0"
            self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
            self._authenticate()
            self._until_ready()
        except BaseException:
            self.sock.close()
            raise

    def _read(self) -> tuple[bytes, bytes]:
        head = self.reader.read(5)
        if len(head) < 5:
            raise PgWireError("postgres closed the connection")
        kind, size = head[:1], struct.unpack("!i", head[1:])[0]
        body = self.reader.read(size - 4)
        if kind == b"E":
            fields = dict((f[:1], f[1:].decode("utf-8", "replace")) for f in body.split(b"\0") if f)
            raise PgWireError(fields.get(b"M", "error"))
        return kind, body

    def _authenticate(self) -> None:
        while True:
            kind, body = self._read()
            if kind != b"R":
                raise PgWireError(f"unexpected message {kind!r} during authentication")
            code = struct.unpack("!i", body[:4])[0]
            if code == 0:
                return
            if code == 3:
                self.sock.sendall(_message(b"p", _cstr(self.password)))
            elif code == 5:
                import hashlib

                inner = hashlib.md5((self.password + self.user).encode()).hexdigest()
                digest = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                self.sock.sendall(_message(b"p", _cstr(digest)))
            elif code == 10 and b"SCRAM-SHA-256\0" in body[4:]:
                self._scram()
            else:
                raise PgWireError(f"authentication method {code} not spoken")

    def _scram(self) -> None:
        import base64
        import hashlib
        import hmac
        import os

        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = ("n,," + first_bare).encode()
        self.sock.sendall(_message(b"p", _cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
        kind, body = self._read()
        if kind != b"R" or struct.unpack("!i", body[:4])[0] != 11:
            raise PgWireError("unexpected SCRAM answer")
        server_first = body[4:].decode()
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        if not attrs["r"].startswith(nonce):
            raise PgWireError("SCRAM nonce mismatch")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        final_bare = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{final_bare}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
        self.sock.sendall(_message(b"p", f"{final_bare},p={proof}".encode()))
        kind, body = self._read()
        if kind != b"R" or struct.unpack("!i", body[:4])[0] != 12:
            raise PgWireError("unexpected SCRAM answer")
        expected = base64.b64encode(hmac.digest(hmac.digest(salted, b"Server Key", "sha256"), auth_message, "sha256"))
        if body[4:].split(b"v=", 1)[-1] != expected:
            raise PgWireError("the server's SCRAM signature is wrong")

    def _until_ready(self) -> None:
        while True:
            kind, _ = self._read()
            if kind == b"Z":
                return

    def query_one(self, sql: str) -> list[str | None] | None:
        self.sock.sendall(_message(b"Q", _cstr(sql)))
        row: list[str | None] | None = None
        error: PgWireError | None = None
        while True:
            try:
                kind, body = self._read()
            except PgWireError as exc:  # an error is followed by ReadyForQuery: read on to it, then raise
                error = exc
                continue
            if kind == b"D" and row is None:
                count, pos, row = struct.unpack("!h", body[:2])[0], 2, []
                for _ in range(count):
                    size = struct.unpack("!i", body[pos:pos + 4])[0]
                    pos += 4
                    if size < 0:
                        row.append(None)
                    else:
                        row.append(body[pos:pos + size].decode())
                        pos += size
            elif kind == b"Z":
                if error is not None:
                    raise error
                return row

    def close(self) -> None:
        try:
            self.sock.sendall(_message(b"X", b""))
        except OSError:
            pass
        self.sock.close()


def query_one(url: str, sql: str, timeout: float) -> list[str | None] | None:
    """Connect, run one statement, return its first row (text values), close."""
    conn = PgWire(url, timeout)
    try:
        return conn.query_one(sql)
    finally:
        conn.close()
