"""`ctx search`: hybrid search over the store (PostgreSQL full text + trigram, Chroma vectors), cached in Redis.

How one query runs (mode `hybrid`):
1. One PostgreSQL round trip reads the data generation (pgwire.py's small client before any psycopg connection is
   open, so a cache hit never imports psycopg). The cache keys carry it and the model id, so a cached answer is
   never stale: a migrate or restore bumps the generation.
2. Cache hit (the rendered page, or the result) -> done. No model, no Chroma, no Rich.
3. Full text + trigram candidates in one SQL statement; the query vector (Redis-cached; onnxruntime only on a
   miss) -> Chroma candidates per type. Every filter is applied inside each engine (SQL WHERE, Chroma `where`)
   before its candidates are cut, never to the fused top N.
4. Weighted reciprocal rank fusion (fusion.py), then one SQL round trip fetches titles, dates and the text of the
   final page's records with their matches marked (ts_headline over a bounded slice); snippets.py cuts the snippet.

Heavy imports (psycopg, onnxruntime) happen inside functions; the redis package (0.15-0.3 s to import: it pulls
in asyncio and OpenTelemetry) is replaced on this path by a small RESP client behind the same Cache class.

Owns query validation, the engines' SQL and Chroma filters, fusion and the cache keys; each kind's table,
collection and title/date/body/tag expressions come from kinds.py.
"""

from __future__ import annotations

import re
import time
from array import array
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from .config import Settings
from .errors import ServiceError, UsageError
from .fusion import weighted_rrf
from .snippets import HEADLINE_OPTS, SNIPPET_CHARS, SOURCE_CHARS, snippet as make_snippet
from .kinds import COLLECTIONS, KINDS, NAMES, Kind
from .stores.cache import Cache, cache_key

TYPES = NAMES
MODES = ("hybrid", "semantic", "text")
PRIVACY_LEVELS = ("PUBLIC", "TEAM", "PRIVATE", "EPHEMERAL")
MAX_QUERY_CHARS = 4000
MAX_LIMIT = 200
MAX_QUERY_WORDS = 48

# Fusion, tuned on bench/eval_queries.json (51 questions, 64 answers, over the real corpus: 22,371 records,
# 29,652 vectors) with `bench/bench_search.py --tune`: grid k in {5,10,20,40,60,100} x semantic weight in
# {0.5..3} x trigram weight in {0..2}, text weight 1. Before tuning (k=60, trigram 0.3, semantic 1):
#   text 0.810 recall@10 / 0.701 MRR, semantic 0.716 / 0.571, hybrid 0.938 / 0.734.
# Chosen k=20, trigram 1.5, semantic 1: hybrid 0.938 / 0.787 (k=5 scores 0.928 / 0.797: same sum, less recall;
# trigram 2.0 ties 1.5). Tuning on one half of the questions and measuring on the other gave 0.900 / 0.711 and
# 0.955 / 0.851, so the gain is not an artefact of fitting; bench/eval_queries_holdout.json (56 questions over
# records the 51 do not touch, never tuned on) gives hybrid 1.000 / 0.893 with these settings, and 1.000 /
# 0.879-0.911 with each of the grid's best 8 (README "Searching"). Why the trigram list weighs this much: people
# name a piece of work the way its title does ("seaorm entitty for leeds"), and only trigrams survive the typos.
RRF_K = 20.0
WEIGHTS = {"text": 1.0, "trigram": 1.5, "semantic": 1.0}
# Each engine brings CANDIDATE_FACTOR x limit candidates (at least MIN_CANDIDATES); Chroma returns chunks, several
# per long record, so it is asked for CHUNK_FANOUT x as many and chunk hits collapse to their record's best chunk.
CANDIDATE_FACTOR = 3
MIN_CANDIDATES = 30
CHUNK_FANOUT = 3
TRIGRAM_THRESHOLD = 0.3
# Full text ranks a bounded set (see _text_sql): a word more records of a kind hold than COMMON_WORD_RECORDS is
# common there and makes a candidate only with another of the question's words; the candidates' cheap ts_rank
# keeps the best RANK_SHORTLIST (at least 3 x the engine's n) for ts_rank_cd. Chosen on the corpus at 22,371
# records: 100 / 150 gave hybrid 0.948 / 0.789 on eval_queries.json but lost one hold-out answer (0.982 / 0.887);
# 400 / 150 keeps both sets at or above ranking every match (tuned 0.938 / 0.798, hold-out 1.000 / 0.896).
# A question with TRIPLES_FROM common words or more needs three of them in a record: pairs of common words grow
# with the store (at 300,000 records the pairs made text p50 1.7x slower), triples far less; same quality.
COMMON_WORD_RECORDS = 400
RANK_SHORTLIST = 150
TRIPLES_FROM = 4
# Counting a word's records on the GIN index builds a bitmap of all of them (about 4 ms for a word 23,000 messages
# hold, at 300,000 records): a word ANALYZE's statistics (pg_stats.most_common_elems) put at more than STATS_SURE x
# COMMON_WORD_RECORDS records is common without counting; every other word is counted as before.
STATS_SURE = 3
# Part of every cache key: change it whenever ranking or output changes, so old cached pages are not served.
SEARCH_VERSION = "search-v4"

