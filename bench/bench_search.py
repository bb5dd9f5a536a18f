"""Search quality and latency, measured on the real corpus.

    python bench/bench_search.py                  # fresh local store: migrate ../shared/corpus, quality, latency
    CTX_HOME=... python bench/bench_search.py     # an existing store (with the corpus in it), used as is
    options: --quality-only, --latency-only, --tune (grid over RRF k and weights), --migrate (migrate the corpus
             into the given store first), --keep (leave a fresh store running), --records 0,100000,300000 (the sizes
             measured, grown in this order; 0 = as it is), --rounds N, --processes N, --explain (query plans),
             --snippets (what the final pages' snippets show and cost, beside the snippets before issue 14)

Quality: bench/eval_queries.json (51 questions the fusion constants were tuned on; --tune tunes on these only) and
bench/eval_queries_holdout.json (hold-out questions over records the first set does not touch, never tuned on;
the run stops if an answer of one set matches a record an answer of the other matches). recall@10 and MRR for text,
semantic and hybrid on each set, each through the real Searcher with the cache off.

Latency, at each size: the store is grown with synthetic messages (SQL generate_series text from the corpus' own
vocabulary, random unit vectors in Chroma; identities 'bench:synthetic:N', reused on later runs; growing is for
good: keep a copy of the store to measure a smaller size again), then: in-process p50/p95 per mode (warm) and the
hybrid search stage by stage, from the timings the real code path records; whole-process `ctx search` (first call
with Redis flushed, the same call again = cache hit, `--mode text`) beside a plain `psql` full-text query on the
same data; last, issue 14's targets against this run's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coditect_ctx import fusion, search as search_mod  # noqa: E402
from coditect_ctx.config import ensure_secrets, load_settings  # noqa: E402
from coditect_ctx.search import Searcher, make_query  # noqa: E402
from coditect_ctx.stores import Store  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"
EVAL = Path(__file__).resolve().parent / "eval_queries.json"
HOLDOUT = Path(__file__).resolve().parent / "eval_queries_holdout.json"
SYNTHETIC = "bench:synthetic:"


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# -- the store ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_store():
    from coditect_ctx import stack

    home = Path(tempfile.mkdtemp(prefix="ctx-bench-search-", dir="/tmp"))
    settings = ensure_secrets(load_settings(home=str(home), runtime="local", pg_port=_free_port(),
                                            chroma_port=_free_port(), redis_port=_free_port()))
    stack.setup(settings, report=lambda m: print(f"  setup: {m}", file=sys.stderr))
    return settings


def env_for(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTX_")}
    env.update({"CTX_HOME": str(settings.home), "CTX_RUNTIME": settings.runtime, "CTX_PG_PORT": str(settings.pg_port),
                "CTX_CHROMA_PORT": str(settings.chroma_port), "CTX_REDIS_PORT": str(settings.redis_port),
                "NO_COLOR": "1", "COLUMNS": "160"})
    return env


def migrate_corpus(settings) -> None:
    from coditect_ctx.migrate import run_migrate

    sources = [CORPUS / "coditect-master", CORPUS / "coditect-core"]
    t0 = time.monotonic()
    report = run_migrate(settings, sources)
    print(f"migrated the corpus in {time.monotonic() - t0:.0f} s: {json.dumps(report.as_dict()['totals'])}",
          file=sys.stderr)


# -- quality ------------------------------------------------------------------------------------------------
def record_keys(conn) -> dict[tuple[str, str], set[str]]:
    """Every record's stable keys: checkpoint refs, source file names and titles, normalised."""
    rows = conn.execute(
        """SELECT 'checkpoint', id::text, ARRAY[ref, source_path, title] FROM checkpoints
           UNION ALL SELECT 'session', id::text, ARRAY[checkpoint_ref, source_path, title] FROM sessions
           UNION ALL SELECT 'pattern', id::text, ARRAY[identity, source_path, name] FROM patterns
           UNION ALL SELECT 'message', m.id::text, ARRAY[m.checkpoint_ref, m.source_path, s.checkpoint_ref, s.source_path, s.title]
                     FROM messages m LEFT JOIN sessions s ON s.id = m.session_id
                     WHERE m.identity NOT LIKE 'bench:%'"""
    )
    keys = {}
    for kind, rid, values in rows:
        names = set()
        for value in values:
            if value:
                names.add(normalise(re.sub(r"\.(md|json|jsonl|txt)$", "", value.rsplit("/", 1)[-1])))
        keys[(kind, rid)] = names
    return keys


