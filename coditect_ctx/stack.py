"""Bring the store up, take it down, and say how it is: the jobs behind `ctx setup`, `ctx down`, `ctx status`."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from .config import Settings, ensure_secrets, home_lock
from .errors import ConfigError, CtxError, ServiceError
from .runtime import get_runtime, record_runtime, resolve_runtime_name
from .runtime.base import Progress
from .stores import Store
from .stores import postgres as pg
from .stores.chroma import COLLECTIONS, ensure_collections

Report = Callable[[str], None]


@dataclass
class SetupResult:
    runtime: str
    schema_applied: list[str] = field(default_factory=list)
    schema_version: int = 0
    collections_created: list[str] = field(default_factory=list)
    cache: str = "enabled"
    model: str = ""
    changed: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def setup(settings: Settings, report: Report = lambda msg: None, prepare_model: bool = True,
          wait: float = 0.0, progress: Progress = lambda step, done, total: None) -> SetupResult:
    """Get the images (docker), start what is not running, wait for it, apply the schema, create collections.
    Idempotent.

    Racing setups of one CTX_HOME take turns (flock on the folder, held until the store is ready): one set of
    secrets, one start. The schema and collections step holds the store's writer lock (exit 75 while another
    command, say a migrate, changes the store)."""
    check_home_writable(settings)
    with home_lock(settings.home, report):
        name = resolve_runtime_name(settings, report=report)
        report(f"runtime: {name}")
        get_runtime(replace(settings, runtime=name)).prepare(report, progress)  # before anything is created
        if name != "external":  # external: the operator's URLs carry every password; nothing generated may override them
            settings = ensure_secrets(settings)
        runtime = get_runtime(replace(settings, runtime=name))
        runtime.start(report)
        record_runtime(settings, name)
        result = SetupResult(runtime=name)
        with Store(settings, runtime) as store, store.writer_lock("setup", wait=wait, report=report):
            result.schema_applied = pg.migrate_schema(store.pg_url)
            for applied in result.schema_applied:
                report(f"schema: applied {applied}")
            with store.pg() as conn:
                result.schema_version = pg.schema_version(conn)
            result.collections_created = ensure_collections(store.chroma)
            for created in result.collections_created:
                report(f"chroma: created collection {created}")
            if store.endpoints.redis_url is None:
                result.cache = f"disabled ({store.endpoints.redis_note})"
                report(f"redis: {result.cache}; search works without it, only slower")
    if prepare_model:
        result.model = _prepare_query_model(settings, report)
    result.changed = bool(result.schema_applied or result.collections_created)
    return result


def check_home_writable(settings: Settings) -> None:
    """CTX_HOME must be a folder this user can create files in: said before anything starts, naming the folder."""
    import tempfile

    home = settings.home
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ctx-write-test.", dir=home)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        what = "is not a folder" if home.exists() and not home.is_dir() else f"is not writable ({exc.strerror or exc})"
        raise ConfigError(f"CTX_HOME {home} {what}",
                          hint="Point CTX_HOME (or --home) at a folder this user can write, or fix that folder's "
                               "permissions (read-only mount, chattr +i, owner).") from exc


def _prepare_query_model(settings: Settings, report: Report) -> str:
    """Export the packaged model to ONNX once, so searches start without importing torch."""
    from . import embed

    if not (settings.models_path / embed.ONNX_FILENAME).exists():
        report("model: preparing the ONNX export of all-MiniLM-L6-v2 (once, a few seconds)")
    path = embed.ensure_onnx(settings.models_path)
    return str(path)


def down(settings: Settings, volumes: bool = False, report: Report = lambda msg: None, wait: float = 0.0) -> str:
    """Stop the services; with `volumes` (and a runtime that deletes: not external), under the writer lock. A
    PostgreSQL that does not answer holds no lock: then the data goes without asking it."""
    runtime = get_runtime(settings, probe=False)
    if volumes and runtime.name != "external":
        with Store(settings, runtime).writer_lock("down --volumes", wait=wait, report=report, if_reachable=True):
            runtime.stop(volumes=True, report=report)
    else:
        runtime.stop(volumes=volumes, report=report)
    return runtime.name


def status(settings: Settings) -> dict:
    """Everything the original README's monitoring section showed, as one dict (rendered as tables or JSON)."""
    store = Store(settings)
    runtime = store.runtime
    out: dict = {
        "runtime": runtime.name,
        "home": str(settings.home),
        "services": [asdict(s) for s in runtime.services()],
        "schema": {"version": None, "latest": pg.latest_version()},
        "tables": {},
        "table_sizes": {},
        "database_size": None,
        "collections": {},
        "context_loads": [],
        "errors": [],
    }
    up = {s["name"]: s["running"] for s in out["services"]}
    if up.get("postgres"):
        try:
            with store.pg() as conn:
                out["schema"]["version"] = pg.schema_version(conn)
                if out["schema"]["version"]:
                    out["tables"] = pg.table_counts(conn)
                if (out["schema"]["version"] or 0) >= 3:
                    out["context_loads"] = pg.context_loads_per_day(conn)
                out["table_sizes"] = pg.table_sizes(conn)
                out["database_size"] = pg.database_size(conn)
        except CtxError as exc:
            out["errors"].append(exc.message)
        except Exception as exc:  # a half-made schema must not hide the rest of the report
            out["errors"].append(f"postgres: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    if up.get("chroma"):
        try:
            existing = {c["name"] for c in store.chroma.list_collections()}
            for name in COLLECTIONS.values():
                out["collections"][name] = store.chroma.count(name) if name in existing else None
        except ServiceError as exc:
            out["errors"].append(exc.message)
    store.close()
    return out


def logs(settings: Settings, service: str, follow: bool = False, lines: int = 50):
    """The last `lines` of a service's log, then new lines while `follow`."""
    from .errors import UsageError
    from .runtime.base import SERVICES

    if service not in SERVICES:
        raise UsageError(f"Unknown service {service!r}", hint=f"Use one of: {', '.join(SERVICES)}.")
    yield from get_runtime(settings, probe=False).logs(service, follow=follow, lines=lines)