_WORD = re.compile(r"\w+", re.UNICODE)
_WEB_OPERATORS = re.compile(r'"|(^|\s)-\w|\s(or|OR)\s')


@dataclass(frozen=True)
class SearchQuery:
    """A validated query: what the user asked and every filter, normalised (it is part of the cache key)."""

    text: str
    types: tuple[str, ...] = TYPES
    submodule: str | None = None
    tags: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    privacy: str | None = None
    limit: int = 10
    mode: str = "hybrid"

    def cache_parts(self) -> list:
        return [self.text, list(self.types), self.submodule, list(self.tags),
                self.since.isoformat() if self.since else None, self.until.isoformat() if self.until else None,
                self.privacy, self.limit, self.mode]

    def filters(self) -> dict:
        return {"types": list(self.types), "submodule": self.submodule, "tags": list(self.tags),
                "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None, "privacy": self.privacy}


@dataclass
class Hit:
    rank: int
    type: str
    id: str
    title: str
    submodule: str | None
    date: str | None
    snippet: str
    highlights: list[list[int]]  # [start, end) character spans of snippet that matched the query
    score: float  # fused (RRF) score
    scores: dict[str, dict]  # per engine: {"rank": n, "score": raw engine score}


@dataclass
class SearchResult:
    query: str
    mode: str
    filters: dict
    limit: int
    generation: int
    hits: list[Hit]
    candidates: dict[str, int]  # candidates each engine brought before fusion
    cache: str = "miss"  # "miss", "hit" (result from Redis) or "off" (Redis disabled or down)
    seconds: float = 0.0
    degraded: list[str] = field(default_factory=list)  # engines that could not run ("semantic": Chroma down or hung)
    degraded_reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def as_output(self) -> dict:
        """What `ctx search --json` prints (and the MCP `search` tool returns): the hits under `results`."""
        data = self.as_dict()
        data["results"] = data.pop("hits")
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "SearchResult":
        return cls(**{**data, "hits": [Hit(**h) for h in data["hits"]]})


@dataclass
class SearchOutcome:
    """What a search hands the command: the result, and the rendered page when a renderer was given."""

    result: SearchResult | None
    page: str | None = None
    page_cached: bool = False
    timings: dict[str, float] = field(default_factory=dict)


class Renderer:
    """Turns a result into the text the command prints; `key` says what the text depends on (width, colour)."""

    key: str

    def __call__(self, result: SearchResult) -> str:  # pragma: no cover - interface
        raise NotImplementedError


# -- parsing the user's input -------------------------------------------------------------------------------
def parse_when(value: str | None, *, end_of_day: bool = False, flag: str = "--since") -> datetime | None:
    """A UTC instant from `2025-11-16`, `2025-11-16T09:30`, any ISO time with an offset, or `7d` / `12h` / `2w` ago.

    A bare date given to --until means the end of that day, so `--since D --until D` is the whole day.
    """
    if value is None or not value.strip():
        return None
    raw = value.strip()
    rel = re.fullmatch(r"(\d{1,5})\s*([hdw])", raw, re.IGNORECASE)
    if rel:
        hours = int(rel.group(1)) * {"h": 1, "d": 24, "w": 168}[rel.group(2).lower()]
        return (datetime.now(timezone.utc) - timedelta(hours=hours)).replace(microsecond=0)
    try:
        parsed = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise UsageError(f"{flag} {raw!r} is not a date",
                         hint="Use 2025-11-16, 2025-11-16T09:30, 2025-11-16T09:30:00+02:00, or 7d / 12h / 2w ago.")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    if end_of_day and re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        parsed += timedelta(days=1, microseconds=-1)
    return parsed.astimezone(timezone.utc)


def clean_text(text: str) -> str:
    """Text PostgreSQL and the tokenizer accept: no NUL, no lone surrogates, whitespace collapsed."""
    text = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", " ")
    return " ".join(text.split())


def make_query(
    text: str,
    *,
    type_: str | None = None,
    submodule: str | None = None,
    tags: Iterable[str] = (),
    since: str | None = None,
    until: str | None = None,
    privacy: str | None = None,
    limit: int = 10,
    mode: str = "hybrid",
) -> SearchQuery:
    """Validate what the user typed; every mistake is a UsageError with a hint."""
    cleaned = clean_text(text or "")
    if not cleaned:
        raise UsageError("The search query is empty", hint='Give some words to look for: ctx search "redis eviction"')
    if len(cleaned) > MAX_QUERY_CHARS:
        raise UsageError(f"The search query is {len(cleaned)} characters long (at most {MAX_QUERY_CHARS})",
                         hint="Search for a sentence or a few key phrases, not a whole document.")
    type_ = type_.strip().lower() if type_ else None
    mode = (mode or "").strip().lower()
    if type_ is not None and type_ not in TYPES:
        raise UsageError(f"Unknown --type {type_!r}", hint=f"Use one of: {', '.join(TYPES)}.")
    if mode not in MODES:
        raise UsageError(f"Unknown --mode {mode!r}", hint=f"Use one of: {', '.join(MODES)}.")
    level = privacy.strip().upper() if privacy else None
    if level is not None and level not in PRIVACY_LEVELS:
        raise UsageError(f"Unknown --privacy {privacy!r}", hint=f"Use one of: {', '.join(PRIVACY_LEVELS)}.")
    if not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"--limit {limit} is out of range", hint=f"Use 1 to {MAX_LIMIT}.")
    since_at = parse_when(since, flag="--since")
    until_at = parse_when(until, end_of_day=True, flag="--until")
    if since_at and until_at and since_at > until_at:
        raise UsageError("--since is after --until", hint="Swap them, or drop one.")
    tag_names = tuple(sorted({t.strip().lower() for t in tags if t and t.strip()}))
    return SearchQuery(
        text=cleaned, types=(type_,) if type_ else TYPES, submodule=(submodule or "").strip() or None,
        tags=tag_names, since=since_at, until=until_at, privacy=level, limit=limit, mode=mode,
    )


