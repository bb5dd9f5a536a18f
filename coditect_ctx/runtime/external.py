"""The external runtime: ctx on services someone else runs (managed PostgreSQL, a Chroma server, Redis).

ctx never starts, stops or deletes anything here: `start` only validates the connection settings (waiting
briefly for services that are still coming up) and `stop` says so. Every address, user and password comes from
the operator's URLs (CTX_PG_URL, CTX_CHROMA_URL + CTX_CHROMA_TOKEN, CTX_REDIS_URL): nothing ctx generated for the
local runtimes is ever mixed in. Errors name the setting to fix and never echo a password.
"""

from __future__ import annotations

import re
import ssl
import time
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from ..chroma_http import ChromaConnection, ChromaHTTPError
from ..config import Settings, redact_url
from ..errors import ConfigError, ServiceError, UsageError
from .base import Endpoints, Runtime, ServiceStatus
from .pgtools import choose_pg_client, client_major, database_args, require_tool, run_tool, tool_env, tool_text

__all__ = ["ExternalRuntime", "check_chroma", "check_postgres", "check_redis", "choose_pg_client", "client_major"]

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
GRANTS_HINT = "See the README section 'Growing past one machine' for the grants each command needs."
_Report = Callable[[str], None]


class Unreachable(ServiceError):
    """Nothing answered at the address (refused, no route, unknown host, timeout): worth waiting for briefly."""


# -- settings -> addresses -----------------------------------------------------------------------------------
def _scrub(text: str, url: str) -> str:
    """Remove a URL's password from a message (parsers may quote the part they choke on)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in {password, unquote(password)} if password else ():
        if secret:
            text = text.replace(secret, "***")
    return text


def pg_params(url: str) -> dict[str, str]:
    """libpq's reading of CTX_PG_URL (user, password, host, port, dbname, sslmode, ...), or a ConfigError."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"CTX_PG_URL must be a postgresql:// URL, got {redact_url(url)!r}",
            hint="e.g. CTX_PG_URL='postgresql://ctx:PASSWORD@db.example.com:5432/ctx?sslmode=verify-full&sslrootcert=/etc/ctx/ca.pem'",
        )
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    except ProgrammingError as exc:
        raise ConfigError(f"CTX_PG_URL is not a valid PostgreSQL URL: {_scrub(str(exc), url)}",
                          hint="Percent-encode special characters in the user and password (@ -> %40, : -> %3A, / -> %2F).") from None
    mode = params.get("sslmode")
    if mode and mode not in SSLMODES:
        raise ConfigError(f"CTX_PG_URL has sslmode={mode!r}", hint=f"Use one of: {', '.join(SSLMODES)} (verify-full for a remote server).")
    root = params.get("sslrootcert")
    if root and root != "system" and not Path(root).expanduser().is_file():
        raise ConfigError(f"postgres: the CA file sslrootcert={root} (CTX_PG_URL / CTX_PG_SSLROOTCERT) does not exist",
                          hint="Give the path of the CA certificate (PEM) your provider publishes for this server.")
    return params


