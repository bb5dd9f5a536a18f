"""The record kinds (session, checkpoint, pattern, message): every fact about a kind, defined once.

Each `Kind` says where its rows live (PostgreSQL table), where its vectors live (Chroma collection), how its
identity is made, what text is embedded, and how it is shown (the SQL title, date, summary, body and tag
expressions over alias `t` that search, show and the embedder read). Jobs (migrate, vectors, validate, search,
show, health, backup, restore) and stores/chroma.py read kinds from here; this module imports nothing of ctx.

Adding a kind touches this module, the schema in sql/ and a reader in ingest/ (plus migrate's staging of it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_METADATA_TAGS = ("ARRAY(SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof(t.metadata->'tags') = 'array' "
                  "THEN t.metadata->'tags' ELSE '[]'::jsonb END))")


def _linked_tags(kind: str) -> str:
    return (f"ARRAY(SELECT g.name FROM {kind}_tags l JOIN tags g ON g.id = l.tag_id WHERE l.{kind}_id = t.id "
            "ORDER BY g.name)")


def _linked_tag_filter(kind: str) -> str:
    return (f"EXISTS (SELECT 1 FROM {kind}_tags lt JOIN tags g ON g.id = lt.tag_id "
            f"WHERE lt.{kind}_id = t.id AND g.name = {{p}})")


_METADATA_TAG_FILTER = "t.metadata @> jsonb_build_object('tags', jsonb_build_array({p}::text))"


@dataclass(frozen=True)
class Kind:
    name: str
    table: str  # PostgreSQL table
    collection: str  # Chroma collection of its vectors
    identity: str  # how its identity is made (ingest/records.py implements the rule)
    title: str  # SQL over alias t (and s, the session, where `joins` brings it)
    summary: str  # SQL: the lead text embedded after the title and shown before the body ('' when none)
    date: str  # the instant --since/--until compare, and Chroma's `ts` metadata
    date_column: str  # the column `ctx show` prints as the record's date
    tags: str  # SQL: its tags as text[] (link tables for sessions and patterns, metadata->'tags' otherwise)
    tag_filter: str  # SQL condition, {p} replaced by a tag's placeholder
    joins: str = ""
    trigram: bool = True  # has a trigram-indexed title
    content_only: bool = False  # embeds its content alone (no title and summary)
    first_window_only: str = "false"  # SQL: true when only the first model window is embedded
    vector_tags: str | None = None  # SQL: tags put on its vectors, when not `tags`

    @property
    def body(self) -> str:
        """SQL: the text a search snippet is cut from."""
        return "t.content" if self.content_only else f"{self.summary} || E'\\n\\n' || t.content"

    @property
    def vector_tag_sql(self) -> str:
        return self.vector_tags or self.tags

    def embed_text(self, title: str, summary: str, content: str) -> str:
        """The text a row's vectors are made from; its sha256 is the row's content_sha256."""
        if self.content_only:
            return content
        return "\n\n".join(part for part in (title, summary, content) if part)

    def content_hash(self, title: str, summary: str, content: str) -> str:
        return hashlib.sha256(self.embed_text(title, summary, content).encode("utf-8")).hexdigest()


SESSION = Kind(
    "session", "sessions", "sessions_embeddings",
    identity="the checkpoint it names, else UTC start + title, else its transcript's text",
    title="t.title", summary="t.summary", date="t.started_at", date_column="started_at",
    tags=_linked_tags("session"), tag_filter=_linked_tag_filter("session"),
)
CHECKPOINT = Kind(
    "checkpoint", "checkpoints", "checkpoints_embeddings",
    identity="its ref (the file name without extension)",
    title="t.title", summary="t.summary", date="t.checkpoint_at", date_column="checkpoint_at",
    tags=_METADATA_TAGS, tag_filter=_METADATA_TAG_FILTER,
)
PATTERN = Kind(
    "pattern", "patterns", "patterns_embeddings",
    identity="its pattern_id in the legacy SQLite database",
    title="t.name", summary="t.description", date="coalesce(t.last_used_at, t.created_at)",
    date_column="last_used_at", tags=_linked_tags("pattern"), tag_filter=_linked_tag_filter("pattern"),
)
MESSAGE = Kind(
    "message", "messages", "messages_embeddings",
    identity="CODITECT's hash of role and content",
    title="coalesce(s.title, t.checkpoint_ref, t.role || ' message')", summary="''",
    date="coalesce(t.first_seen, s.started_at)", date_column="first_seen",
    tags=_METADATA_TAGS, tag_filter=_METADATA_TAG_FILTER,
    joins="LEFT JOIN sessions s ON s.id = t.session_id", trigram=False, content_only=True,
    # a tool result (command output, file dumps) embeds only its first window: full text finds its bulk better
    first_window_only="t.kind = 'tool_result'", vector_tags="'{}'::text[]",
)

# In the order search, show, health and backup list them.
KINDS: dict[str, Kind] = {k.name: k for k in (SESSION, CHECKPOINT, PATTERN, MESSAGE)}
NAMES = tuple(KINDS)
# The order migrate writes and embeds them: a message row links to its session, so sessions come first.
WRITE_ORDER = ("checkpoint", "session", "pattern", "message")
TABLES = {k.name: k.table for k in KINDS.values()}
COLLECTIONS = {k.name: k.collection for k in KINDS.values()}