# -- SQL: every engine filters each kind the same way (its expressions are in kinds.py) ---------------------
def _where(kind: Kind, query: SearchQuery) -> str:
    conds = []
    if query.submodule:
        conds.append("t.submodule_id = (SELECT id FROM submodule_registry WHERE name = %(submodule)s)")
    if query.privacy:
        conds.append("t.privacy_level = %(privacy)s")
    if query.since:
        conds.append(f"{kind.date} >= %(since)s")
    if query.until:
        conds.append(f"{kind.date} <= %(until)s")
    for i in range(len(query.tags)):
        conds.append(kind.tag_filter.format(p=f"%(tag_{i})s"))
    return "".join(f" AND {c}" for c in conds)


def _params(query: SearchQuery) -> dict[str, Any]:
    params: dict[str, Any] = {"submodule": query.submodule, "privacy": query.privacy,
                              "since": query.since, "until": query.until}
    params.update({f"tag_{i}": tag for i, tag in enumerate(query.tags)})
    return params


def relaxed_text(text: str) -> str:
    """The websearch query full text runs: the user's own when it uses operators ("phrase", -word, or),
    else its words OR-ed, so a question matches records that hold most of its words, not only all of them
    (websearch_to_tsquery ANDs every word; a person's question rarely has all its words in one record)."""
    if _WEB_OPERATORS.search(text):
        return text
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))[:MAX_QUERY_WORDS]
    return " or ".join(w for w in words if w != "or")


