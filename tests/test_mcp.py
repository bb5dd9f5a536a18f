"""`ctx mcp`: a real `ctx mcp` subprocess on a real store, driven by the MCP SDK's own stdio client."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from coditect_ctx import embed

from .conftest import _short_tmp, _start, make_settings, settings_env
from .conftest import run_ctx as ctx
from .test_search import DEMO, _migrate


@pytest.fixture(scope="module")
def store(models_dir):
    """A store of this module's own: a test stops its PostgreSQL."""
    from coditect_ctx import stack as stack_job

    embed.ensure_onnx(models_dir)
    settings = make_settings(_short_tmp("ctx-mcp-"))
    _start(settings, models_dir)
    _migrate(settings, DEMO)
    yield settings
    stack_job.down(settings, volumes=True)


def with_server(settings, body, *flags: str):
    """Start `ctx mcp` as a subprocess, run `body(session)` against it, return what body returned."""

    async def main():
        params = StdioServerParameters(command="ctx", args=["mcp", *flags],
                                       env={**os.environ, **settings_env(settings), "NO_COLOR": "1"})
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await body(session)

    return asyncio.run(main())


def data(result) -> dict:
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


def error(result) -> str:
    assert result.is_error
    return result.content[0].text


def test_tools_answer_as_the_cli_does(store):
    async def body(session):
        tools = {t.name: t for t in (await session.list_tools()).tools}
        found = data(await session.call_tool("search", {"query": "redis eviction policy", "limit": 3}))
        filtered = data(await session.call_tool("search", {"query": "redis", "type": "checkpoint",
                                                           "since": "2025-03-05", "until": "2025-03-05"}))
        shown = data(await session.call_tool("show", {"id": found["results"][0]["id"][:13]}))
        pack = data(await session.call_tool("context", {"task": "continue the cloud sql connection pool work",
                                                        "budget": 1500}))
        status = data(await session.call_tool("status", {}))
        return tools, found, filtered, shown, pack, status

    tools, found, filtered, shown, pack, status = with_server(store, body)
    assert {"search", "show", "context", "status", "remember"} <= set(tools)
    assert {"type", "submodule", "tags", "since", "until", "privacy", "limit", "mode"} <= set(
        tools["search"].input_schema["properties"])
    cli_found = json.loads(ctx(store, "search", "redis eviction policy", "--limit", "3", "--json").stdout)
    assert [h["id"] for h in found["results"]] == [h["id"] for h in cli_found["results"]]
    assert [h["type"] for h in filtered["results"]] == ["checkpoint"]
    assert shown == json.loads(ctx(store, "show", found["results"][0]["id"], "--json").stdout)
    cli_pack = json.loads(ctx(store, "context", "continue the cloud sql connection pool work", "--budget", "1500",
                              "--json").stdout)
    assert [i["id"] for i in pack["items"]] == [i["id"] for i in cli_pack["items"]]
    assert pack["markdown"].startswith("# Context for:") and pack["tokens"] <= 1500 and pack["client"] == "mcp"
    cli_status = json.loads(ctx(store, "status", "--json").stdout)
    cli_tables = cli_status["tables"]
    for table in ("sessions", "checkpoints", "messages", "patterns"):
        assert status["tables"][table] == cli_tables[table]
    assert "home" not in status
    assert status["context_loads"][0]["packs"] >= 1  # the tool's pack, recorded
    assert cli_status["context_loads"][0]["packs"] == status["context_loads"][0]["packs"] + 1  # then the CLI's


def test_bad_arguments_are_the_cli_errors_and_the_server_goes_on(store):
    async def body(session):
        answers = [await session.call_tool("search", {"query": "redis", "type": "widget"}),
                   await session.call_tool("show", {"id": "nope"}),
                   await session.call_tool("context", {"task": "redis", "budget": 10}),
                   await session.call_tool("search", {"query": "redis", "limit": "many"}),
                   await session.call_tool("remember", {"title": "t", "text": "x"})]
        after = await session.call_tool("search", {"query": "redis"})
        return answers, after

    (bad_type, bad_id, bad_budget, bad_limit, write), after = with_server(store, body)
    cli = ctx(store, "search", "redis", "--type", "widget")
    assert cli.returncode == 2 and cli.stderr.strip() in error(bad_type)
    assert "Error: 'nope' is not a record id" in error(bad_id)
    assert "Error: --budget 10 is out of range" in error(bad_budget)
    assert "limit" in error(bad_limit)
    assert "without --allow-write" in error(write)
    for answer in (bad_type, bad_id, bad_budget, bad_limit, write):
        assert "Traceback" not in error(answer)
    assert data(after)["results"]


def test_allow_write_remembers_a_note_redacted_and_searchable(store):
    secret_mail = "dana.private" + "@example.org"

    async def body(session):
        stored = data(await session.call_tool("remember", {
            "title": "Quokka deploys need the blue-green flag",
            "text": f"Deploying the quokka service without --blue-green drops sessions; ask {secret_mail} first."}))
        found = data(await session.call_tool("search", {"query": "quokka blue-green deploy", "limit": 3}))
        return stored, found

    stored, found = with_server(store, body, "--allow-write")
    assert stored["id"] and stored["submodule"] == "agent-notes" and stored["redactions"] >= 1 and stored["embedded"]
    assert found["results"][0]["id"] == stored["id"]
    shown = json.loads(ctx(store, "show", stored["id"], "--json").stdout)
    assert shown["type"] == "checkpoint" and "blue-green" in shown["content"] and "dana.private" not in shown["content"]
    semantic = json.loads(ctx(store, "search", "marsupial rollout switch", "--mode", "semantic", "--json").stdout)
    assert stored["id"] in [h["id"] for h in semantic["results"]]  # embedded: found by meaning alone
    notes = list((store.home / "notes").rglob("*.md"))
    assert notes and all("dana.private" not in p.read_text() for p in notes)


def test_postgres_stopped_mid_session_is_an_error_then_recovers(store):
    from coditect_ctx.runtime.local import LocalRuntime

    async def body(session):
        before = data(await session.call_tool("search", {"query": "schema migration tags", "mode": "text"}))
        LocalRuntime(store)._pg_ctl(["stop", "-m", "immediate", "-w"])
        try:
            down = await session.call_tool("search", {"query": "flaky ci job", "mode": "text"})
        finally:
            _start(store, None)
        back = data(await session.call_tool("search", {"query": "flaky ci job", "mode": "text"}))
        return before, down, back

    before, down, back = with_server(store, body)
    assert before["results"]
    assert "Error: PostgreSQL connection lost" in error(down) and "Hint: " in error(down)
    assert "Traceback" not in error(down)
    assert back["results"] and back["results"][0]["title"].startswith("Flaky CI job")