def answers_of(key_sets: dict, answers: list[str]):
    wanted = [normalise(a) for a in answers]
    return {k: {a for a in wanted if any(a in name for name in names)} for k, names in key_sets.items()}


def score(ranked: list[tuple[str, str]], matches: dict, answers: list[str]) -> tuple[float, float]:
    wanted = {normalise(a) for a in answers}
    found: set[str] = set()
    rr = 0.0
    for rank, key in enumerate(ranked[:10], start=1):
        hit = matches.get(key) or set()
        if hit and rr == 0.0:
            rr = 1.0 / rank
        found |= hit
    return len(found & wanted) / len(wanted), rr


def matched(matches: list[dict]) -> set:
    """The records any answer of a question set matches."""
    return {key for m in matches for key, hit in m.items() if hit}


def check_disjoint(keys: dict, tuned: list[dict], holdout: list[dict]) -> None:
    """The hold-out set is only honest if none of its answers matches a record the tuned set's answers match."""
    shared = matched(tuned) & matched(holdout)
    if shared:
        for key in sorted(shared)[:20]:
            print(f"  shared record {key}: {sorted(keys[key])}", file=sys.stderr)
        raise SystemExit(f"{len(shared)} records answer both {EVAL.name} and {HOLDOUT.name}: the hold-out set must "
                         "be about other records")


def quality_table(searcher: Searcher, queries: list[dict], matches: list[dict]) -> dict:
    table = {}
    for mode in ("text", "semantic", "hybrid"):
        recalls, rrs = [], []
        for q, m in zip(queries, matches):
            result = searcher.search(make_query(q["q"], mode=mode, limit=10), use_cache=False).result
            r, rr = score([(h.type, h.id) for h in result.hits], m, q["answers"])
            recalls.append(r)
            rrs.append(rr)
        table[mode] = {"recall@10": statistics.mean(recalls), "MRR": statistics.mean(rrs)}
    return table


def quality(settings, tune: bool) -> dict:
    sets = {"tuned": json.loads(EVAL.read_text())["queries"], "hold-out": json.loads(HOLDOUT.read_text())["queries"]}
    files = {"tuned": EVAL.name, "hold-out": HOLDOUT.name}
    tables = {}
    with Searcher(settings) as searcher:
        keys = record_keys(searcher.conn())
        matches = {name: [answers_of(keys, q["answers"]) for q in queries] for name, queries in sets.items()}
        for name, queries in sets.items():
            for q, m in zip(queries, matches[name]):
                for answer in q["answers"]:
                    if not any(normalise(answer) in a for hits in m.values() for a in hits):
                        print(f"  warning: {files[name]}: answer {answer!r} matches no record", file=sys.stderr)
        check_disjoint(keys, matches["tuned"], matches["hold-out"])
        for name, queries in sets.items():
            tables[name] = quality_table(searcher, queries, matches[name])
            print(f"\nquality, {name} set ({files[name]}): {len(queries)} questions, "
                  f"{sum(len(q['answers']) for q in queries)} answers, {len(matched(matches[name]))} answering records; "
                  f"k={search_mod.RRF_K}, weights={search_mod.WEIGHTS}")
            print(f"{'mode':10} {'recall@10':>10} {'MRR':>8}")
            for mode, row in tables[name].items():
                print(f"{mode:10} {row['recall@10']:10.3f} {row['MRR']:8.3f}")
        if tune:
            tune_fusion(searcher, sets["tuned"], matches["tuned"], (sets["hold-out"], matches["hold-out"]))
    return tables


