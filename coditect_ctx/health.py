"""`ctx health`: a verdict for cron and monitoring, in seconds, whatever state the services are in.

Every check runs with a short timeout and in parallel, so a dead or hung service costs at most one timeout and
is reported CRITICAL by name (Monitoring Plugins: a timeout on a checked service is CRITICAL; UNKNOWN is for a
check that cannot run at all). Light by design: no torch, sentence-transformers or chromadb imports here.
The kinds' tables and collections the drift check compares come from kinds.py.
"""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .config import Settings
from .errors import CtxError
from .kinds import COLLECTIONS, TABLES
from .runtime import probes
from .stores import Store
from .stores import postgres as pg

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass
class Check:
    name: str
    status: int
    message: str
    # perfdata: label -> (value, unit, warn, crit, min, max)
    metrics: dict[str, tuple] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # what tells apart checks of one kind (a backup's repo)

    @property
    def status_name(self) -> str:
        return STATUS_NAMES[self.status]


@dataclass
class HealthReport:
    checks: list[Check]
    duration_s: float
    runtime: str

    @property
    def status(self) -> int:
        return max((c.status for c in self.checks), default=UNKNOWN)

    @property
    def status_name(self) -> str:
        return STATUS_NAMES[self.status]

    def as_dict(self) -> dict:
        return {
            "status": self.status_name,
            "exit_code": self.status,
            "runtime": self.runtime,
            "duration_s": round(self.duration_s, 3),
            "checks": [
                {"name": c.name, "status": c.status_name, "message": c.message,
                 "metrics": {k: v[0] for k, v in c.metrics.items()}}
                for c in self.checks
            ],
        }


def _short(exc: BaseException) -> str:
    if isinstance(exc, CtxError):
        return exc.message
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_postgres(store: Store, timeout: float) -> Check:
    try:
        version = probes.pg_version(store.pg_url, timeout)
    except Exception as exc:
        return Check("postgres", CRITICAL, f"PostgreSQL unreachable ({store.runtime.name} runtime): {_short(exc)}")
    try:
        with pg.connect(store.pg_url, timeout) as conn:
            conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
            current = pg.schema_version(conn)
    except Exception as exc:
        return Check("postgres", CRITICAL, f"PostgreSQL {version}: cannot read schema: {_short(exc)}")
    latest = pg.latest_version()
    metrics = {"schema_version": (current, "", None, None, 0, None)}
    if current == 0:
        return Check("postgres", CRITICAL, f"PostgreSQL {version} up, but no ctx schema (run `ctx setup`)", metrics)
    if current < latest:
        return Check("postgres", WARNING, f"PostgreSQL {version}: schema {current} < {latest} (run `ctx setup`)", metrics)
    if current > latest:
        return Check("postgres", WARNING, f"PostgreSQL {version}: schema {current} is newer than this ctx ({latest})", metrics)
    return Check("postgres", OK, f"PostgreSQL {version}, schema {current}", metrics)


def check_chroma(store: Store, timeout: float) -> Check:
    chroma = store.open_chroma(read_timeout=timeout)
    try:
        chroma.heartbeat()
        names = {c["name"] for c in chroma.list_collections()}
    except Exception as exc:
        return Check("chroma", CRITICAL, f"Chroma unreachable at {chroma.url}: {_short(exc)}")
    finally:
        chroma.close()
    missing = sorted(set(COLLECTIONS.values()) - names)
    if missing:
        return Check("chroma", CRITICAL, f"Chroma up, collections missing: {', '.join(missing)} (run `ctx setup`)")
    return Check("chroma", OK, f"Chroma up, {len(COLLECTIONS)} collections")


def check_redis(store: Store, timeout: float) -> Check:
    url = store.endpoints.redis_url
    if url is None:
        return Check("redis", OK, f"cache disabled ({store.endpoints.redis_note})", {"cache_enabled": (0, "", None, None, 0, 1)})
    try:
        version = probes.redis_info(url, timeout)
    except Exception as exc:
        return Check("redis", CRITICAL, f"Redis unreachable: {_short(exc)}")
    return Check("redis", OK, f"Redis {version} PONG", {"cache_enabled": (1, "", None, None, 0, 1)})


def check_disk(settings: Settings) -> Check:
    path = settings.home if settings.home.exists() else settings.home.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return Check("disk", UNKNOWN, f"cannot stat {path}: {exc}")
    pct = 100.0 * usage.used / usage.total if usage.total else 0.0
    free_gb = usage.free / 1e9
    w, c = settings.disk_warn_percent, settings.disk_crit_percent
    status = CRITICAL if pct >= c else WARNING if pct >= w else OK
    return Check("disk", status, f"{pct:.1f}% used, {free_gb:.1f} GB free on {path}",
                 {"disk_used_pct": (round(pct, 2), "%", w, c, 0, 100)})


