"""`ctx search` / `ctx show` on real stores: the sample data migrated with the real model, real Redis and Chroma.

The session `stack` gets the demo samples (read-only afterwards); tests that change data or kill services use a
store of their own.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from coditect_ctx import embed
from coditect_ctx.errors import UsageError
from coditect_ctx.search import make_query, search

from .conftest import SAMPLES, _short_tmp, _start, make_settings, settings_env, with_settings

DEMO = SAMPLES / "coditect-demo"


def _migrate(settings, *paths: Path):
    from coditect_ctx.migrate import run_migrate

    report = run_migrate(settings, list(paths))
    assert report.not_embedded == 0, report.as_dict()
    return report


@pytest.fixture(scope="module")
def samples(stack, models_dir):
    """The session store with the demo samples in it (migrate is an idempotent upsert)."""
    embed.ensure_onnx(models_dir)
    _migrate(stack, DEMO)
    return stack


def _legacy_db(folder: Path) -> Path:
    """A MEMORY-CONTEXT with the legacy SQLite store: the only format that carries privacy levels and patterns."""
    mc = folder / "MEMORY-CONTEXT"
    mc.mkdir(parents=True)
    db = sqlite3.connect(mc / "memory-context.db")
    db.execute("CREATE TABLE patterns (pattern_id TEXT, pattern_type TEXT, name TEXT, description TEXT, "
               "tags TEXT, privacy_level TEXT, frequency INTEGER)")
    db.execute("CREATE TABLE sessions (session_id TEXT, title TEXT, started_at TEXT, summary TEXT, content TEXT, "
               "tags TEXT, privacy_level TEXT)")
    db.executemany("INSERT INTO patterns VALUES (?, ?, ?, ?, ?, ?, ?)", [
        ("p-backoff", "reliability", "Exponential backoff with jitter for flaky network calls",
         "Retry transient network failures with exponential backoff and random jitter; give up after five tries.",
         '["retry"]', "PUBLIC", 12),
        ("p-secrets", "security", "Rotate leaked credentials before anything else",
         "When a token or password leaks into a transcript, revoke and rotate it first, then scrub the history.",
         '["security"]', "PRIVATE", 3),
    ])
    db.executemany("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)", [
        ("s-1", "Staging credentials rotated after a leak", "2024-06-01T10:00:00Z",
         "A staging database password leaked into a shared transcript; it was revoked and rotated.",
         "We revoked the leaked staging password, rotated it, and scrubbed the transcript.", "security", "PRIVATE"),
    ])
    db.commit()
    db.close()
    return folder


@pytest.fixture(scope="module")
def own(models_dir):
    """A store of this module's own: samples + a legacy database; tests here may add data to it."""
    from coditect_ctx import stack as stack_job

    embed.ensure_onnx(models_dir)
    settings = make_settings(_short_tmp("ctx-srch-"))
    _start(settings, models_dir)
    extra = _legacy_db(_short_tmp("ctx-srch-src-") / "legacy-tools")
    _migrate(settings, DEMO, extra)
    yield settings
    stack_job.down(settings, volumes=True)


def run(settings, text: str, **options):
    return search(settings, make_query(text, **options)).result


def titles(result) -> list[str]:
    return [h.title for h in result.hits]


