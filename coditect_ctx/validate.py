"""`ctx validate`: prove that the files, PostgreSQL and Chroma agree, and mend what PostgreSQL can mend.

For each source and record type it compares:
- files vs PostgreSQL: the identities the files hold (read and redacted exactly as migrate does) against the rows,
  and an aggregate checksum over (identity, content_sha256) pairs, so one changed character shows; every folder
  of a source is read, and each record's folders and files (record_sources) are compared with what they hold now;
- PostgreSQL vs Chroma: rows without current vectors, vectors without a row (orphans), rows whose vector count
  differs from `embedded_chunks`, vectors made from other content (metadata `sha`), and each collection's dimension;
- links: sessions and messages whose checkpoint exists but is not linked, messages whose session is gone.

`--repair` fixes what PostgreSQL alone can fix: re-embeds stale rows, deletes orphan vectors and re-links; it says
what it could not fix (records only the files have: run `ctx migrate`).

Owns the comparison and the repairs; what the files should give comes from migrate.expected_state, the kinds'
tables and collections from kinds.py, the vector dimension from embed.py.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import Settings
from .errors import ServiceError
from .embed import DIMENSION
from .kinds import COLLECTIONS, TABLES
from .stores import Store
from .stores.chroma import record_id_of
from .vectors import embed_pending


@dataclass
class Row:
    source: str
    kind: str
    files: int | None = None
    postgres: int = 0
    chroma_records: int | None = 0  # None: Chroma did not answer, its vectors were not counted
    chroma_vectors: int | None = 0
    checksum_match: bool | None = None
    only_in_files: int = 0
    only_in_postgres: int = 0
    content_differs: int = 0
    sources_differ: int = 0  # records whose (folder, file) list in record_sources is not what the folders give
    not_embedded: int = 0
    orphan_vectors: int = 0
    wrong_vector_count: int = 0
    stale_vectors: int = 0

    @property
    def ok(self) -> bool:
        return not (self.only_in_files or self.only_in_postgres or self.content_differs or self.sources_differ
                    or self.not_embedded
                    or self.orphan_vectors or self.wrong_vector_count or self.stale_vectors
                    or self.checksum_match is False)


@dataclass
class ValidateReport:
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepairable: list[str] = field(default_factory=list)
    files_checked: bool = True
    unreachable: list[str] = field(default_factory=list)  # services that did not answer: their checks were not made

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.ok for r in self.rows)

    @property
    def exit_code(self) -> int:
        """3 when a service could not be checked (no verdict on it), else 0 when all agree, 5 when not."""
        return 3 if self.unreachable else 0 if self.ok else 5

    def as_dict(self) -> dict:
        return {
            "ok": self.ok, "files_checked": self.files_checked,
            "rows": [{**r.__dict__, "ok": r.ok} for r in self.rows],
            "problems": self.problems, "repaired": self.repaired, "unrepairable": self.unrepairable,
            "unreachable": self.unreachable,
        }


def _checksum(pairs) -> str:
    h = hashlib.sha256()
    for identity, sha in sorted(pairs):
        h.update(f"{identity}\0{sha}\n".encode())
    return h.hexdigest()


Expected = tuple[dict[tuple[str, str], dict[str, str]], dict[tuple[str, str], set[tuple[str, str]]]]


def _file_expectations(conn, report: ValidateReport) -> Expected | None:
    """What the registered folders (all of each source's) give, as migrate sees them: identity -> content_sha256
    per (source, kind), and the (folder, file) pairs of each (kind, identity)."""
    sources = conn.execute(
        """SELECT r.name, f.memory_context_path FROM submodule_registry r
           LEFT JOIN source_folders f ON f.submodule_id = r.id
           WHERE f.id IS NOT NULL OR r.memory_context_path IS NOT NULL
           ORDER BY f.created_at, r.name""").fetchall()
    # stored as ~/... under the home (or redacted elsewhere: then not found here)
    sources = [(name, Path(path).expanduser() if path else None) for name, path in sources]
    missing = sorted({name for name, path in sources if path is None or not path.is_dir()})
    if missing:
        report.problems.append(f"source folders not found, files not compared: {', '.join(missing)}")
        return None
    from .migrate import expected_state

    return expected_state(sources)


def _stored_origins(conn) -> dict[tuple[str, str], set[tuple[str, str]]]:
    out: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for kind, identity, folder, path in conn.execute(
            """SELECT rs.record_type, rs.record_identity, f.memory_context_path, rs.source_path
               FROM record_sources rs JOIN source_folders f ON f.id = rs.folder_id"""):
        out[(kind, identity)].add((folder, path))
    return out


def run_validate(settings: Settings, repair: bool = False, files: bool = True, wait: float = 0.0,
                 report_note: Callable[[str], None] | None = None) -> ValidateReport:
    """Check; with `repair`, mend and check again, all under the store's writer lock (a repair reads PostgreSQL
    before Chroma: a migrate in between would make the vectors it just wrote look like orphans)."""
    if not repair:
        return _check(settings, False, files)
    with Store(settings).writer_lock("validate --repair", wait=wait, report=report_note):
        repaired = _check(settings, True, files)
        if repaired.ok:
            return repaired
        after = _check(settings, False, files)  # the verdict is the state now, with the list of what was done
        after.repaired, after.unrepairable = repaired.repaired, repaired.unrepairable
        return after


def _check(settings: Settings, repair: bool, files: bool) -> ValidateReport:
    report = ValidateReport(files_checked=files)
    store = Store(settings)
    try:
        with store.pg() as conn:
            stored: dict[tuple[str, str], dict[str, tuple[str, str, str | None, int]]] = defaultdict(dict)
            for kind, table in TABLES.items():
                for source, rid, identity, sha, emb_sha, chunks in conn.execute(
                    f"""SELECT coalesce(r.name, ''), t.id::text, t.identity, t.content_sha256, t.embedded_sha256,
                               t.embedded_chunks
                        FROM {table} t LEFT JOIN submodule_registry r ON r.id = t.submodule_id"""
                ):
                    stored[(source, kind)][identity] = (rid, sha, emb_sha, chunks)
            found = _file_expectations(conn, report) if files else None
            expected, origins = found if found is not None else (None, {})
            stored_origins = _stored_origins(conn) if found is not None else {}
            conn.rollback()
            if not files:
                report.files_checked = False
            _check_links(conn, report, repair)
            conn.commit()
        vectors = _scan_chroma(store, report)
        keys = set(stored) | set(expected or {})
        by_id: dict[str, tuple[str, str, int]] = {}
        for (source, kind), rows in stored.items():
            for identity, (rid, sha, emb_sha, chunks) in rows.items():
                by_id[rid] = (kind, sha if emb_sha == sha else "", chunks)
        orphans: dict[str, list[str]] = defaultdict(list)
        per_record: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for kind, items in (vectors or {}).items():
            for vid, meta in items:
                rid = record_id_of(vid)
                owner = by_id.get(rid)
                if owner is None or owner[0] != kind:
                    orphans[kind].append(vid)
                else:
                    per_record[rid].append((vid, (meta or {}).get("sha", "")))
        surplus: dict[str, list[str]] = defaultdict(list)
        for (source, kind) in sorted(keys):
            row = Row(source=source, kind=kind)
            rows = stored.get((source, kind), {})
            row.postgres = len(rows)
            if expected is not None:
                want = expected.get((source, kind), {})
                row.files = len(want)
                row.only_in_files = len(set(want) - set(rows))
                row.only_in_postgres = len(set(rows) - set(want))
                row.content_differs = sum(1 for i in set(want) & set(rows) if want[i] != rows[i][1])
                row.checksum_match = _checksum(want.items()) == _checksum((i, r[1]) for i, r in rows.items())
                row.sources_differ = sum(1 for i in set(want) & set(rows)
                                         if origins.get((kind, i), set()) != stored_origins.get((kind, i), set()))
            for identity, (rid, sha, emb_sha, chunks) in rows.items():
                have = per_record.get(rid, [])
                if emb_sha != sha:
                    row.not_embedded += 1
                    continue
                if vectors is None:  # Chroma did not answer: nothing to compare the row's vectors with
                    row.chroma_records = row.chroma_vectors = None
                    continue
                if have:
                    row.chroma_records += 1
                    row.chroma_vectors += len(have)
                if len(have) != chunks:
                    row.wrong_vector_count += 1
                if any(vsha != sha for _vid, vsha in have):
                    row.stale_vectors += 1
                chunk_ids = {f"{rid}:{n}" for n in range(chunks)}
                surplus[kind].extend(vid for vid, _ in have if vid not in chunk_ids)
            report.rows.append(row)
        for kind, ids in orphans.items():
            if ids:
                report.rows.append(Row(source="(none)", kind=kind, orphan_vectors=len(ids)))
        if repair and vectors is not None:
            _repair(store, report, orphans, surplus)
        elif repair:
            report.unrepairable.append("nothing repaired: Chroma did not answer (`ctx setup` starts it; then run "
                                       "`ctx validate --repair` again)")
    finally:
        store.close()
    return report


def _scan_chroma(store: Store, report: ValidateReport) -> dict[str, list[tuple[str, dict]]] | None:
    """Every vector's id and metadata per kind; None when Chroma does not answer (said in the report)."""
    out: dict[str, list[tuple[str, dict]]] = {}
    try:
        store.check_chroma()  # a hung server: no answer in CTX_TIMEOUT, not in CTX_CHROMA_READ_TIMEOUT
        for kind, name in COLLECTIONS.items():
            info = store.chroma.collection(name)
            dim = info.get("dimension")
            if dim not in (None, DIMENSION):
                report.problems.append(f"collection {name} holds {dim}-dimensional vectors, expected {DIMENSION}")
            out[kind] = []
            for page in store.chroma.iter_all(name, include=("metadatas",)):
                out[kind].extend(zip(page["ids"], page.get("metadatas") or [None] * len(page["ids"])))
    except ServiceError as exc:
        report.problems.append(f"chroma did not answer, PostgreSQL was not compared with it: {exc.message}")
        report.unreachable.append("chroma")
        return None
    return out