def check_drift(store: Store, timeout: float) -> Check:
    """Rows not embedded yet, and vectors Chroma holds beyond or short of what PostgreSQL says it embedded."""
    try:
        with pg.connect(store.pg_url, timeout) as conn:
            conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
            if not pg.schema_version(conn):
                return Check("drift", UNKNOWN, "no schema yet")
            expected, pending = {}, 0
            for kind, table in TABLES.items():
                n_vec, n_pending = conn.execute(
                    f"SELECT coalesce(sum(embedded_chunks) FILTER (WHERE embedded_sha256 = content_sha256), 0),"
                    f" count(*) FILTER (WHERE embedded_sha256 IS DISTINCT FROM content_sha256) FROM {table}"
                ).fetchone()
                expected[kind], pending = int(n_vec), pending + int(n_pending)
        chroma = store.open_chroma(read_timeout=timeout)
        try:
            actual = {kind: chroma.count(COLLECTIONS[kind]) for kind in TABLES}
        finally:
            chroma.close()
    except Exception as exc:
        return Check("drift", UNKNOWN, f"cannot compare stores: {_short(exc)}")
    mismatch = sum(abs(actual[k] - expected[k]) for k in expected)
    metrics = {"embeddings_pending": (pending, "", 1, None, 0, None), "embedding_mismatch": (mismatch, "", 1, None, 0, None)}
    if mismatch or pending:
        return Check("drift", WARNING,
                     f"{pending} rows not embedded, {mismatch} vectors out of step (run `ctx validate --repair`)", metrics)
    return Check("drift", OK, f"PostgreSQL and Chroma agree ({sum(actual.values())} vectors)", metrics)


def newest_backup(settings: Settings) -> tuple[Path, datetime] | None:
    """The newest complete backup (one with a manifest) in the local backups folder, by its recorded end time."""
    from .backup import newest_in

    return newest_in(settings.backups_path)


def check_backup(settings: Settings, url: str | None = None) -> Check | None:
    """Age of the newest complete backup in one repository (default: the local backups folder). Object storage
    costs one listing and one small GET, within CTX_TIMEOUT; one that cannot be reached, or holds no complete
    backup yet, is a WARNING naming it. The default backups folder without backups is no check at all (a new
    store), unless CTX_BACKUP_REPOS names it."""
    limit = settings.backup_max_age_hours
    url = url or str(settings.backups_path)
    local = not url.lower().startswith("s3://") and Path(url).expanduser().resolve() == settings.backups_path.resolve()
    name, labels = ("backup", {}) if local else (f"backup {url}", {"repo": url})
    if local:
        found = newest_backup(settings)
        newest = (found[0].name, found[1]) if found else None
    else:
        from .repos import open_repo

        try:
            newest = _within(settings.timeout, lambda: open_repo(settings, url, quick=True).newest())
        except TimeoutError:
            return Check(name, WARNING, f"backup repository unreachable: {url} did not answer within "
                                        f"{settings.timeout:g} s (CTX_TIMEOUT)", labels=labels)
        except CtxError as exc:
            return Check(name, WARNING, f"backup repository unreachable: {exc.message}", labels=labels)
    if newest is None:
        if local and not settings.backup_repos.strip():  # the default folder of a new store: nothing to say yet
            return None
        return Check(name, WARNING, f"no complete backup in {url} yet", labels=labels)
    backup, ended = newest
    age_h = (datetime.now(timezone.utc) - ended).total_seconds() / 3600
    status = WARNING if age_h > limit else OK
    where = "" if local else f" in {url}"
    return Check(name, status, f"newest backup {backup}{where} is {age_h:.1f} h old (limit {limit:g} h)",
                 {"backup_age_hours": (round(age_h, 2), "", limit, None, 0, None)}, labels=labels)


def _within(seconds: float, fn):
    """fn() with one deadline for all it does (a listing and a GET, each with its own socket timeouts); past it,
    TimeoutError, and the call goes on in a daemon thread that never holds the process open."""
    done: dict = {}

    def call() -> None:
        try:
            done["value"] = fn()
        except BaseException as exc:  # handed to the caller
            done["error"] = exc

    worker = threading.Thread(target=call, daemon=True, name="ctx-health-repo")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError
    if "error" in done:
        raise done["error"]
    return done["value"]


def backup_repos(settings: Settings) -> list[str]:
    from .repos import configured

    return configured(settings)


def _guarded(name: str, check, *args) -> Check | None:
    """A check that fails in a way nobody foresaw is UNKNOWN (it could not run), never a crash of the whole run."""
    try:
        return check(*args)
    except Exception as exc:
        return Check(name, UNKNOWN, f"check failed: {_short(exc)}")


