"""The Chroma store: the collections ctx keeps (one per record kind), their records, and the contract between
the vectors migrate writes and what search and validate read (ids, metadata).

`Chroma` is the one client every job uses (through `Store.chroma`); its transport, timeouts and database come
from chroma_http.py, which the runtimes' probes share without importing this package.
The collection names are the kinds' (kinds.py), re-exported here as COLLECTIONS.
"""

from __future__ import annotations

from typing import Any, Iterable
from urllib.parse import quote

from ..chroma_http import ChromaConnection, ChromaHTTPError
from ..kinds import COLLECTIONS  # kind -> collection name: a fact of the kinds, defined there

__all__ = ["Chroma", "ChromaHTTPError", "COLLECTIONS", "ensure_collections", "vector_id", "record_id_of", "vector_metadata"]

# Chroma refuses larger batches (its max_batch_size); stay a little under it.
MAX_BATCH = 5000
MAX_BODY = 6_000_000


class Chroma(ChromaConnection):
    """Collections and records in the configured tenant and database (CTX_CHROMA_TENANT, CTX_CHROMA_DATABASE)."""

    def __init__(self, url: str, token: str | None = None, **options: Any):
        super().__init__(url, token, **options)
        self._ids: dict[str, str] = {}

    def close(self) -> None:
        """Close the connection and forget collection ids (a restored Chroma folder brings ids of its own)."""
        super().close()
        self._ids.clear()

    # -- collections -------------------------------------------------------------------------------------
    def _named(self, name: str) -> str:
        return self.database_path() + "/collections/" + quote(name, safe="")

    def ensure_collection(self, name: str) -> str:
        """Create the collection (cosine space) if missing; return its id. Idempotent."""
        body = {
            "name": name,
            "metadata": {"hnsw:space": "cosine", "created_by": "ctx"},
            "configuration": {"hnsw": {"space": "cosine"}},
            "get_or_create": True,
        }
        coll = self.request("POST", self.database_path() + "/collections", body)
        self._ids[name] = coll["id"]
        return coll["id"]

    def collection_id(self, name: str) -> str:
        if name not in self._ids:
            self.collection(name)
        return self._ids[name]

    def collection(self, name: str) -> dict:
        """The collection's description (id, metadata, dimension); ChromaHTTPError 404 when it does not exist."""
        coll = self.request("GET", self._named(name))
        self._ids[name] = coll["id"]
        return coll

    def has_collection(self, name: str) -> bool:
        try:
            self.collection_id(name)
            return True
        except ChromaHTTPError as exc:
            if exc.status in (400, 404):
                return False
            raise

    def delete_collection(self, name: str) -> None:
        try:
            self.request("DELETE", self._named(name))
        except ChromaHTTPError as exc:
            if exc.status not in (400, 404):
                raise
        self._ids.pop(name, None)

    def _coll(self, name: str) -> str:
        return self.database_path() + "/collections/" + self.collection_id(name)

    # -- records -----------------------------------------------------------------------------------------
    def count(self, name: str) -> int:
        return int(self.request("GET", self._coll(name) + "/count"))

    def upsert(
        self,
        name: str,
        ids: list[str],
        embeddings: list[list[float]],
        metadatas: list[dict] | None = None,
        documents: list[str] | None = None,
    ) -> None:
        for start, end in _request_slices(ids, embeddings, documents):
            body: dict[str, Any] = {"ids": ids[start:end], "embeddings": embeddings[start:end]}
            if metadatas is not None:
                body["metadatas"] = metadatas[start:end]
            if documents is not None:
                body["documents"] = documents[start:end]
            self.request("POST", self._coll(name) + "/upsert", body)

    def get(
        self,
        name: str,
        ids: list[str] | None = None,
        where: dict | None = None,
        include: Iterable[str] = ("metadatas",),
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict:
        body = {"ids": ids, "where": where, "include": list(include), "limit": limit, "offset": offset}
        return self._read_with_retry(self._coll(name) + "/get", body)

    def _read_with_retry(self, path: str, body: dict, attempts: int = 4) -> Any:
        """A read that the server fails with HTTP 5xx while another client writes the same collection
        ("Error finding id", seen under concurrent upserts) is retried a few times: reads have no side effects."""
        import time

        for attempt in range(attempts):
            try:
                return self.request("POST", path, body)
            except ChromaHTTPError as exc:
                if exc.status < 500 or attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def iter_all(self, name: str, include: Iterable[str] = ("metadatas",), page: int = 2000):
        """Every record of a collection, page by page (for validate and backup)."""
        offset = 0
        while True:
            batch = self.get(name, include=include, limit=page, offset=offset)
            ids = batch.get("ids") or []
            if not ids:
                return
            yield batch
            if len(ids) < page:
                return
            offset += len(ids)

    def delete(self, name: str, ids: list[str] | None = None, where: dict | None = None) -> None:
        if not ids and not where:
            return
        for start in range(0, len(ids or [None]), MAX_BATCH):
            body = {"ids": ids[start:start + MAX_BATCH] if ids else None, "where": where}
            self.request("POST", self._coll(name) + "/delete", body)

    def query(
        self,
        name: str,
        embedding: list[float],
        n_results: int = 10,
        where: dict | None = None,
        include: Iterable[str] = ("metadatas", "distances"),
    ) -> dict:
        body = {"query_embeddings": [embedding], "n_results": n_results, "where": where, "include": list(include)}
        return self.request("POST", self._coll(name) + "/query", body)


def _request_slices(ids: list[str], embeddings: list, documents: list[str] | None):
    """Cut a write into requests the server accepts: at most MAX_BATCH ids and about MAX_BODY bytes of JSON
    (larger bodies are refused with HTTP 413)."""
    start, size = 0, 0
    for i in range(len(ids)):
        item = 400 + 10 * len(embeddings[i]) + (len(documents[i]) * 2 if documents else 0)
        if i > start and (i - start >= MAX_BATCH or size + item > MAX_BODY):
            yield start, i
            start, size = i, 0
        size += item
    if start < len(ids):
        yield start, len(ids)


def ensure_collections(client: Chroma) -> list[str]:
    """Create every collection ctx uses; return those that were missing."""
    existing = {c["name"] for c in client.list_collections()}
    missing = [n for n in COLLECTIONS.values() if n not in existing]
    for name in COLLECTIONS.values():
        client.ensure_collection(name)
    return missing


# -- the contract between what migrate writes and what search and validate read ---------------------------
def vector_id(record_id: str, chunk: int) -> str:
    """Chroma id of one chunk's vector: leads back to the PostgreSQL row (`<uuid>:<chunk no>`)."""
    return f"{record_id}:{chunk}"


def record_id_of(vector_id_: str) -> str:
    return vector_id_.rsplit(":", 1)[0]


def vector_metadata(
    *,
    record_type: str,
    record_id: str,
    chunk: int,
    submodule: str,
    title: str,
    timestamp: float | None,
    privacy_level: str,
    tags: list[str],
    content_sha256: str,
) -> dict:
    """Scalar metadata Chroma can filter on before ranking (filters apply in both engines before fusion).

    Tags become boolean keys `tag:<name>` because Chroma metadata values are scalars; `ts` is epoch seconds (UTC)
    so --since/--until are `$gte`/`$lte` filters; `sha` is the content hash the vector was made from.
    """
    meta = {
        "record_type": record_type,
        "record_id": record_id,
        "chunk": chunk,
        "submodule": submodule,
        "title": title[:500],
        "privacy_level": privacy_level,
        "sha": content_sha256,
    }
    if timestamp is not None:
        meta["ts"] = float(timestamp)
    for tag in tags:
        meta[f"tag:{tag}"] = True
    return meta
