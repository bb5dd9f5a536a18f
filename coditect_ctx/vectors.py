"""Keep Chroma in step with PostgreSQL: embed every row whose vectors are missing or stale.

PostgreSQL is the record. A row needs embedding when `embedded_sha256` differs from `content_sha256`; the text
embedded is a pure function of the row's columns (`embed_text`), so migrate and `ctx validate --repair` do the
same thing and a vector can always be rebuilt from PostgreSQL alone.

Chunking: the model reads 256 tokens; longer texts are cut by embed.chunk_text on paragraph, then sentence
boundaries, with a small overlap, and every chunk gets its own vector (`<row id>:<chunk no>`), so nothing past
the first window is lost to semantic search. One exception: a tool result (command output, file dumps) embeds
only its first window: its bulk is output that full-text search finds better, and it would dominate the cost.

Order per batch, chosen for crash safety: delete the row's old vectors, upsert the new ones, then mark the row
embedded in PostgreSQL (guarded by the content hash it was made from). A kill anywhere leaves the row marked
stale, and the next run redoes exactly that batch.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from .stores import Store
from .stores.chroma import COLLECTIONS, vector_id, vector_metadata

KINDS = ("checkpoint", "session", "pattern", "message")
TABLES = {"session": "sessions", "checkpoint": "checkpoints", "pattern": "patterns", "message": "messages"}
# The model pads each batch to its longest text, so it is fastest on many chunks sorted by length: a batch is
# cut at this many chunks (measured on the corpus: 128-record batches ran the model 1.6x slower than one big batch).
BATCH_CHUNKS = 2048

# What each kind embeds, and the columns search filters on, in one query per kind.
_PENDING_SQL = {
    "session": """
        SELECT s.id::text, s.title, s.summary, s.content, s.content_sha256, r.name, extract(epoch FROM s.started_at),
               s.privacy_level, s.embedded_chunks, NULL,
               coalesce((SELECT array_agg(t.name ORDER BY t.name) FROM session_tags st JOIN tags t ON t.id = st.tag_id
                         WHERE st.session_id = s.id), '{}')
        FROM sessions s JOIN submodule_registry r ON r.id = s.submodule_id
        WHERE s.embedded_sha256 IS DISTINCT FROM s.content_sha256 {extra}
        ORDER BY s.id""",
    "checkpoint": """
        SELECT c.id::text, c.title, c.summary, c.content, c.content_sha256, r.name, extract(epoch FROM c.checkpoint_at),
               c.privacy_level, c.embedded_chunks, NULL,
               coalesce(ARRAY(SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof(c.metadata->'tags') = 'array'
                                                                    THEN c.metadata->'tags' ELSE '[]'::jsonb END)), '{}')
        FROM checkpoints c JOIN submodule_registry r ON r.id = c.submodule_id
        WHERE c.embedded_sha256 IS DISTINCT FROM c.content_sha256 {extra}
        ORDER BY c.id""",
    "pattern": """
        SELECT p.id::text, p.name, p.description, p.content, p.content_sha256, coalesce(r.name, ''),
               extract(epoch FROM coalesce(p.last_used_at, p.created_at)), p.privacy_level, p.embedded_chunks, NULL,
               coalesce((SELECT array_agg(t.name ORDER BY t.name) FROM pattern_tags pt JOIN tags t ON t.id = pt.tag_id
                         WHERE pt.pattern_id = p.id), '{}')
        FROM patterns p LEFT JOIN submodule_registry r ON r.id = p.submodule_id
        WHERE p.embedded_sha256 IS DISTINCT FROM p.content_sha256 {extra}
        ORDER BY p.id""",
    "message": """
        SELECT m.id::text, coalesce(s.title, m.checkpoint_ref, m.role || ' message'), '', m.content, m.content_sha256,
               r.name, extract(epoch FROM coalesce(m.first_seen, s.started_at)), m.privacy_level, m.embedded_chunks,
               m.kind, '{}'::text[]
        FROM messages m JOIN submodule_registry r ON r.id = m.submodule_id
        LEFT JOIN sessions s ON s.id = m.session_id
        WHERE m.embedded_sha256 IS DISTINCT FROM m.content_sha256 {extra}
        ORDER BY m.id""",
}


def embed_text(kind: str, title: str, summary: str, content: str) -> str:
    """The text a row's vectors are made from; its sha256 is the row's content_sha256."""
    if kind == "message":
        return content
    return "\n\n".join(part for part in (title, summary, content) if part)


def content_hash(kind: str, title: str, summary: str, content: str) -> str:
    return hashlib.sha256(embed_text(kind, title, summary, content).encode("utf-8")).hexdigest()


def chunks_for(kind: str, text: str, message_kind: str | None = None) -> list[str]:
    from .embed import chunk_text

    if not text.strip():
        return []
    pieces = chunk_text(text)
    if kind == "message" and message_kind == "tool_result":
        return pieces[:1]
    return pieces


@dataclass
class EmbedResult:
    records: int = 0
    vectors: int = 0
    per_kind: dict[str, int] = field(default_factory=dict)
    texts_chars: int = 0


def _batches(kind: str, rows: list, result: EmbedResult):
    """Rows grouped so each group holds about BATCH_CHUNKS chunks, with their ids, texts, metadata and counts."""
    batch, ids, docs, metas, counts = [], [], [], [], {}
    for row in rows:
        rid, title, summary, content, sha, submodule, ts, privacy, _old, mkind, tags = row
        pieces = chunks_for(kind, embed_text(kind, title or "", summary or "", content or ""), mkind)
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
) -> EmbedResult:
    """Embed every stale row (or only `only_ids` per kind). Raises ServiceError when Chroma is unreachable;
    what was done before that stays done and marked."""
    from .embed import embed_documents

    result = EmbedResult()
    models = store.settings.models_path
    with store.pg() as conn:
        for kind in KINDS:
            extra, params = "", ()
            if only_ids is not None:
                if not only_ids.get(kind):
                    continue
                extra, params = f"AND {kind[0]}.id = ANY(%s::uuid[])", (only_ids[kind],)
            rows = conn.execute(_PENDING_SQL[kind].replace("{extra}", extra), params).fetchall()
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
                with conn.transaction():
                    with conn.cursor() as cur:
                        cur.executemany(
                            f"UPDATE {TABLES[kind]} SET embedded_sha256 = %s, embedded_chunks = %s "
                            f"WHERE id = %s AND content_sha256 = %s",
                            [(r[4], counts[r[0]], r[0], r[4]) for r in batch],
                        )
                return len(batch)

            # The model is the bottleneck: while it embeds batch N+1, one writer thread stores batch N.
            with ThreadPoolExecutor(max_workers=1) as writer:
                in_flight = None
                for batch, ids, docs, metas, counts in _batches(kind, rows, result):
                    vectors = embed_documents(docs, models) if docs else []
                    if in_flight is not None:
                        done += in_flight.result()
                        if on_progress:
                            on_progress(kind, done, total)
                    in_flight = writer.submit(write, batch, ids, vectors, metas, docs, counts)
                    result.records += len(batch)
                    result.vectors += len(ids)
                    result.per_kind[kind] = result.per_kind.get(kind, 0) + len(batch)
                if in_flight is not None:
                    done += in_flight.result()
                    if on_progress:
                        on_progress(kind, done, total)
    return result