def _check_links(conn, report: ValidateReport, repair: bool) -> None:
    unlinked = conn.execute(
        """SELECT count(*) FROM sessions s JOIN checkpoints c ON c.ref = s.checkpoint_ref
           WHERE s.checkpoint_id IS DISTINCT FROM c.id""").fetchone()[0]
    unlinked_msgs = conn.execute(
        """SELECT count(*) FROM messages m JOIN checkpoints c ON c.ref = m.checkpoint_ref
           WHERE m.checkpoint_id IS DISTINCT FROM c.id""").fetchone()[0]
    if unlinked or unlinked_msgs:
        if repair:
            conn.execute("""UPDATE sessions s SET checkpoint_id = c.id FROM checkpoints c
                            WHERE c.ref = s.checkpoint_ref AND s.checkpoint_id IS DISTINCT FROM c.id""")
            conn.execute("""UPDATE messages m SET checkpoint_id = c.id FROM checkpoints c
                            WHERE c.ref = m.checkpoint_ref AND m.checkpoint_id IS DISTINCT FROM c.id""")
            report.repaired.append(f"linked {unlinked} sessions and {unlinked_msgs} messages to their checkpoints")
        else:
            report.problems.append(
                f"broken links: {unlinked} sessions and {unlinked_msgs} messages not linked to their existing checkpoint")
    untagged = conn.execute(
        "SELECT count(*) FROM tags t WHERE NOT EXISTS (SELECT 1 FROM session_tags WHERE tag_id = t.id) "
        "AND NOT EXISTS (SELECT 1 FROM pattern_tags WHERE tag_id = t.id)").fetchone()[0]
    if untagged:
        if repair:
            conn.execute("DELETE FROM tags t WHERE NOT EXISTS (SELECT 1 FROM session_tags WHERE tag_id = t.id) "
                         "AND NOT EXISTS (SELECT 1 FROM pattern_tags WHERE tag_id = t.id)")
            report.repaired.append(f"removed {untagged} tags no record uses")
        else:
            report.problems.append(f"{untagged} tags are linked to no record")