def tune_fusion(searcher: Searcher, queries: list[dict], matches: list[dict],
                holdout: tuple[list[dict], list[dict]]) -> None:
    """Grid over k and the engine weights on the engines' own candidate lists (fusion re-run offline), chosen on the
    tuned set only. The hold-out set's figures are printed beside each row for reading, never used to choose."""
    sets = {"tuned": (queries, matches), "hold-out": holdout}
    lists = {name: [searcher.engine_rankings(make_query(q["q"], limit=10))[0] for q in qs]
             for name, (qs, _) in sets.items()}

    def grid(indexes: list[int]) -> list[tuple]:
        out = []
        for k in (5, 10, 20, 40, 60, 100):
            for w_sem in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0):
                for w_trgm in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0):
                    r, rr = evaluate(indexes, k, {"text": 1.0, "trigram": w_trgm, "semantic": w_sem})
                    out.append((r + rr, r, rr, k, w_sem, w_trgm))
        return sorted(out, reverse=True)

    def evaluate(indexes: list[int] | None, k: float, weights: dict, on: str = "tuned") -> tuple[float, float]:
        qs, ms = sets[on]
        recalls, rrs = [], []
        for i in indexes if indexes is not None else range(len(qs)):
            fused = [f.key for f in fusion.weighted_rrf(lists[on][i], weights, k)[:10]]
            r, rr = score(fused, ms[i], qs[i]["answers"])
            recalls.append(r)
            rrs.append(rr)
        return statistics.mean(recalls), statistics.mean(rrs)

    results = grid(list(range(len(queries))))
    # 2-fold check against over-fitting: tune on one half of the questions, measure on the other.
    halves = [list(range(0, len(queries), 2)), list(range(1, len(queries), 2))]
    for train, test in (halves, halves[::-1]):
        _, _, _, k, w_sem, w_trgm = grid(train)[0]
        r, rr = evaluate(test, k, {"text": 1.0, "trigram": w_trgm, "semantic": w_sem})
        print(f"2-fold: tuned on {len(train)} (k={k}, w_sem={w_sem}, w_trgm={w_trgm}) -> held-out recall@10 {r:.3f}, "
              f"MRR {rr:.3f}")
    print("\ntuning on the tuned set (text weight 1.0), best 8 of the grid; the hold-out set's figures for reading only:")
    print(f"{'k':>5} {'w_sem':>6} {'w_trgm':>7} {'recall@10':>10} {'MRR':>8}   {'hold-out recall@10':>18} {'MRR':>8}")
    current = (search_mod.RRF_K, search_mod.WEIGHTS["semantic"], search_mod.WEIGHTS["trigram"])
    shown = results[:8] + [x for x in results[8:] if x[3:] == current][:1]
    for _, r, rr, k, w_sem, w_trgm in shown:
        hr, hrr = evaluate(None, k, {"text": 1.0, "trigram": w_trgm, "semantic": w_sem}, on="hold-out")
        note = "  <- current settings" if (k, w_sem, w_trgm) == current else ""
        print(f"{k:5} {w_sem:6} {w_trgm:7} {r:10.3f} {rr:8.3f}   {hr:18.3f} {hrr:8.3f}{note}")


# -- snippets -----------------------------------------------------------------------------------------------
# The snippets before issue 14, the baseline: two ts_headline fragments of 16 words over the first 20,000
# characters, flattened, a few Markdown markers dropped.
OLD_HEADLINE = ('StartSel="\ue000", StopSel="\ue001", MaxWords=16, MinWords=6, MaxFragments=2, '
                'FragmentDelimiter=" … "')
OLD_SOURCE_CHARS = 20000
OLD_MARKUP = re.compile(r"\*\*|__|`+|(?:^|\s)#{1,6}(?=\s)|^>\s|\[[ xX]\]")
# What a reader should not see in a snippet (a rough detector: a '#' shell comment or '---' in a file name counts too)
SCAFFOLDING = re.compile(r"(^|\s)#{1,6}\s|---|\*\*\*|\||```|\*\*|`|Session Export|Session Metadata|CODITECT Checkpoint"
                         r"|\b(Timestamp|Checkpoint|Sprint|Status|Repository|Participants|Objectives|Tags|Export Time):")


def old_snippet(headline: str | None) -> tuple[str, list]:
    from coditect_ctx.snippets import SNIPPET_CHARS, _unmark

    text, spans = _unmark(" ".join(OLD_MARKUP.sub(" ", headline or "").split()))
    return (text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rstrip() + "…"), spans


