"""`ctx migrate` and `ctx validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import output
from .common import JsonOpt, WaitOpt, settings


def register(app: typer.Typer) -> None:
    app.command()(migrate)
    app.command()(validate)


def migrate(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="MEMORY-CONTEXT folders, or repo roots whose MEMORY-CONTEXT folders (own and submodules') are found.")],
    submodule: Annotated[str | None, typer.Option("--submodule", help="Name for a single MEMORY-CONTEXT source, or the one submodule of a repo to migrate.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read, redact and compare with the store; write nothing.")] = False,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Bring MEMORY-CONTEXT records into the store: deduplicated, redacted, embedded. Safe to re-run.

    Exit 1 when a file could not be read or embeddings could not be written (the rest is done); 75 when another
    command is changing the store (see --wait)."""
    from ..migrate import run_migrate

    def body() -> int:
        with output.progress(enabled=not json_out) as bar:
            tasks: dict[str, int] = {}

            def on_progress(phase: str, done: int, total: int) -> None:
                label = "read sources" if phase == "read" else f"embed {phase}s"
                if phase not in tasks:
                    tasks[phase] = bar.add_task(label, total=total)
                bar.update(tasks[phase], completed=done, total=total)

            report = run_migrate(settings(ctx), paths, submodule=submodule, dry_run=dry_run, on_progress=on_progress,
                                 wait=wait, report_note=None if json_out else output.note)
        if json_out:
            output.emit_json(report.as_dict())
        else:
            _render(report)
        return report.exit_code

    output.run(body, json_out)


def _render(report) -> None:
    out = output.console()
    rows = []
    for src, per in report.sources.items():
        for kind, s in sorted(per.items()):
            rows.append([src, kind, s.read, s.imported, s.updated, s.unchanged, s.skipped, s.failed])
    title = "migrate (dry run: nothing written)" if report.dry_run else "migrate"
    out.print(output.table(title, ["source", "type", "read", "imported", "updated", "unchanged", "skipped", "failed"], rows))
    for src, per in report.sources.items():
        for kind, s in sorted(per.items()):
            for reason, n in s.skipped_reasons.items():
                out.print(output.printable(f"skipped: {src} {kind}: {n} x {reason}"), markup=False)
            for f in s.failures:
                output.note(output.printable(f"failed: {src} {f['file']}: {f['reason']}"))
    if report.redacted_records:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.redactions.items()))
        out.print(f"redacted: {report.redacted_records} records ({kinds})", markup=False)
    if not report.dry_run:
        out.print(f"embedded: {report.embedded_records} records, {report.embedded_vectors} vectors; "
                  f"not embedded: {report.not_embedded}", markup=False)
        if report.embed_capped:
            out.print(f"capped: {report.embed_capped} records longer than {report.embed_max_chunks} chunks embedded "
                      "their first chunks only (CTX_EMBED_MAX_CHUNKS); the whole text is stored", markup=False)
    for note in report.notes:
        out.print(output.printable(f"note: {note}"), markup=False)
    if report.embed_error:
        output.note(output.printable(f"warning: {report.embed_error}"))


def validate(
    ctx: typer.Context,
    repair: Annotated[bool, typer.Option("--repair", help="Re-embed, delete orphan vectors and re-link what PostgreSQL can mend.")] = False,
    files: Annotated[bool, typer.Option("--files/--no-files", help="Also compare with the source files (default) or only PostgreSQL with Chroma.")] = True,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Prove the files, PostgreSQL and Chroma agree. Exit 0 only when they all do (5 otherwise; 3 when one is down).

    --repair changes the store: it holds the writer lock (exit 75 when another command is changing the store)."""
    from ..validate import run_validate

    def body() -> int:
        report = run_validate(settings(ctx), repair=repair, files=files, wait=wait,
                              report_note=None if json_out else output.note)
        if json_out:
            output.emit_json(report.as_dict())
        else:
            _render_validate(report)
        return report.exit_code

    output.run(body, json_out)


def _render_validate(report) -> None:
    out = output.console()
    rows = []
    for r in report.rows:
        issues = [f"{n} {label}" for n, label in (
            (r.only_in_files, "only in files"), (r.only_in_postgres, "only in postgres"), (r.content_differs, "content differs"),
            (r.sources_differ, "source files differ"),
            (r.not_embedded, "not embedded"), (r.orphan_vectors, "orphan vectors"), (r.wrong_vector_count, "wrong vector count"),
            (r.stale_vectors, "stale vectors")) if n]
        if r.checksum_match is False and not issues:
            issues.append("checksum differs")
        rows.append([r.source, r.kind, "-" if r.files is None else r.files, r.postgres,
                     "-" if r.chroma_records is None else r.chroma_records,
                     "-" if r.chroma_vectors is None else r.chroma_vectors, "ok" if r.ok else "; ".join(issues)])
    verdict = (f"NOT CHECKED ({', '.join(report.unreachable)} did not answer)" if report.unreachable
               else "all agree" if report.ok else "DISAGREEMENT")
    out.print(output.table("validate: " + verdict,
                           ["source", "type", "files", "postgres", "embedded", "vectors", "verdict"], rows))
    for p in report.problems:
        out.print(output.printable(f"problem: {p}"), markup=False)
    for r in report.repaired:
        out.print(output.printable(f"repaired: {r}"), markup=False)
    for u in report.unrepairable:
        out.print(output.printable(f"not repaired: {u}"), markup=False)
    if report.unreachable:
        output.note("Hint: `ctx health` shows which service is down; `ctx setup` starts a stopped store. Then run "
                    "`ctx validate` again.")
