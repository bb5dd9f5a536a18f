"""`ctx context TASK`: the pack of memory a new coding session needs for TASK, within a token budget.

How a pack is made:
1. One hybrid search for TASK (search.py: same filters, same cache) brings the candidates, best first.
2. Each candidate is read in full with its piece of work: a checkpoint, the sessions that name it and their
   transcripts' messages are one piece of work (a session without a checkpoint is its own; a pattern is its own).
3. The pack fills, best first and one item per piece of work: the relevant checkpoints, sessions and patterns
   (summary, then the sections that hold decisions and open items), then the messages that carry the answer
   (a message whose text the pack already holds is skipped), then the most recent checkpoints of the same
   submodule (`v_recent_checkpoints`), one line each. No record appears twice.
4. Tokens are counted with the embedding model's own tokenizer (embed.count_tokens), the budget is never exceeded.
5. The pack is recorded in context_loads (one row per record, sharing pack_id; task and client beside them):
   `ctx status` shows loads per day (stores/postgres.py), and v_patterns_by_usage counts the packs that loaded a pattern.

A reader: it never takes the store's writer lock (the load rows are one small insert).
Owns the pack's selection, budget and rendering; the kinds' SQL expressions come from kinds.py.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime

from .config import Settings
from .errors import SchemaError, UsageError
from .kinds import KINDS
from .search import Searcher, make_query

DEFAULT_BUDGET = 4000
MIN_BUDGET, MAX_BUDGET = 200, 100_000
CANDIDATES = 30  # search hits a pack is chosen from
RECENT = 5  # most recent checkpoints of the submodule listed at the end
MAX_CLIENT_CHARS = 100
# Shares of the budget: one relevant record takes at most WORK_SHARE of it, one message MESSAGE_SHARE; relevant
# work stops at RELEVANT_SHARE, leaving room for the messages and the recent activity (what is unused flows on).
WORK_SHARE, MESSAGE_SHARE, RELEVANT_SHARE = 0.3, 0.15, 0.6
RECENT_ITEM_TOKENS = 120  # a recent checkpoint: its title, facts and the head of its summary
MIN_ITEM_TOKENS = 40  # an item cut shorter than this says nothing: it is left out
SECTIONS = {"relevant": "Relevant work", "answer": "Messages that carry the answer", "recent": "Recent activity"}
# The sections of a checkpoint or session that say what was decided and what is left, kept after its summary.
_KEEP_HEADING = re.compile(r"decision|open|next|todo|to do|follow|blocker|issue|problem|root cause|lesson|learn|"
                           r"risk|remaining|pending|fix|solution|outcome|result|summary", re.IGNORECASE)
_HEADING = re.compile(r"^#{1,6}\s+(.*)$", re.MULTILINE)


@dataclass
class PackItem:
    section: str  # relevant, answer or recent
    type: str
    id: str
    title: str
    date: str | None
    submodule: str | None
    source: str | None  # the file it was migrated from (redacted like all content)
    work: str  # the piece of work it belongs to (checkpoint, session or its own id)
    score: float | None
    tokens: int
    text: str  # the Markdown block as it appears in the pack


@dataclass
class Pack:
    task: str
    budget: int
    tokens: int
    items: list[PackItem]
    client: str | None
    candidates: int = 0  # search hits the pack was chosen from
    load_id: str | None = None
    submodule: str | None = None
    degraded: list[str] = field(default_factory=list)
    degraded_reason: str | None = None
    markdown: str = ""

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("markdown")
        return data


def _fetch_sql(name: str) -> str:
    kind = KINDS[name]
    work = {"checkpoint": "t.id", "session": "coalesce(t.checkpoint_id, t.id)", "pattern": "t.id",
            "message": "coalesce(s.checkpoint_id, t.checkpoint_id, t.session_id, t.id)"}[name]
    return (f"SELECT '{name}', t.id::text, {kind.title}, {kind.summary}, t.content, {kind.date}, r.name, "
            f"t.source_path, ({work})::text FROM {kind.table} t {kind.joins} "
            f"LEFT JOIN submodule_registry r ON r.id = t.submodule_id WHERE t.id = ANY(%({name}_ids)s::uuid[])")


_RECENT_SQL = """SELECT v.id::text, v.title, v.submodule, v.checkpoint_at, c.summary, c.source_path
FROM v_recent_checkpoints v JOIN checkpoints c ON c.id = v.id
WHERE v.submodule = %(submodule)s AND (%(since)s::timestamptz IS NULL OR v.checkpoint_at >= %(since)s)
ORDER BY v.checkpoint_at DESC NULLS LAST LIMIT %(n)s"""


def validate_budget(budget: int) -> int:
    if not MIN_BUDGET <= budget <= MAX_BUDGET:
        raise UsageError(f"--budget {budget} is out of range",
                         hint=f"Give {MIN_BUDGET} to {MAX_BUDGET} tokens (default {DEFAULT_BUDGET}).")
    return budget


def _client(name: str | None) -> str | None:
    name = " ".join((name or "").split())
    if len(name) > MAX_CLIENT_CHARS:
        raise UsageError(f"--client is {len(name)} characters long (at most {MAX_CLIENT_CHARS})",
                         hint="Name the agent or tool asking, e.g. --client claude-code.")
    return name or None


def _key_sections(content: str) -> str:
    """The content's sections whose heading speaks of decisions, open items, fixes or results; else its head."""
    heads = list(_HEADING.finditer(content))
    if not heads:
        return content
    kept = []
    for i, head in enumerate(heads):
        if _KEEP_HEADING.search(head.group(1)) and not re.search(r"executive summary", head.group(1), re.I):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(content)
            body = content[head.end():end].strip().strip("-").strip()
            if body:
                kept.append(f"{head.group(1).strip()}:\n{body}")
    return "\n\n".join(kept) if kept else content[: heads[0].start()].strip() or content


