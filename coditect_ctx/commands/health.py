"""`ctx health`: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Monitoring Plugins)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .. import output
from .common import JsonOpt, settings


class Format(str, Enum):
    table = "table"
    json = "json"
    nagios = "nagios"
    prometheus = "prometheus"


def register(app: typer.Typer) -> None:
    app.command()(health)


def health(
    ctx: typer.Context,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table, json, nagios or prometheus.")] = Format.table,
    json_out: JsonOpt = False,
    out_file: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also write the rendering to this file atomically (e.g. a node_exporter *.prom)."),
    ] = None,
) -> None:
    """Check every service, the schema, disk, PostgreSQL/Chroma drift and backup age; for cron and monitoring."""
    from ..health import render_nagios, render_prometheus, run_health

    if json_out:
        fmt = Format.json

    def body() -> int:
        report = run_health(settings(ctx))
        if fmt is Format.json:
            import json

            text = json.dumps(report.as_dict(), indent=2) + "\n"
        elif fmt is Format.nagios:
            text = render_nagios(report) + "\n"
        elif fmt is Format.prometheus:
            text = render_prometheus(report)
        else:
            text = None
            rows = [[c.name, c.status_name, c.message] for c in report.checks]
            output.console().print(output.table(f"ctx health: {report.status_name}", ["check", "status", "detail"], rows))
        if text is not None:
            typer.echo(text, nl=False)
        if out_file is not None:
            body_text = text if text is not None else render_nagios(report) + "\n"
            tmp = out_file.with_name(f".{out_file.name}.{os.getpid()}.tmp")
            tmp.write_text(body_text)
            os.chmod(tmp, 0o644)  # for node_exporter, another user: statuses only, no data and no secret
            os.replace(tmp, out_file)
        return report.status

    output.run(body, fmt is Format.json, unexpected_code=3)  # UNKNOWN: cron must never read a crash as WARNING
