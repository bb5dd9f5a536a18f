"""One base exception for the package; each failure carries a hint for the fix.

The CLI maps these to exit codes and friendly messages; library callers can catch
`CtxError` for all of them or a subclass for one kind.
"""

from __future__ import annotations


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
