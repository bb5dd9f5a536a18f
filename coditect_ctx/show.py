"""`ctx show ID`: one record in full, found by the id `ctx search` printed (or a unique prefix of it).

Owns finding a record by id across the kinds' tables and rendering it as Markdown; each kind's table, tags and
date column come from kinds.py.
"""

from __future__ import annotations

import re
from typing import Any

from .config import Settings
from .errors import DataError, UsageError
from .kinds import KINDS

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PREFIX = re.compile(r"^[0-9a-f-]{6,36}$")
MAX_MATCHES = 5


def _sql(kind: str, condition: str) -> str:
    return (f"SELECT '{kind}', to_jsonb(t) - 'search_vector', r.name, {KINDS[kind].tags} "
            f"FROM {KINDS[kind].table} t LEFT JOIN submodule_registry r ON r.id = t.submodule_id WHERE {condition}")


def find_record(settings: Settings, ref: str) -> dict[str, Any]:
    """The record whose id is `ref` (or starts with it, at least 6 characters), every column but the tsvector.

    Adds `type`, `submodule`, `tags`, and for a message its session's title. UsageError when `ref` is not an id
    or matches several records; DataError when nothing has it.
    """
    from .stores import Store

    wanted = (ref or "").strip().lower()
    if not _PREFIX.match(wanted):
        raise UsageError(f"{ref!r} is not a record id",
                         hint="Pass the id from the last column of `ctx search` (the whole id or its first 8 characters).")
    exact = bool(_UUID.match(wanted))
    condition = "t.id = %(id)s::uuid" if exact else "t.id::text LIKE %(prefix)s"
    sql = "\nUNION ALL\n".join(_sql(kind, condition) for kind in KINDS) + f" LIMIT {MAX_MATCHES + 1}"
    with Store(settings) as store, store.pg(autocommit=True) as conn:
        rows = conn.execute(sql, {"id": wanted, "prefix": wanted + "%"}).fetchall()
        if len(rows) == 1 and rows[0][0] == "message" and rows[0][1].get("session_id"):
            session_title = conn.execute("SELECT title FROM sessions WHERE id = %s",
                                         (rows[0][1]["session_id"],)).fetchone()
        else:
            session_title = None
    if not rows:
        raise DataError(f"No record has the id {ref!r}", hint="Ids change when a store is rebuilt; search again.")
    if len(rows) > 1:
        listed = ", ".join(f"{kind} {data['id']}" for kind, data, _, _ in rows[:MAX_MATCHES])
        raise UsageError(f"{ref!r} matches several records: {listed}", hint="Give more characters of the id.")
    kind, data, submodule, tags = rows[0]
    record = {"type": kind, "id": data.pop("id"), "title": _title(kind, data, session_title),
              "submodule": submodule, "tags": list(tags or []), **data}
    if session_title:
        record["session_title"] = session_title[0]
    return record


def _title(kind: str, data: dict, session_title) -> str:
    if kind == "pattern":
        return data.get("name") or "(unnamed pattern)"
    if kind == "message":
        who = data.get("role", "message")
        return f"{who} message" + (f" in {session_title[0]}" if session_title else "")
    return data.get("title") or "(untitled)"


def to_markdown(record: dict[str, Any]) -> str:
    """The record as one Markdown document: a heading, a line of facts, then its text as written."""
    kind = record["type"]
    facts = [kind, f"id `{record['id']}`"]
    for label, value in (("submodule", record.get("submodule")), ("date", record.get(KINDS[kind].date_column)),
                         ("privacy", record.get("privacy_level")), ("status", record.get("status")),
                         ("sprint", record.get("sprint")), ("branch", record.get("git_branch")),
                         ("commit", record.get("git_commit")), ("role", record.get("role")),
                         ("source", record.get("source_path"))):
        if value:
            facts.append(f"{label} `{value}`" if label in ("source", "commit", "branch") else f"{label} {value}")
    if record.get("tags"):
        facts.append("tags " + ", ".join(record["tags"]))
    parts = [f"# {record['title']}", " · ".join(facts)]
    lead = record.get("summary") or record.get("description")
    body = record.get("content") or ""
    if lead and lead.strip() not in body:
        parts.append(lead)
    if body:
        parts.append(body)
    return "\n\n".join(parts) + "\n"
