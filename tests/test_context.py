"""`ctx context`: packs on a real store (the demo samples + a legacy database with patterns), through the real
CLI (a `ctx` subprocess) and the library."""

from __future__ import annotations

import json
import re

import pytest

from coditect_ctx import embed
from coditect_ctx.context import build_pack
from coditect_ctx.embed import count_tokens

from .conftest import _short_tmp, _start, make_settings
from .conftest import run_ctx as ctx
from .test_search import DEMO, _legacy_db, _migrate


@pytest.fixture(scope="module")
def store(models_dir):
    """A store of this module's own: packs write context_loads rows, which the shared store must not get."""
    from coditect_ctx import stack as stack_job

    embed.ensure_onnx(models_dir)
    settings = make_settings(_short_tmp("ctx-pack-"))
    _start(settings, models_dir)
    _migrate(settings, DEMO, _legacy_db(_short_tmp("ctx-pack-src-") / "legacy-tools"))
    yield settings
    stack_job.down(settings, volumes=True)


def loads(settings, load_id: str) -> list[tuple]:
    from coditect_ctx.stores import Store

    with Store(settings) as s, s.pg(autocommit=True) as conn:
        return conn.execute("SELECT record_type, record_id::text, token_count, task, client FROM context_loads "
                            "WHERE pack_id = %s ORDER BY loaded_at", (load_id,)).fetchall()


def test_json_pack_puts_the_piece_of_work_first_within_budget_and_is_recorded(store):
    proc = ctx(store, "context", "why did search results vanish from the redis cache", "--budget", "1000",
               "--client", "test-agent", "--json")
    assert proc.returncode == 0, proc.stderr
    pack = json.loads(proc.stdout)
    assert 0 < pack["tokens"] <= 1000 and pack["budget"] == 1000
    items = pack["items"]
    assert items[0]["section"] == "relevant" and "Redis cache eviction" in items[0]["title"]
    assert "allkeys-lru" in items[0]["text"]  # its summary: what was decided
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids)), "a record twice"
    relevant_works = [i["work"] for i in items if i["section"] != "answer"]
    assert len(relevant_works) == len(set(relevant_works)), "a piece of work twice"
    for item in items:
        assert item["id"] and item["type"] and item["submodule"] and item["date"], item
        assert item["id"] in item["text"]  # the agent can `ctx show` it
    assert sum(i["tokens"] for i in items) <= pack["tokens"]
    rows = loads(store, pack["load_id"])
    assert [(r[0], r[1]) for r in rows] == [(i["type"], i["id"]) for i in items]
    assert all(r[3] == pack["task"] and r[4] == "test-agent" for r in rows)
    shown = ctx(store, "show", items[0]["id"], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == items[0]["id"]


def test_markdown_pack_fits_the_budget_counted_by_the_model_tokenizer(store):
    packs = {}
    for budget in (300, 700, 3000):
        proc = ctx(store, "context", "continue the cloud sql connection pool work", "--budget", str(budget))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("# Context for: continue the cloud sql connection pool work")
        assert "## Relevant work\n\n### Fix Cloud SQL connection pool exhaustion" in proc.stdout
        assert count_tokens(proc.stdout) <= budget
        packs[budget] = proc.stdout
    # past the relevant work, the submodule's latest checkpoints, one line each and none already in the pack
    assert "## Recent activity in" in packs[700], packs[700]
    ids = re.findall(r"^(?:checkpoint|session) `([0-9a-f-]+)`", packs[3000], re.MULTILINE)
    assert len(ids) == len(set(ids)) >= 4, packs[3000]


def test_status_shows_loads_per_day_and_pattern_usage_counts_packs(store):
    from coditect_ctx.stores import Store

    def usage() -> int:
        with Store(store) as s, s.pg(autocommit=True) as conn:
            return conn.execute("SELECT usage_count FROM v_patterns_by_usage WHERE name LIKE 'Exponential backoff%'"
                                ).fetchone()[0]

    before = usage()
    pack = build_pack(store, "retry flaky network calls with exponential backoff and jitter", budget=1500,
                      client="lib")
    assert any(i.type == "pattern" and i.title.startswith("Exponential backoff") for i in pack.items)
    assert usage() == before + 1
    dry = build_pack(store, "retry flaky network calls with exponential backoff and jitter", record=False)
    assert dry.load_id is None and usage() == before + 1
    status = json.loads(ctx(store, "status", "--json").stdout)
    today = status["context_loads"][0]
    assert today["packs"] >= 1 and today["records"] >= len(pack.items)
    text = ctx(store, "status").stdout
    assert "context packs loaded" in text


@pytest.mark.parametrize("args, message", [
    (["--budget", "50"], "--budget 50 is out of range"),
    (["--since", "yesterday-ish"], "is not a date"),
    (["--client", "x" * 101], "--client is 101 characters long"),
])
def test_bad_options_are_one_line_usage_errors(store, args, message):
    proc = ctx(store, "context", "redis", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_a_secret_in_the_task_is_not_stored(store):
    password = "Zq9" + "pass-Winter-42"
    pack = build_pack(store, f"redis eviction, the staging password={password}", budget=500, client="lib")
    rows = loads(store, pack.load_id)
    assert rows and all(password not in r[3] for r in rows)