# -- the full-text engine ranks a bounded candidate set -----------------------------------------------------
def _every_match_ranked(settings, question: str, n: int) -> list[tuple[str, str]]:
    """The reference: every record holding one of the question's words, ranked by ts_rank_cd (+1 for an exact
    match), the best n of each kind, merged best first (what the text engine did before it bounded its work)."""
    from coditect_ctx.kinds import KINDS
    from coditect_ctx.search import relaxed_text
    from coditect_ctx.stores import Store

    rows = []
    with Store(settings) as store, store.pg(autocommit=True) as conn:
        for name, kind in KINDS.items():
            rows += conn.execute(
                f"""SELECT %(name)s, t.id::text, ts_rank_cd(t.search_vector, q.relaxed, 1)
                           + CASE WHEN t.search_vector @@ q.strict THEN 1.0 ELSE 0.0 END AS score
                    FROM {kind.table} t, (SELECT websearch_to_tsquery('english', %(q)s) AS strict,
                                                 websearch_to_tsquery('english', %(relaxed)s) AS relaxed) q
                    WHERE t.search_vector @@ q.relaxed ORDER BY score DESC LIMIT %(n)s""",
                {"name": name, "q": question, "relaxed": relaxed_text(question), "n": n}).fetchall()
    rows.sort(key=lambda row: -row[2])
    return [(kind, rid) for kind, rid, _ in rows[:n]]


QUESTIONS = ["why did the export worker run out of database connections", "redis eviction policy", "flaky tests",
             "connection pool", '"allkeys-lru" -staging', "how were the keys without a TTL evicted", "retry"]


@pytest.mark.parametrize("question", QUESTIONS)
def test_full_text_ranks_as_every_match_did_while_no_word_is_common(samples, question):
    from coditect_ctx.search import Searcher

    with Searcher(samples) as searcher:
        rankings, _ = searcher.engine_rankings(make_query(question, mode="text"))
    assert rankings.get("text", []) == _every_match_ranked(samples, question, 30)


def test_a_common_word_alone_makes_no_full_text_candidate(samples, monkeypatch):
    """With every word common (a threshold of 0 records), a candidate must hold two of the question's words, three
    when the question has TRIPLES_FROM (4) such words or more."""
    from coditect_ctx import search as search_mod
    from coditect_ctx.stores import Store

    question = "redis eviction policy for the export worker"
    words = search_mod.relaxed_text(question).split(" or ")
    everything = _every_match_ranked(samples, question, 1000)
    monkeypatch.setattr(search_mod, "COMMON_WORD_RECORDS", 0)
    with search_mod.Searcher(samples) as searcher:
        rankings, _ = searcher.engine_rankings(make_query(question, mode="text", limit=50))
    candidates = rankings["text"]
    with Store(samples) as store, store.pg() as conn:
        def held(kind: str, rid: str) -> int:
            table = {"session": "sessions", "checkpoint": "checkpoints", "pattern": "patterns", "message": "messages"}[kind]
            return conn.execute(f"SELECT count(*) FILTER (WHERE t.search_vector @@ websearch_to_tsquery('english', w)) "
                                f"FROM {table} t, unnest(%s::text[]) w WHERE t.id = %s", (words, rid)).fetchone()[0]

        alone = [key for key in everything if held(*key) == 1]
        assert alone, "the samples must hold records with one word of the question, or this test proves nothing"
        assert candidates and all(held(*key) >= 3 for key in candidates)  # 5 words: redis eviction policy export worker
        assert not set(alone) & set(candidates)
        monkeypatch.setattr(search_mod, "TRIPLES_FROM", 99)
        with search_mod.Searcher(samples) as searcher:
            pairs = searcher.engine_rankings(make_query(question, mode="text", limit=50))[0]["text"]
        assert all(held(*key) >= 2 for key in pairs) and set(candidates) <= set(pairs)
        assert any(held(*key) == 2 for key in pairs), "no record holds exactly two words: the rule is not tested"
    assert set(candidates) <= set(everything)