def _text_sql(query: SearchQuery, n: int) -> list[tuple[str, str]]:
    """The PostgreSQL engines' statements, (engine, SQL) for "text" and "trigram": each gives (type, id, score) rows,
    at most `n` per asked type, every filter applied before the cut.

    Full text ranks a bounded candidate set, not every record holding one of the question's words: ts_rank_cd costs
    tens of microseconds a record (its cover search), and a common word ("new", "file", "commit") is held by
    thousands, more with every record added. A word more than COMMON_WORD_RECORDS records of a kind hold is common
    there (by ANALYZE's statistics when they put it far above, else counted on the GIN index, stopping at that
    number); a record is a candidate when it holds one of the question's rarer words, or two of its common ones
    (three when it has TRIPLES_FROM or more): a record holding a single common word and nothing else of the
    question rarely answers it. The candidates are shortlisted by ts_rank (a fifth of ts_rank_cd's cost) and
    the shortlist ranked as before. A question with one word, only rare words, or operators ("phrase", -word, or)
    has every match as a candidate.
    """
    text, trigram, common = [], [], []
    shortlist = max(RANK_SHORTLIST, 3 * n)
    for name in query.types:
        kind = KINDS[name]
        where = _where(kind, query)
        common.append(
            f"""s_{name} AS MATERIALIZED (
                  SELECT e.lex, e.f * greatest(c.reltuples, 0) AS n
                  FROM pg_stats s CROSS JOIN pg_class c
                       CROSS JOIN unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(lex, f)
                  WHERE s.schemaname = current_schema() AND s.tablename = '{kind.table}'
                        AND s.attname = 'search_vector' AND c.oid = '{kind.table}'::regclass AND e.lex IS NOT NULL),
                w_{name} AS MATERIALIZED (
                  SELECT w.tq,
                         CASE WHEN (SELECT max(n) FROM s_{name} WHERE lex = trim(both '''' from w.tq::text))
                                   > {STATS_SURE * COMMON_WORD_RECORDS} THEN true
                              ELSE (SELECT count(*) FROM (SELECT 1 FROM {kind.table} t WHERE t.search_vector @@ w.tq
                                                          LIMIT {COMMON_WORD_RECORDS + 1}) x) > {COMMON_WORD_RECORDS}
                         END AS common
                  FROM w),
                c_{name} AS MATERIALIZED (
                  SELECT coalesce(string_agg(part, ' | ')::tsquery, (SELECT relaxed FROM q)) AS candidates
                  FROM (SELECT '(' || w.tq::text || ')' AS part FROM w_{name} w WHERE NOT w.common
                        UNION ALL
                        SELECT '(' || a.tq::text || ') & (' || string_agg(b.tq::text, ' | ') || ')'
                        FROM w_{name} a JOIN w_{name} b ON a.common AND b.common AND a.tq < b.tq
                        WHERE (SELECT count(*) FROM w_{name} WHERE common) < {TRIPLES_FROM}
                        GROUP BY a.tq
                        UNION ALL
                        SELECT '(' || a.tq::text || ') & (' || b.tq::text || ') & (' || string_agg(c.tq::text, ' | ') || ')'
                        FROM w_{name} a JOIN w_{name} b ON a.common AND b.common AND a.tq < b.tq
                             JOIN w_{name} c ON c.common AND b.tq < c.tq
                        WHERE (SELECT count(*) FROM w_{name} WHERE common) >= {TRIPLES_FROM}
                        GROUP BY a.tq, b.tq) parts)""")
        # A record matching the user's exact websearch query (all words / the phrase) ranks above one that only
        # matches some words; among equals, ts_rank_cd (cover density, normalised by log length: flag 1). The
        # shortlist keeps those exact matches first, then the best by ts_rank.
        text.append(
            f"""(SELECT '{name}' AS type, r.id,
                        ts_rank_cd(r.search_vector, q.relaxed, 1) + CASE WHEN r.exact THEN 1.0 ELSE 0.0 END AS score
                 FROM (SELECT t.id, t.search_vector, t.search_vector @@ q.strict AS exact
                       FROM {kind.table} t {kind.joins} CROSS JOIN q CROSS JOIN c_{name} c
                       WHERE t.search_vector @@ c.candidates{where}
                       ORDER BY exact DESC, ts_rank(t.search_vector, q.relaxed, 1) DESC, t.id
                       LIMIT {shortlist}) r CROSS JOIN q
                 ORDER BY score DESC LIMIT {n})""")
        if kind.trigram and WEIGHTS.get("trigram", 0) > 0:
            trigram.append(
                f"""(SELECT '{name}' AS type, t.id, similarity({kind.title}, %(trgm)s) AS score
                     FROM {kind.table} t {kind.joins}
                     WHERE {kind.title} %% %(trgm)s{where}
                     ORDER BY score DESC LIMIT {n})""")
    statements = [("text", "WITH q AS (SELECT websearch_to_tsquery('english', %(q)s) AS strict, "
                           "websearch_to_tsquery('english', %(relaxed)s) AS relaxed),\n"
                           "w AS MATERIALIZED (SELECT DISTINCT tq FROM (SELECT websearch_to_tsquery('english', word) AS tq "
                           "FROM unnest(%(words)s::text[]) word) x WHERE numnode(tq) > 0),\n"
                           + ",\n".join(common) + "\n" + "\nUNION ALL\n".join(text))]
    if trigram:
        statements.append(("trigram", "\nUNION ALL\n".join(trigram)))
    return statements


