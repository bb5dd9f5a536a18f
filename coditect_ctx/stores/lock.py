"""The store-wide writer lock: one command that changes data at a time, readers never wait.

A PostgreSQL session-level advisory lock, taken on a connection of its own that stays open for the whole command.
PostgreSQL releases it when that session ends, however it ends (exit, SIGKILL, reboot, a server restart): there is
no row, file or timeout that could go stale. Advisory locks live outside every table, so `pg_restore --clean`
dropping and recreating the tables leaves it held.

The holder names itself in its connection's application_name (`ctx <command> <pid> <since> <host>`), which
every role may read in pg_stat_activity (e.g. `ctx migrate 4711 20261201T020000Z db1`); a second writer finds the holder through pg_locks and says who it is,
then exits 75 (StoreBusyError), or waits up to `wait` seconds for it.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator

from ..errors import ServiceError, StoreBusyError

# Two int4 keys: pg_locks shows them as classid and objid, with objsubid 2.
LOCK_KEYS = (0x637478, 1)  # "ctx", 1: the store's writer lock
PREFIX = "ctx"
_SINCE = "%Y%m%dT%H%M%SZ"


def application_name(command: str, pid: int | None = None, since: datetime | None = None) -> str:
    """What the holder's session calls itself (PostgreSQL keeps 63 bytes: the host name is cut first)."""
    since = since or datetime.now(timezone.utc)
    name = f"{PREFIX} {command.replace(' ', '_')} {pid or os.getpid()} {since.strftime(_SINCE)} {socket.gethostname()}"
    return name.encode("ascii", "replace")[:63].decode("ascii")


def parse_application_name(name: str | None) -> dict | None:
    parts = (name or "").split(" ", 4)
    if len(parts) < 4 or parts[0] != PREFIX or not parts[2].isdigit():
        return None
    try:
        since = datetime.strptime(parts[3], _SINCE).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return {"command": "ctx " + parts[1].replace("_", " "), "pid": int(parts[2]),
            "host": parts[4] if len(parts) > 4 else "", "since": since.isoformat()}


def holder(conn) -> dict | None:
    """Who holds the writer lock now (command, pid, host, since), or None."""
    row = conn.execute(
        """SELECT a.application_name, a.pid, a.backend_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 2
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        LOCK_KEYS,
    ).fetchone()
    if row is None:
        return None
    found = parse_application_name(row[0])
    if found is None:  # not a ctx of this version: say what PostgreSQL knows
        found = {"command": row[0] or "unknown", "pid": None, "host": "",
                 "since": row[2].isoformat() if row[2] else None}
    found["backend_pid"] = row[1]
    return found


def describe(who: dict | None) -> str:
    if not who:
        return "another command (it has just finished or is finishing)"
    since = who.get("since") or "?"
    try:
        since = datetime.fromisoformat(since).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError):
        pass
    where = f"pid {who['pid']}" if who.get("pid") else "a session"
    if who.get("host"):
        where += f" on {who['host']}"
    return f"`{who['command']}` ({where}, since {since})"


@contextmanager
def writer_lock(url: str, command: str, wait: float = 0.0, timeout: float = 5.0,
                report: Callable[[str], None] | None = None, if_reachable: bool = False) -> Iterator[None]:
    """Hold the store's writer lock for the body. Raises StoreBusyError (exit 75) when another command holds it
    for longer than `wait` seconds. With `if_reachable`, a PostgreSQL that does not answer means nobody can hold
    it, and the body runs without it (`ctx down --volumes` on a stopped store)."""
    import psycopg

    from .postgres import connect

    try:
        conn = connect(url, timeout, autocommit=True)
    except ServiceError:
        if if_reachable:
            yield None
            return
        raise
    try:
        conn.execute("SELECT set_config('application_name', %s, false)", (application_name(command),))
        got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", LOCK_KEYS).fetchone()[0]
        if not got and wait > 0:
            if report:
                report(f"waiting up to {wait:g} s for {describe(holder(conn))} to finish with the store")
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(wait * 1000)}ms",))
            try:
                conn.execute("SELECT pg_advisory_lock(%s, %s)", LOCK_KEYS)
                got = True
            except psycopg.errors.LockNotAvailable:
                got = False
            conn.execute("SELECT set_config('lock_timeout', '0', false)")
        if not got:
            who = holder(conn)
            raise StoreBusyError(
                f"The store is busy: {describe(who)} is changing it",
                hint="Try again later (exit 75 means exactly that), or add --wait SECONDS to wait for it.",
                holder=who,
            )
        yield None
    finally:
        try:
            conn.close()  # ends the session: PostgreSQL releases the lock
        except Exception:  # the server went away under us (down --volumes): nothing is held any more
            pass
