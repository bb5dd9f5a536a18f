"""One base exception for the package; each failure carries a hint for the fix.

The CLI maps these to exit codes and friendly messages; library callers can catch
`CtxError` for all of them or a subclass for one kind.
"""

from __future__ import annotations

import sys


class CtxError(Exception):
    """Base of every error ctx raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, service: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.service = service

    def as_dict(self) -> dict:
        return {"error": type(self).__name__, "message": self.message, "hint": self.hint, "service": self.service}


class ConfigError(CtxError):
    """A setting is missing or malformed."""

    exit_code = 2


class UsageError(CtxError):
    """Bad input from the operator (arguments, files)."""

    exit_code = 2


class ServiceError(CtxError):
    """A service did not start, answer or accept us."""

    exit_code = 3


class PortInUseError(ServiceError):
    """A configured port is already taken by another process."""


class SchemaError(CtxError):
    """The database schema is missing, newer than this ctx, or inconsistent."""

    exit_code = 4


class DataError(CtxError):
    """Data did not pass a check (checksums, counts, validation)."""

    exit_code = 5


class Terminated(KeyboardInterrupt):
    """SIGTERM reached ctx: raised like Ctrl-C, so every cleanup an interrupt runs also runs (a child tool is
    ended, a partial backup removed); the CLI exits 143."""


class StoreBusyError(CtxError):
    """Another command holds the store's writer lock (EX_TEMPFAIL: cron's "try again later")."""

    exit_code = 75

    def __init__(self, message: str, hint: str | None = None, holder: dict | None = None):
        super().__init__(message, hint=hint, service="postgres")
        self.holder = holder or {}

    def as_dict(self) -> dict:
        return {**super().as_dict(), "holder": self.holder}


class InternalError(CtxError):
    """An exception ctx did not expect: a bug. EX_SOFTWARE, so cron never reads it as a partial success."""

    exit_code = 70


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def as_ctx_error(exc: BaseException) -> CtxError:
    """The CtxError an exception means to the operator: a lost service, an unusable path, or else a bug.

    The last resort of the CLI: whatever escaped a command becomes one line and an exit code, never a traceback.
    """
    if isinstance(exc, CtxError):
        return exc
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return ServiceError(f"PostgreSQL connection lost: {_first_line(exc)}", service="postgres",
                            hint="See `ctx health`; `ctx setup` starts a stopped store. Then run the command again: "
                                 "what was committed is kept, and a rerun finishes the rest.")
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return ServiceError(f"a service stopped answering: {_first_line(exc)}",
                            hint="See `ctx health` for which; `ctx setup` starts a stopped store. Then run the command again.")
    if isinstance(exc, OSError) and exc.filename is not None:
        where = exc.filename
        return ConfigError(f"cannot use {where}: {exc.strerror or _first_line(exc)}",
                           hint="Make that folder writable by this user (and the disk not full), or point CTX_HOME "
                                "(--home) or --dest at one that is.")
    return InternalError(f"unexpected {type(exc).__name__}: {_first_line(exc)}",
                         hint="This is a bug in ctx. Run again with CTX_DEBUG=1 to see the traceback, and report it.")