def _repair(store: Store, report: ValidateReport, orphans: dict[str, list[str]], surplus: dict[str, list[str]]) -> None:
    try:
        for kind in COLLECTIONS:
            ids = orphans.get(kind, []) + surplus.get(kind, [])
            if ids:
                store.chroma.delete(COLLECTIONS[kind], ids=ids)
                report.repaired.append(f"deleted {len(ids)} {kind} vectors that belong to no row or chunk")
        # rows whose vectors are missing, counted wrong or made from other content: mark them and embed again
        stale = _stale_record_ids(store)
        if stale:
            with store.pg() as conn:
                for kind, ids in stale.items():
                    conn.execute(f"UPDATE {TABLES[kind]} SET embedded_sha256 = NULL WHERE id = ANY(%s::uuid[])", (ids,))
                conn.commit()
        result = embed_pending(store)
        if result.records:
            from .stores import postgres as pg

            with store.pg() as conn:
                pg.bump_generation(conn)
                conn.commit()
            report.repaired.append(f"embedded {result.records} records ({result.vectors} vectors)")
    except ServiceError as exc:
        report.unrepairable.append(f"{exc.message}: start the service and run `ctx validate --repair` again")
    missing = sum(r.only_in_files + r.content_differs + r.sources_differ for r in report.rows)
    if missing:
        report.unrepairable.append(f"{missing} records differ from or are missing against the files: run `ctx migrate`")
    extra = sum(r.only_in_postgres for r in report.rows)
    if extra:
        report.unrepairable.append(
            f"{extra} records are in PostgreSQL but no longer in the files (kept: delete by hand if unwanted)")


def _stale_record_ids(store: Store) -> dict[str, list[str]]:
    """Rows whose Chroma vectors disagree with PostgreSQL's account of them (recomputed precisely)."""
    out: dict[str, list[str]] = defaultdict(list)
    with store.pg() as conn:
        rows = {}
        for kind, table in TABLES.items():
            for rid, sha, chunks in conn.execute(
                f"SELECT id::text, content_sha256, embedded_chunks FROM {table} WHERE embedded_sha256 = content_sha256"
            ):
                rows[rid] = (kind, sha, chunks)
    have: dict[str, list[str]] = defaultdict(list)
    for kind, name in COLLECTIONS.items():
        for page in store.chroma.iter_all(name, include=("metadatas",)):
            for vid, meta in zip(page["ids"], page.get("metadatas") or []):
                have[record_id_of(vid)].append((meta or {}).get("sha", ""))
    for rid, (kind, sha, chunks) in rows.items():
        shas = have.get(rid, [])
        if len(shas) != chunks or any(s != sha for s in shas):
            out[kind].append(rid)
    return out