def snippet_report(settings) -> None:
    """The final page's snippets for every question of both sets (hybrid, top 10): how many show a sentence twice,
    scaffolding, a highlighted match, and what the page's SQL and the Python cutting them cost, new beside old."""
    from coditect_ctx import snippets

    def repeated(text: str) -> bool:
        parts = [" ".join(re.findall(r"\w+", p.lower())) for p in re.split(r"(?<=[.!?])\s+|…", text)]
        parts = [p for p in parts if p.count(" ") >= 2]
        return len(parts) != len(set(parts))

    questions = [q["q"] for path in (EVAL, HOLDOUT) for q in json.loads(path.read_text())["queries"]]
    cost = {"old sql": [], "new sql": [], "old python": [], "new python": []}
    counts = {"old": [0, 0, 0], "new": [0, 0, 0]}  # sentence twice, scaffolding, highlighted
    hits = 0
    with Searcher(settings) as searcher:
        conn = searcher.conn()
        for q in questions:
            rankings, _ = searcher.engine_rankings(make_query(q))
            keys = [f.key for f in fusion.weighted_rrf(rankings, search_mod.WEIGHTS, search_mod.RRF_K)[:10]]
            types = [t for t in search_mod.TYPES if any(k[0] == t for k in keys)]
            params = {"relaxed": search_mod.relaxed_text(q), **{f"{t}_ids": [k[1] for k in keys if k[0] == t] for t in types}}
            new_sql = search_mod._hydrate_sql(types)
            old_sql = new_sql.replace(f"{snippets.SOURCE_CHARS})", f"{OLD_SOURCE_CHARS})")
            assert old_sql != new_sql, "the page's SQL no longer bounds ts_headline's text by SOURCE_CHARS"
            rows = {}
            for name, sql, opts in (("old", old_sql, OLD_HEADLINE), ("new", new_sql, snippets.HEADLINE_OPTS)):
                for _ in range(2):  # the second one is timed (warm)
                    t0 = time.perf_counter()
                    rows[name] = conn.execute(sql, {**params, "hl": opts}).fetchall()
                cost[f"{name} sql"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            old = [old_snippet(r[5]) for r in rows["old"]]
            cost["old python"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            new = [snippets.snippet(r[5], r[2]) for r in rows["new"]]
            cost["new python"].append(time.perf_counter() - t0)
            hits += len(new)
            for name, shown in (("old", old), ("new", new)):
                for text, spans in shown:
                    counts[name][0] += repeated(text)
                    counts[name][1] += bool(SCAFFOLDING.search(text))
                    counts[name][2] += bool(spans)
    print(f"\nsnippets of the top 10 hybrid hits of {len(questions)} questions ({hits} hits): old = 2 ts_headline "
          f"fragments over {OLD_SOURCE_CHARS} chars, new = snippets.py over {snippets.SOURCE_CHARS}")
    print(f"{'':28} {'old':>8} {'new':>8}")
    for i, label in enumerate(("a sentence shown twice", "scaffolding shown", "a highlighted match")):
        print(f"{label:28} {counts['old'][i]:8} {counts['new'][i]:8}")
    for part in ("sql", "python"):
        o, n = statistics.median(cost[f"old {part}"]), statistics.median(cost[f"new {part}"])
        print(f"{'page ' + part + ' (median ms)':28} {1000 * o:8.2f} {1000 * n:8.2f}")


# -- latency ------------------------------------------------------------------------------------------------
def record_count(conn) -> int:
    return conn.execute("SELECT (SELECT count(*) FROM sessions) + (SELECT count(*) FROM checkpoints) "
                        "+ (SELECT count(*) FROM patterns) + (SELECT count(*) FROM messages)").fetchone()[0]


def grow(settings, target: int) -> None:
    """Add synthetic messages until the store holds `target` records; random unit vectors for them in Chroma.

    Chroma's insert is the cost (about 1 ms a vector on this machine, whatever the batch size: 1,000 to 5,000 ids a
    request and two writers at once were measured alike), so the PostgreSQL side is kept out of its way: the
    vocabulary is read once, rows go in 5,000 at a time, vectors are sent as short decimals."""
    import numpy as np

    from coditect_ctx.stores.chroma import COLLECTIONS, vector_id, vector_metadata

    with Store(settings) as store, store.pg(autocommit=True) as conn:
        have = record_count(conn)
        if have >= target:
            return
        start = conn.execute(f"SELECT count(*) FROM messages WHERE identity LIKE '{SYNTHETIC}%'").fetchone()[0]
        need = target - have
        print(f"adding {need} synthetic messages to {have} records", file=sys.stderr)
        t0 = time.monotonic()
        submodule = conn.execute("SELECT id, name FROM submodule_registry ORDER BY name LIMIT 1").fetchone()
        words = conn.execute("SELECT array_agg(word) FROM (SELECT word FROM ts_stat('SELECT search_vector FROM sessions') "
                             "ORDER BY nentry DESC, word LIMIT 3000) x").fetchone()[0]
        rng = np.random.default_rng(7 + start)
        step = 5000  # rows per PostgreSQL insert; Chroma gets them in requests under its size limits
        for lo in range(start, start + need, step):
            hi = min(start + need, lo + step) - 1
            rows = conn.execute(
                f"""INSERT INTO messages (identity, submodule_id, role, kind, content, first_seen, content_sha256,
                                          embedded_sha256, embedded_chunks, privacy_level, source_path)
                    SELECT '{SYNTHETIC}' || g, %s, CASE WHEN g %% 2 = 0 THEN 'user' ELSE 'assistant' END, 'text',
                           (SELECT string_agg(w[1 + floor(random() * array_length(w, 1))::int + 0 * i], ' ')
                              FROM generate_series(1, 12 + (g %% 80)) i),
                           timestamptz '2025-06-01' + g * interval '7 minutes', md5(g::text) || md5(g::text),
                           md5(g::text) || md5(g::text), 1, 'TEAM', 'bench/synthetic'
                    FROM generate_series(%s::int, %s::int) g, (SELECT %s::text[] AS w) words
                    RETURNING id::text, extract(epoch FROM first_seen), content_sha256""",
                (submodule[0], lo, hi, words),
            ).fetchall()
            vectors = rng.standard_normal((len(rows), 384))
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.chroma.upsert(
                COLLECTIONS["message"], [vector_id(r[0], 0) for r in rows], vectors.round(5).tolist(),
                [vector_metadata(record_type="message", record_id=r[0], chunk=0, submodule=submodule[1],
                                 title="synthetic", timestamp=float(r[1]), privacy_level="TEAM", tags=[],
                                 content_sha256=r[2]) for r in rows],
            )
            done = hi - start + 1
            if done % 20000 < step:
                rate = done / (time.monotonic() - t0)
                print(f"  {done}/{need} ({rate:.0f} records/s, {(need - done) / rate / 60:.0f} min left)", file=sys.stderr)
        conn.execute("VACUUM ANALYZE messages")
        from coditect_ctx.stores.postgres import bump_generation

        bump_generation(conn)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def flush_redis(settings) -> None:
    import redis

    with Store(settings) as store:
        url = store.endpoints.redis_url
    if url:
        redis.Redis.from_url(url).flushdb()


def wall(argv: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed ({proc.returncode}): {proc.stderr[-800:]}")
    return elapsed, proc.stdout


STAGES = [  # (timings key, what it is); the semantic branch runs in a thread beside the PostgreSQL engines
    ("generation", "data generation read"),
    ("text", "full-text SQL"),
    ("trigram", "trigram SQL (titles)"),
    ("embed", "query embedding (model, no cache)"),
    *[(f"chroma:{kind}", f"Chroma {kind}s") for kind in ("session", "checkpoint", "pattern", "message")],
    ("chroma", "Chroma, all collections at once"),
    ("semantic_wait", "waiting for semantic after the SQL"),
    ("fusion", "fusion"),
    ("hydrate", "final page SQL (ts_headline)"),
    ("render", "rendering the table"),
    ("total", "hybrid total (before rendering)"),
]


def in_process(settings, queries: list[str], rounds: int) -> dict:
    """Warm Searcher, cache off: p50/p95 per mode, and every stage of the hybrid runs (from the real code path's
    timings); the hybrid page is rendered by the CLI's own renderer, timed apart from the search."""
    from coditect_ctx.commands.search_fast import TableRenderer

    renderer = TableRenderer()
    with Searcher(settings) as searcher:
        searcher.search(make_query("warm up the model and connections"), use_cache=False)
        times: dict[str, list[float]] = {"hybrid": [], "text": [], "semantic": []}
        stages: dict[str, list[float]] = {}
        for _ in range(rounds):
            for q in queries:
                for mode in times:
                    t0 = time.perf_counter()
                    outcome = searcher.search(make_query(q, mode=mode), use_cache=False)
                    times[mode].append(time.perf_counter() - t0)
                    if mode == "hybrid":
                        t1 = time.perf_counter()
                        renderer(outcome.result)
                        outcome.timings["render"] = time.perf_counter() - t1
                        for key, value in outcome.timings.items():
                            stages.setdefault(key, []).append(value)
    return {"modes": times, "stages": stages}


def whole_process(settings, queries: list[str]) -> dict[str, list[float]]:
    from coditect_ctx.runtime.local import embedded_pg_bin

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "coditect_ctx")], check=True,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})  # as installed
    env = env_for(settings)
    with Store(settings) as store:
        url = store.pg_url
    ctx = [sys.executable, "-m", "coditect_ctx", "search"]
    psql = str(embedded_pg_bin() / "psql")
    columns: dict[str, list[float]] = {"first ctx search (no cache)": [], "repeat (cache hit)": [],
                                       "ctx search --mode text": [], "psql full-text query": []}
    for q in queries:
        flush_redis(settings)
        columns["first ctx search (no cache)"].append(wall(ctx + [q], env)[0])
        columns["repeat (cache hit)"].append(wall(ctx + [q], env)[0])
        columns["ctx search --mode text"].append(wall(ctx + [q, "--mode", "text"], env)[0])
        literal = q.replace("'", "''")
        sql = " UNION ALL ".join(
            f"(SELECT id, ts_rank_cd(search_vector, q) AS r FROM {t}, websearch_to_tsquery('english', '{literal}') q "
            f"WHERE search_vector @@ q ORDER BY r DESC LIMIT 30)" for t in ("sessions", "checkpoints", "patterns", "messages"))
        columns["psql full-text query"].append(wall([psql, url, "-X", "-q", "-c", sql + " ORDER BY r DESC LIMIT 10"], env)[0])
    return columns