def _facts(kind: str, rid: str, date, submodule, source) -> str:
    facts = [f"{kind} `{rid}`", (date.date().isoformat() if isinstance(date, datetime) else "no date")]
    facts.append(f"submodule {submodule}" if submodule else "no submodule")
    if source:
        facts.append(f"source `{source}`")
    return " · ".join(facts)


class _Budget:
    def __init__(self, total: int, count):
        self.total, self.used, self.count = total, 0, count

    @property
    def left(self) -> int:
        return self.total - self.used

    def fit(self, head: str, body: str, cap: int, min_body: int = MIN_ITEM_TOKENS) -> tuple[str, int] | None:
        """head + as much of body as fits in min(cap, what is left) tokens, or None when that says too little."""
        from .embed import head_tokens

        room = min(cap, self.left)
        head_cost = self.count(head)
        if head_cost > room or (body and room - head_cost < min_body):
            return None
        cut = head_tokens(body, room - head_cost) if body else ""
        if cut and cut != body:
            cut = cut.rstrip() + " …"
        text = f"{head}\n\n{cut}" if cut else head
        cost = self.count(text)
        while cost > room and cut:  # a word cut mid-way may re-tokenise longer: shave until it fits
            cut = head_tokens(cut, max(0, self.count(cut) - (cost - room) - 2))
            text = f"{head}\n\n{cut} …" if cut else head
            cost = self.count(text)
        if cost > room:
            return None
        self.used += cost
        return text, cost