def test_words_the_statistics_call_common_are_common_as_counting_says(samples, monkeypatch):
    """A word ANALYZE's statistics put well above the threshold is taken as common without counting; the candidates
    are the ones counting every word gives (the samples are small: ANALYZE reads every row, so its figures are exact)."""
    from coditect_ctx import search as search_mod
    from coditect_ctx.stores import Store

    with Store(samples) as store, store.pg(autocommit=True) as conn:
        conn.execute("ANALYZE messages, sessions, checkpoints, patterns")
        known = conn.execute("SELECT count(*) FROM pg_stats WHERE attname = 'search_vector' "
                             "AND most_common_elems IS NOT NULL").fetchone()[0]
        question = "redis eviction policy for the export worker connection pool"
        sure = conn.execute(
            "SELECT count(*) FROM pg_stats s JOIN pg_class c ON c.oid = s.tablename::regclass, "
            "unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) e(lex, f) "
            "WHERE s.attname = 'search_vector' AND s.schemaname = current_schema() AND e.f * c.reltuples > 3 "
            "AND e.lex = ANY(tsvector_to_array(to_tsvector('english', %s)))", (question,)).fetchone()[0]
    assert known and sure, "no word of the question is common by the statistics: this test proves nothing"
    monkeypatch.setattr(search_mod, "COMMON_WORD_RECORDS", 1)
    with search_mod.Searcher(samples) as searcher:
        with_stats = searcher.engine_rankings(make_query(question, mode="text", limit=50))[0]["text"]
        monkeypatch.setattr(search_mod, "STATS_SURE", 10**9)  # never sure: every word counted
        counted = searcher.engine_rankings(make_query(question, mode="text", limit=50))[0]["text"]
    assert with_stats and with_stats == counted


# -- modes ---------------------------------------------------------------------------------------------------
def test_hybrid_finds_the_record_a_question_is_about(samples):
    result = run(samples, "what did we do when the database refused new connections")
    assert result.hits, "no results"
    assert result.hits[0].title == "Fix Cloud SQL connection pool exhaustion"
    assert result.mode == "hybrid"
    engines = set().union(*(h.scores for h in result.hits))
    assert {"text", "semantic"} <= engines


def test_text_mode_uses_only_postgres_rankings(samples):
    result = run(samples, "allkeys-lru", mode="text")
    assert "Redis cache eviction policy tuned" in titles(result)[:2]
    assert all(set(h.scores) <= {"text", "trigram"} for h in result.hits)
    assert "semantic" not in result.candidates


def test_semantic_mode_finds_meaning_without_shared_words(samples):
    query = "datastore purged items"
    assert run(samples, query, mode="text").hits == []  # none of these words is in the samples
    result = run(samples, query, mode="semantic")
    assert any("eviction" in t.lower() for t in titles(result)[:2]), titles(result)
    assert all(set(h.scores) == {"semantic"} for h in result.hits)


def test_typo_in_a_title_still_finds_it(samples):
    result = run(samples, "redsi evction polcy", mode="text")
    assert "Redis cache eviction policy tuned" in titles(result)[:2]
    assert "trigram" in result.hits[0].scores


def test_long_records_collapse_to_one_hit_each(samples):
    result = run(samples, "connection pool", limit=20)
    keys = [(h.type, h.id) for h in result.hits]
    assert len(keys) == len(set(keys))


def test_snippets_highlight_the_matched_words(samples):
    hit = run(samples, "volatile-lru", mode="text").hits[0]
    assert hit.highlights
    marked = [hit.snippet[a:b].lower() for a, b in hit.highlights]
    assert any("volatile" in m or "lru" in m for m in marked), (hit.snippet, marked)


# -- filters: applied inside each engine, before the limit ------------------------------------------------------
@pytest.mark.parametrize("mode", ["hybrid", "text", "semantic"])
def test_type_filter(samples, mode):
    result = run(samples, "redis eviction", type_="checkpoint", mode=mode)
    assert result.hits and {h.type for h in result.hits} == {"checkpoint"}


@pytest.mark.parametrize("mode", ["hybrid", "text", "semantic"])
def test_submodule_filter_applies_before_the_limit(samples, mode):
    # the best answers overall live in coditect-demo; with the filter, limit 1 must still give a demo-core record
    result = run(samples, "connection pool timeouts", submodule="demo-core", limit=1, mode=mode)
    assert len(result.hits) == 1
    assert result.hits[0].submodule == "demo-core"


