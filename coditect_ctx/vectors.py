"""Keep Chroma in step with PostgreSQL: embed every row whose vectors are missing or stale.

Owns the embedding pass (which rows, chunking, batching, write order); what each kind embeds, and where, is
defined in kinds.py.

PostgreSQL is the record. A row needs embedding when `embedded_sha256` differs from `content_sha256`; the text
embedded is a pure function of the row's columns (`Kind.embed_text`), so migrate and `ctx validate --repair` do
the same thing and a vector can always be rebuilt from PostgreSQL alone.

Chunking: the model reads 256 tokens; longer texts are cut by embed.chunk_text on paragraph, then sentence
boundaries, with a small overlap, and every chunk gets its own vector (`<row id>:<chunk no>`), so nothing past
the first window is lost to semantic search, up to `Settings.embed_max_chunks` (CTX_EMBED_MAX_CHUNKS, 256) per
row: past that, only full-text search sees the text, so one absurd record (a 20 MB line) costs no more than a
long one, in one batch (BATCH_CHUNKS > the cap: a record's vectors are written and marked together). One exception (`Kind.first_window_only`): a tool result (command
output, file dumps) embeds only its first window: its bulk is output that full-text search finds better, and it
would dominate the cost.

Order per batch, chosen for crash safety: delete the row's old vectors, upsert the new ones, then mark the row
embedded in PostgreSQL (guarded by the content hash it was made from). A kill anywhere leaves the row marked
stale, and the next run redoes exactly that batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from .kinds import COLLECTIONS, KINDS, TABLES, WRITE_ORDER, Kind
from .points import reach
from .stores import Store
from .stores.chroma import vector_id, vector_metadata

# The model pads each batch to its longest text, so it is fastest on many chunks sorted by length: a batch is
# cut at this many chunks (measured on the corpus: 128-record batches ran the model 1.6x slower than one big batch).
BATCH_CHUNKS = 2048


def _pending_sql(kind: Kind, extra: str = "") -> str:
    """What each kind embeds (kinds.py) and the columns search filters on, for its rows needing vectors."""
    return f"""
        SELECT t.id::text, {kind.title}, {kind.summary}, t.content, t.content_sha256, coalesce(r.name, ''),
               extract(epoch FROM {kind.date}), t.privacy_level, t.embedded_chunks, {kind.first_window_only},
               {kind.vector_tag_sql}
        FROM {kind.table} t {kind.joins} LEFT JOIN submodule_registry r ON r.id = t.submodule_id
        WHERE t.embedded_sha256 IS DISTINCT FROM t.content_sha256 {extra}
        ORDER BY t.id"""


def chunks_for(text: str, first_window_only: bool, max_chunks: int) -> tuple[list[str], bool]:
    """The chunks a row embeds: its first window only, or its first `max_chunks` (Settings.embed_max_chunks);
    and whether the cap left text out (a tool result's first window is by design, not counted)."""
    from .embed import chunk_head

    if not text.strip():
        return [], False
    pieces, capped = chunk_head(text, 1 if first_window_only else max_chunks)
    return pieces, capped and not first_window_only


@dataclass
class EmbedResult:
    records: int = 0
    vectors: int = 0
    per_kind: dict[str, int] = field(default_factory=dict)
    texts_chars: int = 0
    capped: int = 0  # rows with more text than Settings.embed_max_chunks chunks: only their first chunks embedded


def _batches(kind: str, rows: list, result: EmbedResult, max_chunks: int):
    """Rows grouped so each group holds about BATCH_CHUNKS chunks, with their ids, texts, metadata and counts."""
    batch, ids, docs, metas, counts = [], [], [], [], {}
    for row in rows:
        rid, title, summary, content, sha, submodule, ts, privacy, _old, first_only, tags = row
        pieces, capped = chunks_for(KINDS[kind].embed_text(title or "", summary or "", content or ""), bool(first_only),
                                    max_chunks)
        result.capped += capped
        counts[rid] = len(pieces)
        for n, piece in enumerate(pieces):
            ids.append(vector_id(rid, n))
            docs.append(piece)
            metas.append(vector_metadata(
                record_type=kind, record_id=rid, chunk=n, submodule=submodule or "", title=title or "",
                timestamp=float(ts) if ts is not None else None, privacy_level=privacy,
                tags=list(tags or []), content_sha256=sha))
            result.texts_chars += len(piece)
        batch.append(row)
        if len(ids) >= BATCH_CHUNKS:
            yield batch, ids, docs, metas, counts
            batch, ids, docs, metas, counts = [], [], [], [], {}
    if batch:
        yield batch, ids, docs, metas, counts


def count_pending(conn) -> dict[str, int]:
    out = {}
    for kind, table in TABLES.items():
        out[kind] = conn.execute(
            f"SELECT count(*) FROM {table} WHERE embedded_sha256 IS DISTINCT FROM content_sha256"
        ).fetchone()[0]
    return out


def embed_pending(
    store: Store,
    on_progress: Callable[[str, int, int], None] | None = None,
    only_ids: dict[str, list[str]] | None = None,
    result: EmbedResult | None = None,
) -> EmbedResult:
    """Embed every stale row (or only `only_ids` per kind). Raises ServiceError when Chroma is unreachable;
    what was done before that stays done and marked, and counted in `result` (pass one to read it after a
    failure): records and vectors count only once their rows are marked embedded."""
    from .embed import embed_documents

    result = EmbedResult() if result is None else result
    models = store.settings.models_path
    with store.pg() as conn:
        for kind in WRITE_ORDER:
            extra, params = "", ()
            if only_ids is not None:
                if not only_ids.get(kind):
                    continue
                extra, params = "AND t.id = ANY(%s::uuid[])", (only_ids[kind],)
            rows = conn.execute(_pending_sql(KINDS[kind], extra), params).fetchall()
            conn.commit()
            total, done = len(rows), 0
            if on_progress:
                on_progress(kind, 0, total)
            collection = COLLECTIONS[kind]

            def write(batch, ids, vectors, metas, docs, counts, kind=kind, collection=collection):
                stale = [r[0] for r in batch if r[8]]  # rows that had vectors before: drop them first
                if stale:
                    store.chroma.delete(collection, where={"record_id": {"$in": stale}})
                if ids:
                    store.chroma.upsert(collection, ids, vectors, metas, docs)
                reach("embed-upserted")
                with conn.transaction():
                    with conn.cursor() as cur:
                        cur.executemany(
                            f"UPDATE {TABLES[kind]} SET embedded_sha256 = %s, embedded_chunks = %s "
                            f"WHERE id = %s AND content_sha256 = %s",
                            [(r[4], counts[r[0]], r[0], r[4]) for r in batch],
                        )
                reach("embed-batch")
                return len(batch), len(ids)

            def stored(written: tuple[int, int], kind=kind) -> int:
                records, vectors = written
                result.records += records
                result.vectors += vectors
                result.per_kind[kind] = result.per_kind.get(kind, 0) + records
                return records

            # The model is the bottleneck: while it embeds batch N+1, one writer thread stores batch N.
            with ThreadPoolExecutor(max_workers=1) as writer:
                in_flight = None
                for batch, ids, docs, metas, counts in _batches(kind, rows, result, store.settings.embed_max_chunks):
                    vectors = embed_documents(docs, models) if docs else []
                    if in_flight is not None:
                        done += stored(in_flight.result())
                        if on_progress:
                            on_progress(kind, done, total)
                    in_flight = writer.submit(write, batch, ids, vectors, metas, docs, counts)
                if in_flight is not None:
                    done += stored(in_flight.result())
                    if on_progress:
                        on_progress(kind, done, total)
    return result
