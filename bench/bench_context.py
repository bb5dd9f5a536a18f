"""`ctx context` pack quality and `ctx mcp` tool-call latency.

    python bench/bench_context.py                      # fresh local store with the demo samples (bench/eval_context.json)
    python bench/bench_context.py --corpus             # fresh local store, ../shared/corpus migrated into it
    CTX_HOME=... python bench/bench_context.py --corpus [--migrate]   # an existing store (--migrate: the corpus first)
    --corpus measures eval_context.json's corpus_tasks, then eval_queries.json's questions as tasks.
    options: --calls N (MCP latency calls per tool, default 20), --keep (leave a fresh store running)

Quality: for each task, how many of its answers (stable keys, as in bench_search.py) a pack of 2,000 and of
4,000 tokens holds, beside the baseline: the top hybrid search hits, each in full (title, summary, content, as
`ctx show` gives them), concatenated until the budget is spent (the last one cut). Both counted with the model's
tokenizer. Latency: `search` and `context` called through a real `ctx mcp` subprocess with the SDK's stdio
client, p50/p95, beside the same calls in process on one warm Searcher (the protocol's overhead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench_search import answers_of, env_for, fresh_store, migrate_corpus, record_keys  # noqa: E402

from coditect_ctx.config import load_settings  # noqa: E402
from coditect_ctx.context import build_pack  # noqa: E402
from coditect_ctx.embed import count_tokens, head_tokens  # noqa: E402
from coditect_ctx.search import Searcher, make_query  # noqa: E402

SAMPLES = BENCH.parent / "coditect_ctx" / "samples" / "coditect-demo"
BUDGETS = (2000, 4000)


def baseline(searcher: Searcher, task: str, budget: int) -> list[tuple[str, str]]:
    """The records a concatenation of the top hits' full text holds within `budget` tokens."""
    hits = searcher.search(make_query(task, limit=30)).result.hits
    used, held = 0, []
    for hit in hits:
        from coditect_ctx.show import find_record

        record = find_record(searcher.settings, hit.id)
        text = "\n\n".join(p for p in (record["title"], record.get("summary") or record.get("description") or "",
                                       record.get("content") or "") if p)
        cost = count_tokens(text)
        if used + cost > budget:
            if count_tokens(head_tokens(text, budget - used)) > 0:
                held.append((hit.type, hit.id))
            break
        used += cost
        held.append((hit.type, hit.id))
    return held


def quality(settings, tasks: list[dict], label: str) -> None:
    with Searcher(settings) as searcher:
        keys = record_keys(searcher.conn())
        total = sum(len(t["answers"]) for t in tasks)
        found = {(kind, b): 0 for kind in ("pack", "baseline") for b in BUDGETS}
        for task in tasks:
            matches = answers_of(keys, task["answers"])
            for budget in BUDGETS:
                pack = build_pack(settings, task["q"], budget=budget, record=False, searcher=searcher)
                for kind, held in (("pack", [(i.type, i.id) for i in pack.items]),
                                   ("baseline", baseline(searcher, task["q"], budget))):
                    got = set().union(*(matches.get(k, set()) for k in held)) if held else set()
                    found[(kind, budget)] += len(got)
    print(f"pack quality, {label}: {len(tasks)} tasks, {total} answers (records a good pack must hold)")
    for budget in BUDGETS:
        p, b = found[("pack", budget)], found[("baseline", budget)]
        print(f"  {budget:>5} tokens: ctx context holds {p}/{total} ({p / total:.0%}); "
              f"top search hits concatenated hold {b}/{total} ({b / total:.0%}); ratio {p / max(b, 1):.2f}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency(settings, tasks: list[dict], calls: int) -> None:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    queries = [t["q"] for t in tasks][:calls] * (calls // max(1, len(tasks)) + 1)
    queries = queries[:calls]
    local: dict[str, list[float]] = {"search": [], "context": []}
    with Searcher(settings) as searcher:
        for q in queries[:2]:  # warm: model, connections, cache
            searcher.search(make_query(q))
            build_pack(settings, q, record=False, searcher=searcher)
        for q in queries:
            t0 = time.perf_counter()
            searcher.search(make_query(q)).result.as_output()
            local["search"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            build_pack(settings, q, searcher=searcher, client="bench")
            local["context"].append(time.perf_counter() - t0)
    remote: dict[str, list[float]] = {"search": [], "context": []}

    async def main() -> None:
        params = StdioServerParameters(command="ctx", args=["mcp"], env=env_for(settings))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                for q in queries[:2]:
                    await session.call_tool("search", {"query": q})
                    await session.call_tool("context", {"task": q})
                for q in queries:
                    for tool, args in (("search", {"query": q}), ("context", {"task": q, "client": "bench"})):
                        t0 = time.perf_counter()
                        result = await session.call_tool(tool, args)
                        remote[tool].append(time.perf_counter() - t0)
                        assert not result.is_error, result.content

    asyncio.run(main())
    print(f"MCP tool-call latency ({calls} calls each, warm; search results cached in Redis as in normal use)")
    for tool in ("search", "context"):
        lp50, lp95 = pct(local[tool], 0.5) * 1000, pct(local[tool], 0.95) * 1000
        rp50, rp95 = pct(remote[tool], 0.5) * 1000, pct(remote[tool], 0.95) * 1000
        print(f"  {tool:<8} in process p50 {lp50:6.1f} ms  p95 {lp95:6.1f} ms | over MCP p50 {rp50:6.1f} ms  "
              f"p95 {rp95:6.1f} ms | overhead p50 x{rp50 / lp50:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", action="store_true", help="the store in CTX_HOME holds the corpus")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--migrate", action="store_true", help="with CTX_HOME: migrate the corpus into it first")
    args = parser.parse_args()
    fresh = None
    if args.corpus:
        if os.environ.get("CTX_HOME"):
            settings = load_settings()
        else:
            settings = fresh = fresh_store()
        if fresh is not None or args.migrate:
            migrate_corpus(settings)
        sets = [("session-style tasks on the corpus", json.loads((BENCH / "eval_context.json").read_text())["corpus_tasks"]),
                ("eval_queries.json questions as tasks", json.loads((BENCH / "eval_queries.json").read_text())["queries"])]
    else:
        from coditect_ctx.migrate import run_migrate

        settings = fresh = fresh_store()
        run_migrate(settings, [SAMPLES])
        sets = [("session-style tasks on the samples", json.loads((BENCH / "eval_context.json").read_text())["tasks"])]
    try:
        for label, tasks in sets:
            quality(settings, tasks, label)
        latency(settings, sets[0][1], args.calls)
    finally:
        if fresh is not None and not args.keep:
            from coditect_ctx import stack

            stack.down(fresh, volumes=True)


if __name__ == "__main__":
    os.environ.setdefault("NO_COLOR", "1")
    main()
