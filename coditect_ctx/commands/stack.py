"""`ctx setup`, `ctx status`, `ctx down`, `ctx logs`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import output
from .common import JsonOpt, RuntimeOpt, WaitOpt, YesOpt, complete, progress_callback, settings


def register(app: typer.Typer) -> None:
    app.command()(setup)
    app.command()(status)
    app.command()(down)
    app.command()(logs)


def setup(
    ctx: typer.Context,
    runtime: RuntimeOpt = None,
    pg_port: Annotated[int | None, typer.Option(help="PostgreSQL port on 127.0.0.1 (CTX_PG_PORT).")] = None,
    chroma_port: Annotated[int | None, typer.Option(help="Chroma port on 127.0.0.1 (CTX_CHROMA_PORT).")] = None,
    redis_port: Annotated[int | None, typer.Option(help="Redis port on 127.0.0.1 (CTX_REDIS_PORT).")] = None,
    pg_url: Annotated[str | None, typer.Option(
        help="External runtime: postgresql:// URL (CTX_PG_URL). Prefer the variable or .env: `ps` shows flags.")] = None,
    chroma_url: Annotated[str | None, typer.Option(help="External runtime: Chroma URL (CTX_CHROMA_URL).")] = None,
    redis_url: Annotated[str | None, typer.Option(
        help="External runtime: redis:// or rediss:// URL, or 'none' for no cache (CTX_REDIS_URL).")] = None,
    no_pull: Annotated[bool, typer.Option(
        "--no-pull", help="Docker runtime: never pull a missing image; name the `docker pull`/`docker load` instead "
        "(CTX_DOCKER_PULL=never, for hosts without a registry).")] = False,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Start the store (what is not running; the docker runtime pulls missing images), apply the schema, create
    collections. Safe to re-run.

    Exit 75 when another command is changing the store (see --wait)."""
    from ..stack import setup as do_setup

    def body() -> int:
        s = settings(ctx, runtime=runtime, pg_port=pg_port, chroma_port=chroma_port, redis_port=redis_port,
                     pg_url=pg_url, chroma_url=chroma_url, redis_url=redis_url,
                     docker_pull="never" if no_pull else None)
        with progress_callback(json_out) as progress:
            result = do_setup(s, report=output.note, wait=wait, progress=progress)
        if json_out:
            output.emit_json({"ok": True, **result.as_dict()})
        else:
            verdict = "ready" if result.changed else "ready (nothing to change)"
            output.console().print(
                f"ctx store {verdict}: runtime {result.runtime}, schema {result.schema_version}, cache {result.cache}",
                markup=False,
            )
        return 0

    output.run(body, json_out)


def status(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Services, schema version, row counts, collection counts and sizes. Exit 3 when a service is down."""
    from ..stack import status as do_status

    def body() -> int:
        data = do_status(settings(ctx))
        down = [s["name"] for s in data["services"] if not s["running"] and not s.get("extra", {}).get("disabled")]
        if json_out:
            output.emit_json(data)
        else:
            _render_status(data)
        return 3 if down else 0

    output.run(body, json_out)


def _render_status(data: dict) -> None:
    out = output.console()
    rows = [[s["name"], s["runtime"], s["address"], "up" if s["running"] else "down", s["version"] or "-", s["detail"]]
            for s in data["services"]]
    out.print(output.table(f"ctx store at {data['home']}", ["service", "runtime", "address", "state", "version", "note"], rows))
    _render_containers(data["services"])
    schema = data["schema"]
    out.print(f"\nschema version: {schema['version'] if schema['version'] is not None else '-'} (latest {schema['latest']})"
              f"    database size: {output.human_bytes(data['database_size'])}", markup=False)
    if data["tables"]:
        sizes = data["table_sizes"]
        rows = [[t, n, output.human_bytes(sizes.get(t))] for t, n in data["tables"].items()]
        out.print(output.table("\ntables", ["table", "rows", "size"], rows))
    if data["collections"]:
        rows = [[name, "-" if n is None else n] for name, n in data["collections"].items()]
        out.print(output.table("\nchroma collections", ["collection", "embeddings"], rows))
    if data.get("context_loads"):
        rows = [[d["day"], d["packs"], d["records"], d["tokens"], d["clients"]] for d in data["context_loads"]]
        out.print(output.table("\ncontext packs loaded (ctx context, last 7 days)",
                               ["day (UTC)", "packs", "records", "tokens", "clients"], rows))
    for err in data["errors"]:
        output.note(f"warning: {err}")


def _render_containers(services: list[dict]) -> None:
    """The docker runtime's containers and volumes, when there are any (image and health are in the table above)."""
    if not any(s.get("extra", {}).get("container") for s in services):
        return
    rows = []
    for s in services:
        extra = s.get("extra", {})
        notes = [f"{extra['restart_count']} restarts"] if extra.get("restart_count") else []
        if extra.get("spec_current") is False:
            notes.append("settings changed: `ctx setup` recreates it")
        rows.append([s["name"], extra.get("container") or "-", ", ".join(extra.get("ports") or []) or "-",
                     ", ".join(extra.get("volumes") or []) or "-", "; ".join(notes)])
    output.console().print(output.table("\ncontainers", ["service", "container", "ports", "volumes", "note"], rows))


def down(
    ctx: typer.Context,
    volumes: Annotated[bool, typer.Option("--volumes", help="Also DELETE all data (database, embeddings, cache).")] = False,
    yes: YesOpt = False,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Stop the services and keep the data (unless --volumes: exit 75 when another command is changing the store)."""
    from ..stack import down as do_down

    def body() -> int:
        s = settings(ctx)
        if volumes and not yes:
            if not sys.stdin.isatty():
                from ..errors import UsageError

                raise UsageError("--volumes deletes every record and embedding", hint="Add --yes to confirm when not at a terminal.")
            typer.confirm(f"Delete ALL data of the store at {s.home}?", abort=True)
        messages: list[str] = []
        name = do_down(s, volumes=volumes, report=lambda m: (messages.append(m), None if json_out else output.note(m)),
                       wait=wait)
        if json_out:
            output.emit_json({"ok": True, "runtime": name, "volumes_removed": volumes, "messages": messages})
        elif not volumes and name != "external":
            output.note("Data kept; `ctx setup` brings it back.")
        return 0

    output.run(body, json_out)


def _services(ctx: typer.Context) -> tuple[str, ...]:
    from ..runtime.base import SERVICES

    return SERVICES


def logs(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="postgres, chroma or redis", autocompletion=complete(_services))],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many last lines to show.")] = 50,
) -> None:
    """Show a service's log."""
    from ..stack import logs as do_logs

    def body() -> int:
        for line in do_logs(settings(ctx), service, follow=follow, lines=lines):
            sys.stdout.write(line if line.endswith("\n") else line + "\n")
            sys.stdout.flush()
        return 0

    output.run(body)