@pytest.mark.parametrize("mode", ["hybrid", "text", "semantic"])
def test_tag_filter(samples, mode):
    from coditect_ctx.show import find_record

    result = run(samples, "connection failures", tags=["reliability"], mode=mode)
    assert result.hits
    for hit in result.hits:
        assert "reliability" in find_record(samples, hit.id)["tags"]
    assert {h.title for h in result.hits} <= {"Fix Cloud SQL connection pool exhaustion", "Retry policy for Chroma client"}


@pytest.mark.parametrize("mode", ["hybrid", "text", "semantic"])
def test_date_filters(samples, mode):
    result = run(samples, "connection pool exhaustion", since="2025-03-06", until="2025-03-07", mode=mode, limit=20)
    assert result.hits
    assert all("2025-03-06" <= (h.date or "")[:10] <= "2025-03-07" for h in result.hits)
    assert "Fix Cloud SQL connection pool exhaustion" not in titles(result)


@pytest.mark.parametrize("mode", ["hybrid", "text", "semantic"])
def test_privacy_filter(own, mode):
    result = run(own, "leaked password", privacy="private", mode=mode)
    assert result.hits
    assert {h.title for h in result.hits} <= {"Staging credentials rotated after a leak",
                                              "Rotate leaked credentials before anything else"}
    public = run(own, "leaked password", privacy="PUBLIC", mode=mode)
    assert "Staging credentials rotated after a leak" not in titles(public)


def test_pattern_type_is_searchable(own):
    result = run(own, "retry with jitter", type_="pattern")
    assert titles(result)[:1] == ["Exponential backoff with jitter for flaky network calls"]


# -- hostile input ---------------------------------------------------------------------------------------------
HOSTILE = [
    '"unterminated phrase', "\\", "\\\\'; DROP TABLE sessions; --", "' OR 1=1 --", "redis & !eviction | (pool",
    "<-> <2> :* !!! ()", "a:* & b:A", "-", "or", "%s %(q)s {0}", "日本語のテキスト検索", "Ünïcödé café",
    "🎉🎉", "x" * 3999, "pool " * 700, "\x00null byte", "\t\n  redis  \n",
]


@pytest.mark.parametrize("query", HOSTILE, ids=lambda q: repr(q[:20]))
def test_hostile_queries_answer_sanely(samples, cli, query):
    result = cli(samples, "search", query, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data["results"], list)
    with samples_store(samples) as conn:  # the store is intact
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] > 0


@pytest.mark.parametrize("query", ["", "   ", "x" * 10_000])
def test_empty_and_huge_queries_are_usage_errors(samples, cli, query):
    result = cli(samples, "search", query)
    assert result.exit_code == 2
    assert "Error:" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--type", "note"], ["--mode", "fuzzy"], ["--privacy", "SECRET"],
                                  ["--since", "yesterday-ish"], ["--limit", "0"],
                                  ["--since", "2025-03-08", "--until", "2025-03-01"]])
def test_bad_options_are_usage_errors(samples, cli, args):
    result = cli(samples, "search", "redis", *args, "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"] == "UsageError"


def samples_store(settings):
    from coditect_ctx.stores import Store

    return Store(settings).pg()


# -- the CLI -------------------------------------------------------------------------------------------------
def test_table_shows_rank_type_title_submodule_date_snippet_and_id(samples, cli):
    result = cli(samples, "search", "redis eviction policy", "--limit", "3")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for column in ("#", "type", "title", "submodule", "date", "snippet", "id"):
        assert column in out.splitlines()[0]
    assert "Redis cache eviction policy tuned" in out and "2025-03-05" in out and "coditect-demo" in out


