"""The ASGI app ctx serves Chroma with: chromadb's own FastAPI server (`chromadb.app`), which checks the token, with
one fix. Self-contained (imports nothing of ctx): the docker runtime runs this very source with `python3 -c` in any
image that has chromadb, fastapi and uvicorn (`... --host H --port P` runs it under uvicorn).

The fix: in chromadb 1.5.x the FastAPI server calls `.tolist()` on every embedding the Rust core returns, but the
core returns plain lists, so a `get` or `query` that includes embeddings (ctx's backups do) fails with HTTP 500
("'list' object has no attribute 'tolist'"). Lists are handed to the server as a list type that has `tolist()`.
"""

import warnings

from chromadb.api.rust import RustBindingsAPI

# FastAPI's note on chromadb's use of ORJSONResponse, on the first request of every start: not for operators.
warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")


class _Vector(list):
    def tolist(self) -> list:
        return self


def _vectors(rows):
    return [_Vector(row) if isinstance(row, list) else row for row in rows]


def _fixed_get(original):
    def get(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if result.get("embeddings") is not None:
            result["embeddings"] = _vectors(result["embeddings"])
        return result

    return get


def _fixed_query(original):
    def query(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if result.get("embeddings") is not None:
            result["embeddings"] = [_vectors(rows) if rows is not None else rows for rows in result["embeddings"]]
        return result

    return query


RustBindingsAPI._get = _fixed_get(RustBindingsAPI._get)
RustBindingsAPI._query = _fixed_query(RustBindingsAPI._query)

from chromadb.app import app  # noqa: E402  (built after the fix is in place)

__all__ = ["app"]

if __name__ == "__main__":
    import sys

    import uvicorn

    options = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    uvicorn.run(app, host=options["--host"], port=int(options["--port"]), log_level="warning", access_log=False)