def explain(settings, question: str) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of the statements one hybrid search runs, on the store as it is."""
    from coditect_ctx import search as s

    query = make_query(question)
    n = max(s.MIN_CANDIDATES, s.CANDIDATE_FACTOR * query.limit)
    relaxed = s.relaxed_text(question)
    params = {**s._params(query), "q": question, "relaxed": relaxed, "words": s._words(question), "trgm": question[:200]}
    with Searcher(settings) as searcher:
        conn = searcher.conn()
        conn.execute("SELECT set_config('pg_trgm.similarity_threshold', %s, false)", (str(s.TRIGRAM_THRESHOLD),))
        statements = s._text_sql(query, n)
        rankings, _ = searcher.engine_rankings(query)
        keys = [f.key for f in fusion.weighted_rrf(rankings, s.WEIGHTS, s.RRF_K)[: query.limit]]
        types = [t for t in s.TYPES if any(k[0] == t for k in keys)]
        hydrate = {"relaxed": relaxed, "hl": s.HEADLINE_OPTS, **{f"{t}_ids": [k[1] for k in keys if k[0] == t] for t in types}}
        statements.append(("hydrate", s._hydrate_sql(types)))
        for name, sql in statements:
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, hydrate if name == "hydrate" else params).fetchall()
            print(f"\n-- EXPLAIN (ANALYZE, BUFFERS) {name}: {question!r}")
            print("\n".join(row[0] for row in plan))


def latency(settings, sizes: list[int], processes: int, rounds: int, show_plans: bool) -> list[dict]:
    queries = [q["q"] for q in json.loads(EVAL.read_text())["queries"]]
    measured = []
    for size in sizes:
        t0 = time.monotonic()
        grow(settings, size)
        grown = time.monotonic() - t0
        with Store(settings) as store, store.pg() as conn:
            total = record_count(conn)
        if show_plans:
            for question in queries[:2]:
                explain(settings, question)
        inner = in_process(settings, queries, rounds)
        outer = whole_process(settings, queries[:processes])
        measured.append({"records": total, **inner, "process": outer})
        print(f"\n== {total} records" + (f" (grown in {grown / 60:.1f} min)" if grown > 5 else ""))
        print(f"in process, warm, cache off ({rounds} rounds of {len(queries)} questions)")
        print(f"{'':42} {'p50 ms':>8} {'p95 ms':>8}")
        for mode, values in inner["modes"].items():
            print(f"{mode + ' search':42} {1000 * pct(values, 50):8.1f} {1000 * pct(values, 95):8.1f}")
        print("hybrid, stage by stage (text and trigram run beside embedding + Chroma)")
        for key, label in STAGES:
            values = inner["stages"].get(key)
            if values:
                print(f"  {label:40} {1000 * pct(values, 50):8.1f} {1000 * pct(values, 95):8.1f}")
        print(f"whole process, wall time over {processes} questions (Redis flushed before each first call)")
        print(f"{'':42} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        for name, values in outer.items():
            print(f"{name:42} {1000 * pct(values, 50):8.0f} {1000 * pct(values, 95):8.0f} {1000 * max(values):8.0f}")
        psql = statistics.median(outer["psql full-text query"])
        print(f"in-process hybrid p50 = {pct(inner['modes']['hybrid'], 50) / psql:.1f}x a whole psql full-text query; "
              f"cache hit speed-up {statistics.median(outer['first ctx search (no cache)']) / statistics.median(outer['repeat (cache hit)']):.1f}x")
    return measured


def targets(measured: list[dict], table: dict | None) -> None:
    """Issue 14's targets, each against its figure from this run."""
    def p95(m: dict) -> float:
        return 1000 * pct(m["modes"]["hybrid"], 95)

    print("\ntargets (this run)")
    rows = []
    at = {m["records"]: m for m in measured}
    near = lambda want: min(at, key=lambda r: abs(r - want)) if at else None  # noqa: E731
    mid = at.get(near(100_000)) if at else None
    big = at.get(near(300_000)) if at else None
    if mid:
        rows.append((f"in-process hybrid p95 at {mid['records']} records", f"{p95(mid):.1f} ms", "<= 50 ms", p95(mid) <= 50))
        first = 1000 * statistics.median(mid["process"]["first ctx search (no cache)"])
        hit = 1000 * statistics.median(mid["process"]["repeat (cache hit)"])
        rows.append(("first ctx search (median)", f"{first:.0f} ms", "<= 500 ms", first <= 500))
        rows.append(("cache hit (median)", f"{hit:.0f} ms", "<= 200 ms", hit <= 200))
    if mid and big and big is not mid:
        ratio = p95(big) / p95(mid)
        rows.append((f"hybrid p95 at {big['records']} / at {mid['records']}", f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5))
    if table:
        r, mrr = table["hybrid"]["recall@10"], table["hybrid"]["MRR"]
        rows.append(("hybrid recall@10 / MRR (tuned set)", f"{r:.3f} / {mrr:.3f}", ">= 0.938 / 0.787",
                     round(r, 3) >= 0.938 and round(mrr, 3) >= 0.787))  # the baseline as printed (60/64 = 0.9375)
    for name, value, goal, ok in rows:
        print(f"  {name:44} {value:>16}  {goal:>18}  {'met' if ok else 'NOT MET'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--snippets", action="store_true",
                        help="with the quality: what the final pages' snippets show and cost, new beside the old ones")
    parser.add_argument("--migrate", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--records", default="0,100000,300000",
                        help="store sizes to measure at, grown in this order (0: the store as it is)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the questions per mode, in process")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN (ANALYZE, BUFFERS) of each statement")
    parser.add_argument("--processes", type=int, default=15, help="questions timed as whole ctx processes")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    fresh = "CTX_HOME" not in os.environ
    if fresh and not CORPUS.is_dir():
        raise SystemExit(f"no corpus at {CORPUS}: give an existing store with CTX_HOME")
    settings = fresh_store() if fresh else load_settings()
    try:
        if fresh or args.migrate:
            migrate_corpus(settings)
        tables = None if args.latency_only else quality(settings, args.tune)
        if args.snippets:
            snippet_report(settings)
        if not args.quality_only:
            sizes = [int(x) for x in args.records.split(",")]
            targets(latency(settings, sizes, args.processes, args.rounds, args.explain), tables and tables["tuned"])
    finally:
        if fresh and not args.keep:
            from coditect_ctx import stack

            stack.down(settings, volumes=True)
            shutil.rmtree(settings.home, ignore_errors=True)


if __name__ == "__main__":
    main()