def run_health(settings: Settings) -> HealthReport:
    start = time.monotonic()
    store = Store(settings)
    t = settings.timeout
    try:
        store.endpoints  # resolve once, before the threads share it
    except CtxError as exc:
        return HealthReport([Check("config", UNKNOWN, exc.message)], time.monotonic() - start, "?")
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(_guarded, "postgres", check_postgres, store, t),
            pool.submit(_guarded, "chroma", check_chroma, store, t),
            pool.submit(_guarded, "redis", check_redis, store, t),
            pool.submit(_guarded, "disk", check_disk, settings),
        ] + [pool.submit(_guarded, "backup", check_backup, settings, url) for url in backup_repos(settings)]
        checks = [f.result() for f in futures]
    checks = [c for c in checks if c is not None]
    by_name = {c.name: c for c in checks}
    if by_name["postgres"].status != CRITICAL and by_name["chroma"].status == OK:
        checks.append(_guarded("drift", check_drift, store, t))
    return HealthReport(checks, time.monotonic() - start, store.runtime.name)


# -- renderings -------------------------------------------------------------------------------------------
def _perf_value(v) -> str:
    return "" if v is None else f"{v:g}" if isinstance(v, (int, float)) else str(v)


def render_nagios(report: HealthReport) -> str:
    """`CTX STATUS: text | 'label'=value[UOM];warn;crit;min;max ...` (Monitoring Plugins)."""
    bad = [c for c in report.checks if c.status != OK]
    text = "; ".join(f"{c.name} {c.status_name}: {c.message}" for c in bad) if bad else ", ".join(
        f"{c.name} ok" for c in report.checks)
    perf = []
    for c in report.checks:
        for label, (value, unit, warn, crit, lo, hi) in c.metrics.items():
            label = " ".join([label, *c.labels.values()])
            perf.append(f"'{label}'={_perf_value(value)}{unit};{_perf_value(warn)};{_perf_value(crit)};"
                        f"{_perf_value(lo)};{_perf_value(hi)}")
    perf.append(f"'duration'={report.duration_s:.3f}s;;;0;")
    return f"CTX {report.status_name}: {text} | {' '.join(perf)}"


# Each perfdata label as a Prometheus gauge: name (base units, `_ratio` for a 0-1 fraction), help, and the factor
# from the Nagios value to the Prometheus one (Nagios perfdata keeps % and hours, what a human reads there).
PROMETHEUS_METRICS = {
    "schema_version": ("ctx_schema_version", "Schema version applied in PostgreSQL (0: no ctx schema).", 1),
    "cache_enabled": ("ctx_cache_enabled", "1 when the Redis cache is configured, 0 when ctx runs with it off.", 1),
    "disk_used_pct": ("ctx_disk_used_ratio", "Fraction (0-1) of the data directory's file system in use.", 0.01),
    "embeddings_pending": ("ctx_embeddings_pending", "PostgreSQL rows whose current content has no embeddings yet.", 1),
    "embedding_mismatch": ("ctx_embedding_mismatch", "Vectors Chroma holds beyond or short of what PostgreSQL expects.", 1),
    "backup_age_hours": ("ctx_backup_age_seconds", "Age in seconds of the newest complete backup.", 3600),
}


def _label(value: object) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped (an S3 key may hold any of them, and
    one unescaped makes node_exporter's textfile collector drop every metric of the file)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(report: HealthReport) -> str:
    """Text exposition format for node_exporter's textfile collector; every metric with HELP and TYPE."""

    def gauge(name: str, help_text: str, samples: list[tuple[str, object]]) -> list[str]:
        return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"] + [f"{name}{labels} {value}" for labels, value in samples]

    statuses = "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"
    lines = gauge("ctx_health_status", f"Overall status: {statuses}.", [(f'{{runtime="{_label(report.runtime)}"}}', report.status)])
    lines += gauge("ctx_check_status", f"Status of one check: {statuses}.",
                   [(f'{{check="{_label(c.name)}"}}', c.status) for c in report.checks])
    lines += gauge("ctx_check_up", "1 when the check passed (OK), else 0.",
                   [(f'{{check="{_label(c.name)}"}}', 1 if c.status == OK else 0) for c in report.checks])
    metrics: dict[str, list[tuple[str, object]]] = {}  # label -> samples, one per check (a backup per repository)
    for c in report.checks:
        tags = "{" + ",".join(f'{k}="{_label(v)}"' for k, v in c.labels.items()) + "}" if c.labels else ""
        for label, (value, *_rest) in c.metrics.items():
            metrics.setdefault(label, []).append((tags, value))
    for label, samples in sorted(metrics.items()):
        name, help_text, factor = PROMETHEUS_METRICS.get(label, (f"ctx_{label}", f"{label} (as in the Nagios perfdata).", 1))
        lines += gauge(name, help_text, [(tags, _perf_value(round(value * factor, 6))) for tags, value in samples])
    lines += gauge("ctx_health_duration_seconds", "Wall time the health run took, in seconds.",
                   [("", f"{report.duration_s:.3f}")])
    return "\n".join(lines) + "\n"
