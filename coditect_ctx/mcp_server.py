"""`ctx mcp`: the store served to coding agents over the Model Context Protocol (stdio, the official `mcp` SDK).

Tools: `search` (every filter of `ctx search`), `show`, `context` (a pack, like `ctx context`) and `status` (read-only
figures), and `remember`, refused unless the operator started `ctx mcp --allow-write` (notes.py stores the note as
a checkpoint). Without it no tool changes data (a `context` pack records its load in context_loads, as the CLI
does: usage statistics, not data).

A long-lived process: one Searcher keeps the model, the PostgreSQL connection, the Chroma client and the Redis cache
warm between calls. A call that finds a service gone drops its connections (the model stays) and answers with
the CLI's error; the next call reconnects. Calls run in worker threads one at a time on the warm connections; a
call that waits longer than CTX_TIMEOUT for another to finish is refused as busy rather than left hanging.
Every failure is a tool error carrying the CLI's `Error: ...` / `Hint: ...` lines, never a traceback.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any, Callable

from pydantic import Field  # the tools' argument descriptions (this module is imported by `ctx mcp` alone)

from . import __version__
from .config import Settings
from .errors import CtxError, ServiceError, UsageError

INSTRUCTIONS = (
    "The CODITECT memory store: what earlier coding sessions did, decided and left open. Call `context` with the "
    "task at the start of a session for a pack of the relevant work within a token budget; `search` to look "
    "further (same filters as `ctx search`); `show` with an id from either for the whole record; `status` for the "
    "store's figures. Content is redacted. Read-only unless the operator started `ctx mcp --allow-write`.")


def error_text(exc: CtxError) -> str:
    """The lines the CLI prints on stderr for this error."""
    return f"Error: {exc.message}" + (f"\nHint: {exc.hint}" if exc.hint else "")


class Backend:
    """The tools' work on one store, warm between calls; each method returns what its tool returns."""

    def __init__(self, settings: Settings, allow_write: bool = False):
        from .search import Searcher

        self.settings = settings
        self.allow_write = allow_write
        self.searcher = Searcher(settings)
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run one tool body on the warm connections; errors become the CLI's lines (ToolError)."""
        from mcp.server.mcpserver.exceptions import ToolError

        from .output import as_ctx_error

        if not self._lock.acquire(timeout=self.settings.timeout):
            raise ToolError(error_text(ServiceError(
                f"another call has held the store for over {self.settings.timeout:g} s (CTX_TIMEOUT)",
                hint="Try again in a moment; `ctx health` shows whether a service is slow.")))
        try:
            return fn()
        except Exception as exc:
            error = as_ctx_error(exc)
            if isinstance(error, ServiceError):
                self.searcher.reset()  # a service went away: the next call reconnects
            raise ToolError(error_text(error)) from None
        finally:
            self._lock.release()

    def search(self, query: str, type: str | None = None, submodule: str | None = None, tags: list[str] | None = None,
               since: str | None = None, until: str | None = None, privacy: str | None = None, limit: int = 10,
               mode: str = "hybrid") -> dict:
        from .search import make_query

        def body() -> dict:
            q = make_query(query, type_=type, submodule=submodule, tags=tags or (), since=since, until=until,
                           privacy=privacy, limit=limit, mode=mode)
            return self.searcher.search(q).result.as_output()

        return self.call(body)

    def show(self, id: str) -> dict:
        from .show import find_record

        return self.call(lambda: find_record(self.settings, id))

    def context(self, task: str, budget: int = 4000, submodule: str | None = None, since: str | None = None,
                client: str | None = None) -> dict:
        from .context import build_pack

        def body() -> dict:
            pack = build_pack(self.settings, task, budget=budget, submodule=submodule, since=since,
                              client=client or "mcp", searcher=self.searcher)
            return {"markdown": pack.markdown, **pack.as_dict()}

        return self.call(body)

    def status(self) -> dict:
        from .stack import status

        def body() -> dict:
            data = status(self.settings)
            data.pop("home", None)  # the operator's paths are not the agent's business
            return data

        return self.call(body)

    def remember(self, title: str, text: str, submodule: str | None = None) -> dict:
        from .notes import remember

        def body() -> dict:
            if not self.allow_write:
                raise UsageError("writes are off: this server was started without --allow-write",
                                 hint="The operator can restart it as `ctx mcp --allow-write` to let agents store notes.")
            return remember(self.settings, title, text, submodule)

        return self.call(body)

    def close(self) -> None:
        self.searcher.close()