def test_json_gives_every_engines_scores(samples, cli):
    result = cli(samples, "search", "redis eviction policy", "--json")
    assert result.exit_code == 0 and result.stderr == ""
    data = json.loads(result.stdout)
    top = data["results"][0]
    assert set(top) >= {"rank", "type", "id", "title", "submodule", "date", "snippet", "score", "scores"}
    assert {"text", "semantic"} <= set(top["scores"])
    assert all({"rank", "score"} <= set(v) for v in top["scores"].values())


def test_show_prints_the_whole_record(samples, cli):
    hit = run(samples, "redis eviction policy", type_="checkpoint").hits[0]
    table = cli(samples, "show", hit.id[:13])
    assert table.exit_code == 0, table.stderr
    assert "Redis cache eviction policy tuned" in table.stdout
    raw = cli(samples, "show", hit.id, "--json")
    record = json.loads(raw.stdout)
    assert record["id"] == hit.id and record["type"] == "checkpoint"
    assert "allkeys-lru" in record["content"]  # the full text, not a snippet
    assert "search_vector" not in record


@pytest.mark.parametrize("ref, code", [("not-an-id!", 2), ("00000000-0000-0000-0000-000000000000", 5), ("abc", 2)])
def test_show_explains_a_bad_id(samples, cli, ref, code):
    result = cli(samples, "show", ref)
    assert result.exit_code == code
    assert "Error:" in result.stderr


def test_no_match_says_so_quietly(samples, cli):
    result = cli(samples, "search", "zzqxv", "--mode", "text")
    assert result.exit_code == 0
    assert result.stdout == "" and "No records match" in result.stderr


# -- the cache ------------------------------------------------------------------------------------------------
def test_repeat_search_is_served_from_redis(samples):
    query = make_query("flaky integration job", limit=5)
    first = search(samples, query).result
    second = search(samples, query).result
    assert first.cache == "miss" and second.cache == "hit"
    assert [h.id for h in first.hits] == [h.id for h in second.hits]


def test_migrate_makes_cached_answers_stale(own, tmp_path):
    query = make_query("kubernetes ingress certificate renewal", type_="checkpoint", mode="text")
    before = search(own, query).result
    assert "Ingress certificate renewed before expiry" not in titles(before)
    assert search(own, query).result.cache == "hit"
    checkpoints = tmp_path / "new-source" / "MEMORY-CONTEXT" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "2025-04-01T10-00-00Z-Ingress-certificate-renewed-before-expiry.md").write_text(
        "# CODITECT Checkpoint: Ingress certificate renewed before expiry\n\n"
        "**Timestamp:** 2025-04-01T10:00:00Z\n**Sprint:** 9\n**Status:** completed\n\n"
        "## Executive Summary\n\nThe Kubernetes ingress TLS certificate was renewed a week before expiry; "
        "cert-manager now renews certificates automatically.\n"
    )
    report = _migrate(own, tmp_path / "new-source")
    after = search(own, query).result
    assert after.generation == report.data_generation > before.generation
    assert after.cache == "miss"
    assert titles(after)[0] == "Ingress certificate renewed before expiry"