def pg_target(params: dict[str, str]) -> str:
    """user@host:port/db, fit to print."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{params.get('user') or '?'}@{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or '?'}"


def external_pg_url(settings: Settings) -> str:
    """CTX_PG_URL, with CTX_PG_SSLROOTCERT added as sslrootcert when the URL does not name a CA itself."""
    url = settings.pg_url.strip()
    if not url:
        raise ConfigError(
            "external runtime: CTX_PG_URL is not set",
            hint="Set CTX_PG_URL (or --pg-url), e.g. postgresql://ctx:PASSWORD@db.example.com:5432/ctx?sslmode=verify-full",
        )
    if settings.pg_sslrootcert and "sslrootcert=" not in (urlsplit(url).query or ""):
        from urllib.parse import quote

        url += ("&" if urlsplit(url).query else "?") + "sslrootcert=" + quote(str(Path(settings.pg_sslrootcert).expanduser()), safe="/")
    return url


def _redis_endpoint(settings: Settings) -> tuple[str | None, str]:
    url = settings.redis_url.strip()
    if url.lower() == "none":
        return None, "cache disabled by setting (CTX_REDIS_URL=none)"
    if not url:
        return None, "CTX_REDIS_URL not set: cache off"
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"CTX_REDIS_URL must be redis://, rediss:// or unix://, got {redact_url(url)!r}",
                          hint="e.g. rediss://ctx:PASSWORD@cache.example.com:6380/0, or 'none' to run without the cache.")
    return url, ""


# -- connection checks: each raises an error that names the setting ------------------------------------------
def pg_failure(exc: BaseException, params: dict[str, str]) -> ServiceError:
    """Turn libpq's message into: what is wrong, which setting, how to fix it. libpq never prints passwords."""
    text = str(exc).strip()
    detail = text.rsplit("failed: ", 1)[-1].splitlines()[0] if text else type(exc).__name__
    low = text.lower()
    target = pg_target(params)
    mode = params.get("sslmode") or "prefer"
    if "password authentication failed" in low or "no password supplied" in low or "authentication failed" in low:
        return ServiceError(f"postgres: authentication failed for user {params.get('user')!r} at {target} (CTX_PG_URL)",
                            hint="Check the user name and password in CTX_PG_URL; percent-encode special characters.", service="postgres")
    if "certificate verify failed" in low or "unable to get local issuer" in low or "self-signed certificate" in low:
        root = params.get("sslrootcert") or "~/.postgresql/root.crt (libpq's default)"
        return ServiceError(f"postgres: TLS failure at {target}: the server's certificate is not signed by the CA in "
                            f"sslrootcert={root} (CTX_PG_URL / CTX_PG_SSLROOTCERT)",
                            hint="Give the CA certificate your provider publishes for this server as sslrootcert.", service="postgres")
    if "does not match host name" in low:
        return ServiceError(f"postgres: TLS failure at {target}: the server's certificate does not name the host in CTX_PG_URL "
                            f"(sslmode={mode}): {detail}",
                            hint="Connect with the host name the certificate was issued for (or its IP if the certificate lists it).",
                            service="postgres")
    if "root certificate file" in low or "could not read root certificate" in low:
        return ServiceError(f"postgres: TLS: cannot read the CA file for sslmode={mode} (CTX_PG_URL sslrootcert): {detail}",
                            hint="Set sslrootcert in CTX_PG_URL or CTX_PG_SSLROOTCERT to the CA file (PEM).", service="postgres")
    if "does not support ssl" in low or "ssl was required" in low:
        return ServiceError(f"postgres: {target} offers no TLS, but CTX_PG_URL asks for sslmode={mode}",
                            hint="Enable TLS on the server, or (on a trusted private network only) lower sslmode.", service="postgres")
    if "ssl" in low and ("error" in low or "handshake" in low):
        return ServiceError(f"postgres: TLS failure at {target} (CTX_PG_URL sslmode={mode}): {detail}",
                            hint="Check sslmode, sslrootcert and the server's TLS setup.", service="postgres")
    if "no pg_hba.conf entry" in low:
        return ServiceError(f"postgres: {target} refuses this connection (pg_hba.conf): {detail}",
                            hint="The server may require TLS (sslmode=verify-full) or allow only listed addresses/users.",
                            service="postgres")
    if "database" in low and "does not exist" in low:
        return ServiceError(f"postgres: the database in CTX_PG_URL does not exist at {target}",
                            hint="Create it (CREATE DATABASE ... OWNER <ctx role>) or fix the path of CTX_PG_URL.", service="postgres")
    if "permission denied" in low:
        return ServiceError(f"postgres: user {params.get('user')!r} lacks a privilege at {target}: {detail}",
                            hint=GRANTS_HINT, service="postgres")
    return Unreachable(f"postgres: cannot reach {target} (CTX_PG_URL): {detail}",
                       hint="Check the host and port in CTX_PG_URL, the network path and the server's state.", service="postgres")


def check_postgres(url: str, timeout: float, require_ddl: bool = False) -> str:
    """Connect (TLS as the URL says), return the server version; with `require_ddl`, check setup's rights too."""
    import psycopg

    params = pg_params(url)
    try:
        conn = psycopg.connect(url, connect_timeout=max(2, int(round(timeout))), autocommit=True)
    except psycopg.Error as exc:
        raise pg_failure(exc, params) from None
    with conn:
        version, user, schema = conn.execute("SELECT current_setting('server_version'), current_user, current_schema()").fetchone()
        if require_ddl:
            _require_ddl(conn, user, schema, params)
    return version