def build_pack(settings: Settings, task: str, *, budget: int = DEFAULT_BUDGET, submodule: str | None = None,
               since: str | None = None, client: str | None = None, record: bool = True,
               searcher: Searcher | None = None) -> Pack:
    """The context pack for `task` (validated like a search); recorded in context_loads unless record=False.

    A long-lived caller (the MCP server) passes its warm Searcher; otherwise one is opened and closed here.
    """
    from .embed import count_tokens

    validate_budget(budget)
    client = _client(client)
    query = make_query(task, submodule=submodule, since=since, limit=CANDIDATES)
    own = searcher is None
    searcher = searcher or Searcher(settings)
    try:
        result = searcher.search(query).result
        conn = searcher.conn()
        rows: dict[tuple[str, str], tuple] = {}
        by_kind: dict[str, list[str]] = {}
        for hit in result.hits:
            by_kind.setdefault(hit.type, []).append(hit.id)
        for name, ids in by_kind.items():
            for row in conn.execute(_fetch_sql(name), {f"{name}_ids": ids}):
                rows[(row[0], row[1])] = row[2:]
        header = f"# Context for: {query.text}"
        tokens = _Budget(budget, count_tokens)
        tokens.used = count_tokens(header)
        items: list[PackItem] = []
        works: set[str] = set()
        relevant_stop = int(budget * RELEVANT_SHARE)

        def add(section: str, kind: str, rid: str, title, summary, content, date, sub, source, work, score,
                cap: int) -> None:
            head = f"### {' '.join((title or '(untitled)').split())}\n{_facts(kind, rid, date, sub, source)}"
            if not any(i.section == section for i in items):
                head = f"## {SECTIONS[section]}\n\n{head}"
            if kind == "message":
                body = (content or "").strip()
            else:
                lead = (summary or "").strip()
                rest = _key_sections(content or "").strip()
                body = "\n\n".join(p for p in (lead, rest if rest not in lead else "") if p)
            fitted = tokens.fit(head, body, cap)
            if fitted is None:
                return
            text, cost = fitted
            items.append(PackItem(section, kind, rid, " ".join((title or "").split()),
                                  date.isoformat() if isinstance(date, datetime) else None, sub, source, work,
                                  score, cost, text))
            works.add(work)

        hits = [(h, rows[(h.type, h.id)]) for h in result.hits if (h.type, h.id) in rows]
        for hit, (title, summary, content, date, sub, source, work) in hits:
            if hit.type == "message" or work in works or tokens.used >= relevant_stop:
                continue
            room = relevant_stop - tokens.used  # the best record may take all of it; the others a share each
            add("relevant", hit.type, hit.id, title, summary, content, date, sub, source, work, hit.score,
                room if not items else min(int(budget * WORK_SHARE), room))
        packed_text = "\n".join(i.text for i in items)
        recent_reserve = min(300, max(120, budget // 8))
        for hit, (title, summary, content, date, sub, source, work) in hits:
            if hit.type != "message" or tokens.left <= recent_reserve:
                continue
            body = " ".join((content or "").split())
            if not body or body[:200] in " ".join(packed_text.split()):
                continue
            add("answer", "message", hit.id, title, summary, content, date, sub, source, work, hit.score,
                min(int(budget * MESSAGE_SHARE), tokens.left - recent_reserve))
        the_submodule = query.submodule or next((row[4] for _, row in hits if row[4]), None)
        if the_submodule:
            recent = conn.execute(_RECENT_SQL, {"submodule": the_submodule, "since": query.since,
                                                "n": RECENT + len(works)}).fetchall()
            shown = 0
            for rid, title, sub, date, summary, source in recent:
                if rid in works or shown >= RECENT:
                    continue
                head = f"### {' '.join((title or '(untitled)').split())}\n{_facts('checkpoint', rid, date, sub, source)}"
                if not any(i.section == "recent" for i in items):
                    head = f"## {SECTIONS['recent']} in {the_submodule}\n\n{head}"
                fitted = tokens.fit(head, " ".join((summary or "").split()), min(tokens.left, RECENT_ITEM_TOKENS), min_body=0)
                if fitted is None:
                    break
                text, cost = fitted
                items.append(PackItem("recent", "checkpoint", rid, " ".join((title or "").split()),
                                      date.isoformat() if date else None, sub, source, rid, None, cost, text))
                works.add(rid)
                shown += 1
        markdown = "\n\n".join([header, *(i.text for i in items)]) + "\n"
        pack = Pack(query.text, budget, count_tokens(markdown), items, client, len(hits), submodule=the_submodule,
                    degraded=list(result.degraded), degraded_reason=result.degraded_reason, markdown=markdown)
        if record and items:
            pack.load_id = _record(conn, pack)
        return pack
    finally:
        if own:
            searcher.close()


def _record(conn, pack: Pack) -> str:
    """One context_loads row per record of the pack, sharing its pack_id; returns that id."""
    import psycopg

    from .ingest.redact import redact

    load_id = str(uuid.uuid4())
    task, client = redact(pack.task)[0], redact(pack.client or "")[0] or None  # the store keeps redacted text only
    rows = [(load_id, i.type, i.id, i.tokens, i.score, task, client,
             psycopg.types.json.Jsonb({"section": i.section, "work": i.work})) for i in pack.items]
    try:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO context_loads (pack_id, record_type, record_id, token_count, relevance, "
                            "task, client, metadata) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)
    except psycopg.errors.UndefinedColumn as exc:
        raise SchemaError("The store's schema is older than this ctx (context_loads has no pack_id)",
                          hint="Run `ctx setup`: it applies the newer schema files and keeps the data.") from exc
    return load_id