def test_search_works_with_redis_down(fresh_stack, models_dir):
    embed.ensure_onnx(models_dir)
    _migrate(fresh_stack, DEMO)
    query = make_query("connection pool exhaustion", limit=5)
    with_cache = search(fresh_stack, query).result
    pid = int((fresh_stack.home / "run" / "redis.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    without = search(fresh_stack, query).result
    assert without.cache == "off"
    assert [h.id for h in without.hits] == [h.id for h in with_cache.hits]
    proc = subprocess.run([sys.executable, "-m", "coditect_ctx", "search", "connection pool exhaustion"],
                          env={**os.environ, **settings_env(fresh_stack)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Fix Cloud SQL connection pool exhaustion" in proc.stdout
    assert proc.stderr == ""  # nothing alarming: slower, not broken


# -- start-up cost: what a search imports ------------------------------------------------------------------
HEAVY = ("torch", "sentence_transformers", "chromadb", "transformers")


def _imported(settings, *args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "coditect_ctx", "search", *args],
                          env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_search_never_imports_heavy_libraries_and_text_mode_skips_the_model(samples):
    first = _imported(samples, "how were flaky tests fixed", "--limit", "4")
    assert not first & {*HEAVY, "typer"}, first & {*HEAVY, "typer"}
    assert "onnxruntime" in first  # a first hybrid search embeds the query
    text = _imported(samples, "how were flaky tests fixed", "--mode", "text")
    assert not text & {*HEAVY, "onnxruntime", "tokenizers", "numpy"}
    repeat = _imported(samples, "how were flaky tests fixed", "--limit", "4")
    assert not repeat & {*HEAVY, "onnxruntime", "tokenizers", "numpy", "rich", "redis", "pydantic", "typer", "click",
                          "psycopg"}  # a cache hit reads the data generation through pgwire.py


def test_the_small_postgres_client_reads_what_psycopg_reads_and_refuses_what_it_cannot_speak(samples):
    from coditect_ctx import pgwire
    from coditect_ctx.stores import Store

    with Store(samples) as store, store.pg(autocommit=True) as conn:
        url = store.pg_url
        assert pgwire.speaks(url)
        sql = "SELECT data_generation, NULL, 'é' FROM db_metadata"
        assert pgwire.query_one(url, sql, 5) == [str(v) if v is not None else None for v in conn.execute(sql).fetchone()]
    with pytest.raises(pgwire.PgWireError, match="division by zero"):
        pgwire.query_one(url, "SELECT 1/0", 5)
    with pytest.raises(pgwire.PgWireError, match="password authentication failed"):
        pgwire.query_one(url.replace(f":{quote(samples.pg_password, safe='')}@", ":wrong@"), "SELECT 1", 5)
    assert not pgwire.speaks(url + "?sslmode=verify-full") and not pgwire.speaks("postgresql://u@/db?host=/run")


def test_plain_command_lines_skip_typer_and_answer_the_same(samples, cli):
    from coditect_ctx.commands.search_fast import parse_fast

    parsed = parse_fast(["search", "redis", "--tag", "a", "--tag=b", "-n", "3", "--json"])  # all forms: test_search_fast_path
    assert parsed["query"] == "redis" and parsed["tag"] == ["a", "b"] and parsed["limit"] == 3 and parsed["json_out"]
    for unusual in (["search", "--help"], ["search", "a", "b"], ["search", "q", "--limit", "x"], ["health"],
                    ["search", "q", "--type"], ["search", "q", "--verbose"]):
        assert parse_fast(unusual) is None, unusual
    args = ["search", "connection pool", "--type", "checkpoint", "--since=2025-03-01", "--json"]
    proc = subprocess.run([sys.executable, "-m", "coditect_ctx", *args], env={**os.environ, **settings_env(samples)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # Typer's path with the cache off: a fresh answer, not the one the fast path just stored in Redis
    in_process = json.loads(cli(with_settings(samples, redis_server="none"), *args).stdout)
    assert in_process["cache"] == "off"
    fast = json.loads(proc.stdout)
    assert fast["results"] and [r["id"] for r in fast["results"]] == [r["id"] for r in in_process["results"]]
    helped = subprocess.run([sys.executable, "-m", "coditect_ctx", "search", "--help"], capture_output=True, text=True,
                            env={**os.environ, **settings_env(samples)}, timeout=60)
    assert helped.returncode == 0 and "--submodule" in helped.stdout


def test_make_query_normalises_filters():
    q = make_query("  Redis \x00 eviction ", tags=["Cache", "cache", " "], privacy="team", type_="session")
    assert q.text == "Redis eviction" and q.tags == ("cache",) and q.privacy == "TEAM" and q.types == ("session",)
    until = make_query("x", until="2025-03-07").until
    assert until.isoformat().startswith("2025-03-07T23:59:59")
    with pytest.raises(UsageError):
        make_query("x", since="not a date")