def _require_ddl(conn, user: str, schema: str | None, params: dict[str, str]) -> None:
    target = pg_target(params)
    if schema is None:
        raise ServiceError(f"postgres: user {user!r} has no schema to create ctx's tables in at {target} (search_path)",
                           hint=f"GRANT USAGE, CREATE ON SCHEMA public TO {user}; or make {user} the schema's owner.", service="postgres")
    can_create = conn.execute("SELECT has_schema_privilege(current_user, current_schema(), 'CREATE')").fetchone()[0]
    if not can_create:
        raise ServiceError(
            f"postgres: user {user!r} may not create tables in schema {schema!r} at {target}: `ctx setup` needs DDL rights "
            "(CREATE on the schema) to apply the schema",
            hint=f"Run setup as the schema's owner, or: GRANT CREATE ON SCHEMA {schema} TO {user}; then run the other "
                 f"commands as roles with fewer rights. {GRANTS_HINT}",
            service="postgres",
        )
    trgm, can_extend = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'), "
        "has_database_privilege(current_user, current_database(), 'CREATE')"
    ).fetchone()
    if not trgm and not can_extend:
        raise ServiceError(
            f"postgres: the extension pg_trgm is not installed at {target} and user {user!r} may not create it",
            hint="Have an administrator run CREATE EXTENSION pg_trgm; in this database, or GRANT CREATE ON DATABASE to the user.",
            service="postgres",
        )


def check_chroma(client: ChromaConnection) -> str:
    """Heartbeat (reachability, TLS) and an authenticated read (the token, the database); return the server
    version. Closes the client."""
    shown, token = redact_url(client.url), client.token
    try:
        try:
            client.heartbeat()
        except ChromaHTTPError:
            pass  # a proxy that guards every path answers 401 here; the authenticated read below says more
        except ServiceError as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLError) or "certificate" in str(cause).lower():
                raise ServiceError(f"chroma: TLS failure at {shown} (CTX_CHROMA_URL): {cause}",
                                   hint="The server's certificate must chain to a CA this machine trusts (SSL_CERT_FILE "
                                        "selects a CA bundle) and name the URL's host.", service="chroma") from None
            raise Unreachable(f"chroma: cannot reach {shown} (CTX_CHROMA_URL): {cause or exc.message}",
                              hint="Check the host and port in CTX_CHROMA_URL and that the server runs.", service="chroma") from None
        try:
            client.database_info()
        except ChromaHTTPError as exc:
            if exc.status in (401, 403):
                what = "was refused" if token else "is missing"
                raise ServiceError(f"chroma: the token {what} at {shown} (HTTP {exc.status}): CTX_CHROMA_TOKEN",
                                   hint="Set CTX_CHROMA_TOKEN to the token the Chroma server (or its proxy) expects.",
                                   service="chroma") from None
            if exc.status in (400, 404):
                raise ServiceError(f"chroma: {shown} has no database {client.database!r} in tenant {client.tenant!r} "
                                   f"(HTTP {exc.status}): CTX_CHROMA_TENANT / CTX_CHROMA_DATABASE",
                                   hint="Create them on the server, or name ones that exist.", service="chroma") from None
            raise
        try:
            return client.version()
        except ServiceError:
            return "unknown"
    finally:
        client.close()