def _words(text: str) -> list[str]:
    """The question's words whose commonness bounds the full-text candidates; none when the user wrote operators
    (then every match of their query is ranked)."""
    return [] if _WEB_OPERATORS.search(text) else relaxed_text(text).split(" or ")


def _hydrate_sql(types: Iterable[str]) -> str:
    parts = []
    for name in types:
        kind = KINDS[name]
        parts.append(
            f"""SELECT '{name}', t.id::text, {kind.title}, r.name, {kind.date},
                       ts_headline('english', left({kind.body}, {SOURCE_CHARS}), q.relaxed, %(hl)s)
                FROM {kind.table} t {kind.joins}
                LEFT JOIN submodule_registry r ON r.id = t.submodule_id CROSS JOIN q
                WHERE t.id = ANY(%({name}_ids)s::uuid[])""")
    return ("WITH q AS (SELECT websearch_to_tsquery('english', %(relaxed)s) AS relaxed)\n"
            + "\nUNION ALL\n".join(parts))


def _chroma_where(query: SearchQuery) -> dict | None:
    conds: list[dict] = []
    if query.submodule:
        conds.append({"submodule": query.submodule})
    if query.privacy:
        conds.append({"privacy_level": query.privacy})
    if query.since:
        conds.append({"ts": {"$gte": query.since.timestamp()}})
    if query.until:
        conds.append({"ts": {"$lte": query.until.timestamp()}})
    conds.extend({f"tag:{tag}": True} for tag in query.tags)
    if not conds:
        return None
    return conds[0] if len(conds) == 1 else {"$and": conds}


def _tuning() -> list:
    """Everything besides the query that decides an answer: part of the cache key."""
    return [WEIGHTS, RRF_K, CANDIDATE_FACTOR, MIN_CANDIDATES, CHUNK_FANOUT, TRIGRAM_THRESHOLD, COMMON_WORD_RECORDS,
            RANK_SHORTLIST, TRIPLES_FROM, STATS_SURE, HEADLINE_OPTS, SNIPPET_CHARS, SOURCE_CHARS]