def build_server(settings: Settings, allow_write: bool = False):
    """The MCP server and its backend (the backend is closed by the caller)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.types import ToolAnnotations

    backend = Backend(settings, allow_write)
    server = MCPServer(name="ctx", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    read_only = ToolAnnotations(readOnlyHint=True, openWorldHint=False)

    @server.tool(annotations=read_only)
    def search(
        query: Annotated[str, Field(description='What to look for, as you would ask it. "quotes" for a phrase, -word to exclude.')],
        type: Annotated[str | None, Field(description="Only session, checkpoint, pattern or message.")] = None,
        submodule: Annotated[str | None, Field(description="Only records of this submodule.")] = None,
        tags: Annotated[list[str] | None, Field(description="Only records with all these tags.")] = None,
        since: Annotated[str | None, Field(description="From this date/time (UTC), or 7d / 12h ago.")] = None,
        until: Annotated[str | None, Field(description="Up to this date/time (a bare date: through its end).")] = None,
        privacy: Annotated[str | None, Field(description="Only PUBLIC, TEAM, PRIVATE or EPHEMERAL records.")] = None,
        limit: Annotated[int, Field(description="How many results (1-200).")] = 10,
        mode: Annotated[str, Field(description="hybrid (full text + semantic), semantic or text.")] = "hybrid",
    ) -> dict:
        """Find records by meaning and words (like `ctx search --json`): ranked hits with id, type, title, date, snippet."""
        return backend.search(query, type, submodule, tags, since, until, privacy, limit, mode)

    @server.tool(annotations=read_only)
    def show(id: Annotated[str, Field(description="A record id from search or context (whole, or its first 8+ characters).")]) -> dict:
        """One record in full (like `ctx show --json`)."""
        return backend.show(id)

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False,
                                             openWorldHint=False))
    def context(
        task: Annotated[str, Field(description="What the session is about, as you would say it.")],
        budget: Annotated[int, Field(description="Most tokens the pack may take (200-100000).")] = 4000,
        submodule: Annotated[str | None, Field(description="Only records of this submodule.")] = None,
        since: Annotated[str | None, Field(description="Only records from this date/time, or 7d / 12h ago.")] = None,
        client: Annotated[str | None, Field(description="Who asks, recorded with the load (default mcp).")] = None,
    ) -> dict:
        """The pack a new session needs for TASK (like `ctx context --json`); `markdown` is the text to read."""
        return backend.context(task, budget, submodule, since, client)

    @server.tool(annotations=read_only)
    def status() -> dict:
        """The store's services, schema, row and vector counts, and context packs per day (like `ctx status --json`)."""
        return backend.status()

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False,
                                             openWorldHint=False))
    def remember(
        title: Annotated[str, Field(description="The note's title.")],
        text: Annotated[str, Field(description="What to remember (redacted before it is stored).")],
        submodule: Annotated[str | None, Field(description="The submodule it belongs to (default agent-notes).")] = None,
    ) -> dict:
        """Store a note as a checkpoint record, redacted and embedded like migrated ones. Refused unless the operator
        started `ctx mcp --allow-write`."""
        return backend.remember(title, text, submodule)

    return server, backend


def serve(settings: Settings, allow_write: bool = False) -> None:
    """Serve on stdin/stdout until the client closes the stream."""
    server, backend = build_server(settings, allow_write)
    try:
        server.run("stdio")
    finally:
        backend.close()