def check_redis(url: str, timeout: float) -> str:
    """AUTH (ACL user + password), then a GET and SET on a ctx key, as the cache will; return the version."""
    import redis

    parts = urlsplit(url)
    shown = f"{parts.hostname or '?'}:{parts.port or 6379}"
    user = unquote(parts.username) if parts.username else "default"
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    except ValueError as exc:
        raise ConfigError(f"CTX_REDIS_URL is not a valid Redis URL: {_scrub(str(exc), url)}",
                          hint="e.g. rediss://USER:PASSWORD@host:6380/0 (percent-encode special characters).") from None
    try:
        client.ping()
        client.set("ctx:v1:probe", b"1", ex=30)
        client.get("ctx:v1:probe")
        return str(client.info("server").get("redis_version", "unknown"))
    except redis.AuthenticationError:
        raise ServiceError(f"redis: authentication failed for user {user!r} at {shown} (CTX_REDIS_URL)",
                           hint="Check the ACL user and password in CTX_REDIS_URL (redis://USER:PASSWORD@host:port/0).",
                           service="redis") from None
    except redis.ResponseError as exc:
        if "NOPERM" in str(exc) or "NOAUTH" in str(exc):
            raise ServiceError(f"redis: user {user!r} lacks a permission the cache needs at {shown} (CTX_REDIS_URL): {exc}",
                               hint="The ACL user needs: ~ctx:* +get +set +ping +info (and +@connection).", service="redis") from None
        raise ServiceError(f"redis: {shown} answered an error: {exc}", service="redis") from None
    except redis.ConnectionError as exc:
        text = str(exc)
        if "ssl" in text.lower() or "certificate" in text.lower():
            raise ServiceError(f"redis: TLS failure at {shown} (CTX_REDIS_URL): {text}",
                               hint="rediss:// needs a certificate this machine trusts; add ?ssl_ca_certs=/path/ca.pem to the URL.",
                               service="redis") from None
        raise Unreachable(f"redis: cannot reach {shown} (CTX_REDIS_URL): {text}",
                          hint="Check the host and port in CTX_REDIS_URL, or set CTX_REDIS_URL=none to run without the cache.",
                          service="redis") from None
    except redis.RedisError as exc:
        raise ServiceError(f"redis: {shown}: {type(exc).__name__}: {exc}", service="redis") from None
    finally:
        client.close()