# -- the job ---------------------------------------------------------------------------------------------
class Searcher:
    """Runs searches on one store, keeping its connections and the query model warm between calls
    (the CLI makes one search per process; the benchmark and long-lived callers make many)."""

    def __init__(self, settings: Settings, store=None):
        from .stores import Store

        self.settings = settings
        self.store = store or Store(settings)
        self._own_store = store is None
        self._conn = None
        self._cache: Cache | None = None
        self._chromas: dict[str, Any] = {}  # one Chroma client per collection: the collections are asked at once
        self._embedder = None

    # connections, opened on first use
    def conn(self):
        if self._conn is None or self._conn.closed:
            self._conn = self.store.pg(autocommit=True)
            self._conn.execute("SELECT set_config('pg_trgm.similarity_threshold', %s, false)", (str(TRIGRAM_THRESHOLD),))
        return self._conn

    def _generation(self, use_cache: bool) -> int:
        """The data generation the cache keys carry, read from PostgreSQL on every search (a migrate or restore bumps
        it there, so a cached answer is never stale). Before this Searcher has a psycopg connection, and when the
        answer may come from the cache, it is read by the small protocol client in pgwire.py: a cache hit then
        never imports psycopg. Whatever that client cannot do (TLS, an error) goes through psycopg."""
        if use_cache and self._conn is None and not self.settings.cache_disabled:
            from . import pgwire

            url = self.store.pg_url
            if pgwire.speaks(url):
                wait = self.settings.timeout + 2
                try:
                    row = pgwire.query_one(url, "SELECT data_generation FROM db_metadata", wait)
                except TimeoutError as exc:  # hung: psycopg would wait as long again before saying so
                    raise ServiceError(f"postgres: no answer within {wait:g} s", service="postgres",
                                       hint="Is it running? `ctx status` shows the services; `ctx setup` starts "
                                            "them.") from exc
                except (OSError, pgwire.PgWireError):
                    row = None  # psycopg answers, or says what is wrong in ctx's words
                if row is not None and row[0] is not None:
                    return int(row[0])
        return self.conn().execute("SELECT data_generation FROM db_metadata").fetchone()[0]

    def chroma(self, name: str):
        """The Chroma client that asks `name`'s collection. Its answers are bounded by CTX_TIMEOUT, not by
        CTX_CHROMA_READ_TIMEOUT (sized for bulk writes): Chroma answers a search query in milliseconds, so one that
        takes seconds is hung, and a hybrid search answers from PostgreSQL alone rather than wait for it."""
        client = self._chromas.get(name)
        if client is None:
            client = self._chromas[name] = self.store.open_chroma(read_timeout=self.settings.timeout)
        return client

    @property
    def cache(self) -> Cache:
        if self._cache is None:
            url = None if self.settings.cache_disabled else self.store.endpoints.redis_url
            self._cache = Cache(url)
        return self._cache

    def reset(self) -> None:
        """Drop the PostgreSQL connection and the Chroma client (a service restarted); the model stays loaded."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
        for client in self._chromas.values():
            client.close()
        self._chromas.clear()

    def close(self) -> None:
        self.reset()
        if self._cache is not None:
            self._cache.close()
        if self._own_store:
            self.store.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # the search itself
    def search(self, query: SearchQuery, render: Renderer | None = None, use_cache: bool = True) -> SearchOutcome:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        generation = self._generation(use_cache)
        timings["generation"] = time.perf_counter() - started
        cache = self.cache if use_cache else Cache(None)
        from .embed import MODEL_ID

        result_key = cache_key(SEARCH_VERSION, MODEL_ID, generation, query.cache_parts(), _tuning())
        page_key = cache_key(result_key, render.key) if render is not None else None
        if page_key is not None:
            page = cache.get_bytes(page_key)
            if page is not None:
                timings["total"] = time.perf_counter() - started
                return SearchOutcome(None, page.decode("utf-8"), page_cached=True, timings=timings)
        cached = cache.get_json(result_key)
        if cached is not None:
            result = SearchResult.from_dict(cached)
            result.cache = "hit"
        else:
            result = self._run(query, generation, cache, timings)
            result.cache = "miss" if cache.enabled else "off"
            if not result.degraded:  # a partial answer is never served again once the engine is back
                cache.set_json(result_key, result.as_dict())
        result.seconds = round(time.perf_counter() - started, 4)
        page = None
        if render is not None:
            t0 = time.perf_counter()
            page = render(result)
            timings["render"] = time.perf_counter() - t0
            if not result.degraded:
                cache.set_bytes(page_key, page.encode("utf-8"))
        timings["total"] = time.perf_counter() - started
        return SearchOutcome(result, page, timings=timings)

    def engine_rankings(self, query: SearchQuery, cache: Cache | None = None, timings: dict | None = None,
                        degraded: dict[str, str] | None = None,
                        ) -> tuple[dict[str, list[tuple[str, str]]], dict[str, dict[tuple[str, str], float]]]:
        """Each engine's best-first candidates as (type, id) keys, and their raw scores (before fusion).

        The semantic branch (the query vector, then one Chroma query per collection, all at once) runs in a thread
        while PostgreSQL ranks the full text and the titles. Each Chroma answer is bounded by CTX_TIMEOUT: with Chroma
        down or hung, a hybrid search goes on without the semantic ranking and says why in `degraded`
        ({"semantic": reason}); a semantic-only search cannot, and raises ServiceError suggesting --mode text.
        Public for the benchmark, which tunes the fusion on these lists without re-running the engines.
        """
        cache = cache if cache is not None else Cache(None)
        timings = timings if timings is not None else {}
        n = max(MIN_CANDIDATES, CANDIDATE_FACTOR * query.limit)
        rankings: dict[str, list[tuple[str, str]]] = {}
        raw: dict[str, dict[tuple[str, str], float]] = {}
        semantic = None
        if query.mode in ("hybrid", "semantic"):
            semantic = _Background(self._semantic, query, cache, n, timings)
        if query.mode in ("hybrid", "text"):
            params = {**_params(query), "q": query.text, "relaxed": relaxed_text(query.text), "words": _words(query.text),
                      "trgm": query.text[:200]}
            for engine, sql in _text_sql(query, n):
                t0 = time.perf_counter()
                rows = self.conn().execute(sql, params).fetchall()
                timings[engine] = time.perf_counter() - t0
                if rows:
                    rows.sort(key=lambda row: -row[2])  # stable: equal scores keep the kinds' order
                    rankings[engine] = [(type_, str(rid)) for type_, rid, _ in rows[:n]]
                    raw[engine] = {(type_, str(rid)): float(score) for type_, rid, score in rows[:n]}
        if semantic is not None:
            t0 = time.perf_counter()
            try:
                found = semantic.result()
            except ServiceError as exc:
                if query.mode == "semantic":
                    raise ServiceError(f"semantic search needs Chroma: {exc.message}", service="chroma",
                                       hint="`ctx search --mode text` answers from PostgreSQL alone (full text + "
                                            "trigram); `ctx health` shows Chroma's state, `ctx setup` starts it.") from exc
                if degraded is None:
                    raise
                degraded["semantic"] = exc.message
            else:
                rankings["semantic"] = [key for key, _ in found]
                raw["semantic"] = dict(found)
            timings["semantic_wait"] = time.perf_counter() - t0
        return rankings, raw

    def _run(self, query: SearchQuery, generation: int, cache: Cache, timings: dict) -> SearchResult:
        degraded: dict[str, str] = {}
        rankings, raw = self.engine_rankings(query, cache, timings, degraded)
        relaxed = relaxed_text(query.text)
        t0 = time.perf_counter()
        fused = weighted_rrf(rankings, WEIGHTS, RRF_K)[: query.limit]
        timings["fusion"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        details = self._hydrate([f.key for f in fused], relaxed)
        timings["hydrate"] = time.perf_counter() - t0
        hits = []
        for f in fused:
            row = details.get(f.key)
            if row is None:  # a vector whose row is gone (deleted since): not an answer
                continue
            title, submodule, date, headline = row
            snippet, spans = make_snippet(headline, title)
            scores = {e: {"rank": r, "score": round(raw[e][f.key], 6)} for e, r in f.ranks.items()}
            hits.append(Hit(len(hits) + 1, f.key[0], f.key[1], _one_line(title), submodule,
                            date.isoformat() if date else None, snippet, spans, round(f.score, 6), scores))
        return SearchResult(query.text, query.mode, query.filters(), query.limit, generation, hits,
                            {e: len(r) for e, r in rankings.items()}, degraded=sorted(degraded),
                            degraded_reason="; ".join(degraded.values()) or None)

    def _query_vector(self, text: str, cache: Cache) -> list[float]:
        from .embed import MODEL_ID, QueryEmbedder

        key = cache_key("query-vector", MODEL_ID, text)
        blob = cache.get_bytes(key)
        if blob is not None:
            return array("f", blob).tolist()
        if self._embedder is None:
            self._embedder = QueryEmbedder(self.settings.models_path)
        vector = self._embedder.embed(text)
        cache.set_bytes(key, array("f", vector).tobytes(), ttl=7 * 86400)
        return vector

    def _semantic(self, query: SearchQuery, cache: Cache, n: int, timings: dict) -> list[tuple[tuple[str, str], float]]:
        """The semantic branch: the query vector, then Chroma's nearest chunks of every asked type (one request per
        collection, all at once), collapsed to records (best chunk), as (key, cosine similarity) best first."""
        t0 = time.perf_counter()
        vector = self._query_vector(query.text, cache)
        timings["embed"] = time.perf_counter() - t0
        where = _chroma_where(query)
        t0 = time.perf_counter()
        if len(query.types) == 1:
            answers = [self._nearest(query.types[0], vector, n, where, timings)]
        else:
            calls = [_Background(self._nearest, name, vector, n, where, timings) for name in query.types]
            answers = []
            errors = []
            for call in calls:  # every call is joined (its client is reused), then the first error is raised
                try:
                    answers.append(call.result())
                except BaseException as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
        timings["chroma"] = time.perf_counter() - t0
        best: dict[tuple[str, str], float] = {}
        for found in answers:
            for key, similarity in found:
                if similarity > best.get(key, -2.0):
                    best[key] = similarity
        return sorted(best.items(), key=lambda kv: -kv[1])[:n]

    def _nearest(self, name: str, vector: list[float], n: int, where: dict | None,
                 timings: dict) -> list[tuple[tuple[str, str], float]]:
        """One collection's nearest chunks as ((type, record id), cosine similarity); none when it does not exist."""
        from .stores.chroma import ChromaHTTPError, record_id_of

        t0 = time.perf_counter()
        try:
            answer = self.chroma(name).query(COLLECTIONS[name], vector, n_results=n * CHUNK_FANOUT, where=where,
                                             include=("distances",))
        except ChromaHTTPError as exc:
            if exc.status in (400, 404):  # collection not created yet: nothing to find there
                return []
            raise
        finally:
            timings[f"chroma:{name}"] = time.perf_counter() - t0
        return [((name, record_id_of(vid)), 1.0 - float(distance))
                for vid, distance in zip((answer.get("ids") or [[]])[0], (answer.get("distances") or [[]])[0])]

    def _hydrate(self, keys: list[tuple[str, str]], relaxed: str) -> dict[tuple[str, str], tuple]:
        if not keys:
            return {}
        types = [t for t in TYPES if any(k[0] == t for k in keys)]
        params: dict[str, Any] = {"relaxed": relaxed, "hl": HEADLINE_OPTS}
        for t in types:
            params[f"{t}_ids"] = [k[1] for k in keys if k[0] == t]
        rows = self.conn().execute(_hydrate_sql(types), params).fetchall()
        return {(t, rid): (title, sub, date, headline) for t, rid, title, sub, date, headline in rows}


class _Background:
    """Run one call in a thread; `result()` joins it and re-raises its exception."""

    def __init__(self, fn: Callable, *args: Any):
        import threading

        self._value: Any = None
        self._error: BaseException | None = None

        def target() -> None:
            try:
                self._value = fn(*args)
            except BaseException as exc:  # handed to the caller in result()
                self._error = exc

        self._thread = threading.Thread(target=target, name=f"ctx-{getattr(fn, '__name__', 'call')}", daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _one_line(text: str | None, width: int = 200) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def search(settings: Settings, query: SearchQuery, render: Renderer | None = None,
           use_cache: bool = True) -> SearchOutcome:
    """One search on the configured store (the CLI's job function)."""
    with Searcher(settings) as searcher:
        return searcher.search(query, render=render, use_cache=use_cache)