class ExternalRuntime(Runtime):
    name = "external"

    # -- addresses ---------------------------------------------------------------------------------------
    def endpoints(self) -> Endpoints:
        s = self.settings
        pg_url = external_pg_url(s)
        pg_params(pg_url)
        chroma_url = s.chroma_url.strip()
        if not chroma_url:
            raise ConfigError("external runtime: CTX_CHROMA_URL is not set",
                              hint="Set CTX_CHROMA_URL (or --chroma-url), e.g. https://chroma.example.com:8000, and CTX_CHROMA_TOKEN.")
        if urlsplit(chroma_url).scheme not in ("http", "https"):
            raise ConfigError(f"CTX_CHROMA_URL must be http:// or https://, got {redact_url(chroma_url)!r}",
                              hint="e.g. https://chroma.example.com:8000")
        redis_url, note = _redis_endpoint(s)
        return Endpoints(pg_url=pg_url, chroma_url=chroma_url, chroma_token=s.chroma_token or None,
                         redis_url=redis_url, redis_note=note)

    def _chroma(self, ep: Endpoints) -> ChromaConnection:
        return ChromaConnection.for_settings(self.settings, ep.chroma_url, ep.chroma_token, read_timeout=self.settings.timeout)

    # -- validation --------------------------------------------------------------------------------------
    def validate_connection(self, require_ddl: bool = False, report: _Report = lambda msg: None) -> dict[str, str]:
        """Check every service as ctx will use it; return their versions. Raises the first problem, by setting."""
        ep = self.endpoints()
        t = self.settings.timeout
        versions = {"postgres": check_postgres(ep.pg_url, t, require_ddl=require_ddl)}
        report(f"postgres: {pg_target(pg_params(ep.pg_url))} answers (PostgreSQL {versions['postgres']}, "
               f"sslmode={pg_params(ep.pg_url).get('sslmode') or 'prefer'})")
        versions["chroma"] = check_chroma(self._chroma(ep))
        report(f"chroma: {redact_url(ep.chroma_url)} answers (version {versions['chroma']}"
               f"{', token accepted' if ep.chroma_token else ''})")
        if ep.redis_url:
            versions["redis"] = check_redis(ep.redis_url, t)
            report(f"redis: {redact_url(ep.redis_url)} answers (Redis {versions['redis']})")
        return versions

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, report: _Report = lambda msg: None) -> None:
        """Nothing to start: validate the settings, waiting briefly while a service is unreachable."""
        report("external: ctx starts nothing here; checking the services named by CTX_PG_URL, CTX_CHROMA_URL, CTX_REDIS_URL")
        deadline = time.monotonic() + min(self.settings.start_timeout, 30.0)
        while True:
            try:
                self.validate_connection(require_ddl=True, report=report)
                return
            except Unreachable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)

    def stop(self, volumes: bool = False, report: _Report = lambda msg: None) -> None:
        report("external runtime: ctx manages no services here; PostgreSQL, Chroma and Redis were left running, untouched")
        if volumes:
            report("--volumes: nothing deleted; drop the database and the Chroma collections with your provider's tools if you mean to")

    def services(self) -> list[ServiceStatus]:
        ep = self.endpoints()
        t = self.settings.timeout
        params = pg_params(ep.pg_url)
        out = [self._status("postgres", pg_target(params).split("@", 1)[-1], lambda: check_postgres(ep.pg_url, t))]
        out.append(self._status("chroma", redact_url(ep.chroma_url), lambda: check_chroma(self._chroma(ep))))
        if ep.redis_url is None:
            out.append(ServiceStatus("redis", self.name, "-", False, None, ep.redis_note, {"disabled": True}))
        else:
            parts = urlsplit(ep.redis_url)
            out.append(self._status("redis", f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}", lambda: check_redis(ep.redis_url, t)))
        return out

    def _status(self, name: str, address: str, probe: Callable[[], str]) -> ServiceStatus:
        try:
            return ServiceStatus(name, self.name, address, True, probe())
        except (ServiceError, ConfigError) as exc:
            return ServiceStatus(name, self.name, address, False, None, exc.message)

    def logs(self, service: str, follow: bool = False, lines: int = 50):
        raise UsageError(f"{service}: the external runtime has no logs ctx can read",
                         hint="Read the service's log where it runs (your provider's console or the server's log files).")

    # -- PostgreSQL client tools -------------------------------------------------------------------------
    def run_pg_tool(self, tool, args, *, dbname=None, output=None, input_file=None) -> str:
        """The operator's client tools against CTX_PG_URL: password in PGPASSWORD, never on the command line."""
        require_tool(tool)
        from psycopg.conninfo import make_conninfo

        url = self.endpoints().pg_url
        params = pg_params(url)
        password = params.pop("password", None)
        if params.pop("sslpassword", None):
            raise ConfigError("CTX_PG_URL carries sslpassword, which client tools could only get on their command line",
                              hint="Use a client key without a passphrase (mode 0600) for the tools.")
        if dbname and not (dbname == self.settings.pg_db and params.get("dbname")):
            params["dbname"] = dbname  # CTX_PG_DB means "the store's database", which here is the one CTX_PG_URL names
        server_major = int(re.match(r"\d+", check_postgres(url, self.settings.timeout)).group())
        conninfo = make_conninfo(**params)
        env = tool_env(password)
        connect = database_args(tool, dbname and conninfo, conninfo)
        failures = []
        for binary, major in choose_pg_client(tool, server_major, self.settings.pg_bin):
            proc = run_tool([str(binary), *args, *connect], env, output, input_file, self.settings.pg_tool_timeout)
            err = proc.stderr.decode(errors="replace")
            if proc.returncode == 0:
                return tool_text(proc, output)
            if "not compiled in" in err or "ssl support" in err.lower():
                failures.append(f"{binary} ({major}) has no TLS support")
                continue  # this client cannot speak TLS at all: try the next one
            raise ServiceError(f"postgres: {tool} failed against {pg_target(params)}: {_scrub(err.strip()[-800:], url)}",
                               hint="Read the tool's message; " + GRANTS_HINT, service="postgres")
        raise ServiceError(
            f"postgres: no {tool} here can use TLS, which CTX_PG_URL asks for (sslmode={params.get('sslmode')}): "
            + "; ".join(failures),
            hint=f"Install PostgreSQL {server_major} client tools built with OpenSSL (e.g. postgresql-client-{server_major}) "
                 f"and set CTX_PG_BIN to their bin folder.",
            service="postgres",
        )
