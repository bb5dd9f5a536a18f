"""Search snippets as a person reads them: the sentence that matched, once, without Markdown scaffolding, at most
SNIPPET_CHARS long, with highlight spans on the matched words.

Two halves: the real search over real stores (the demo samples, whose checkpoints repeat their summary in their body,
and a crafted source with every kind of scaffolding), and the pure snippet function on tricky marked text.
"""

from __future__ import annotations

import random
import re
import textwrap
from pathlib import Path

import pytest

from coditect_ctx import embed
from coditect_ctx.search import make_query, search
from coditect_ctx.snippets import MARK_START as S, MARK_STOP as E, SNIPPET_CHARS, snippet

from .conftest import SAMPLES, _short_tmp

DEMO = SAMPLES / "coditect-demo"

# What a snippet must never show: Markdown / export scaffolding.
SCAFFOLDING = [
    re.compile(r"(^|\s)#{1,6}\s"),  # headings
    re.compile(r"---|\*\*\*|___"),  # horizontal rules
    re.compile(r"\|"),  # table pipes
    re.compile(r"```|~~~"),  # code fences
    re.compile(r"\*\*|`"),  # inline markup
    re.compile(r"(^|… )[-*+•>⏺]\s"),  # list bullets, quote and transcript markers at a sentence's start
    re.compile(r"\[[ xX]\]"),  # checkboxes
    re.compile(r"\b(Timestamp|Checkpoint|Sprint|Status|Framework|Repository|Participants|Objectives|Tags|"
               r"Export Time|Key Metrics|title|date|tags):"),  # 'Key: value' metadata and front-matter keys
    re.compile(r"Session Export|Session Metadata|CODITECT Checkpoint|END OF CHECKPOINT|Exported by"),
]

CRAFTED = """\
# CODITECT Checkpoint: Quota service rollout for the Zanzibar tenants

**Timestamp:** 2025-04-02T10-00-00Z
**Sprint:** Sprint 9 - Zanzibar quotas
**Status:** ✅ CHECKPOINT CAPTURED

---

## Executive Summary

The Zanzibar tenants now get a per-minute request quota enforced at the gateway, so one noisy tenant can no longer starve the others. The old nightly cleanup job was retired.

---

## Session Metadata

- **Objectives:** Quota service rollout for the Zanzibar tenants
- **Tags:** zanzibar, quota, gateway

| tenant | zanzibar quota |
|---|---|
| acme | 600 |

```
zanzibar_quota = 600  # per minute
```

### Decisions

- Quotas live in the gateway, not in each service, because the Zanzibar tenants call six services.

---

## Executive Summary

The Zanzibar tenants now get a per-minute request quota enforced at the gateway, so one noisy tenant can no longer starve the others. The old nightly cleanup job was retired.

**END OF CHECKPOINT**
"""


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+| … ", text.replace("…", " … "))
    return [" ".join(re.findall(r"\w+", p.lower())) for p in parts if re.search(r"\w", p)]


def assert_readable(hit, words: tuple[str, ...] = ()) -> None:
    """What a user sees in the snippet column: bounded, no scaffolding, no sentence twice, matched words marked."""
    text = hit.snippet
    assert 0 < len(text) <= SNIPPET_CHARS, (hit.type, hit.id, hit.title, text)
    for pattern in SCAFFOLDING:
        assert not pattern.search(text), (pattern.pattern, text)
    sentences = _sentences(text)
    assert len(sentences) == len(set(sentences)), f"a sentence shown twice: {text!r}"
    assert S not in text and E not in text
    for a, b in hit.highlights:
        assert 0 <= a < b <= len(text), (hit.highlights, text)
        word = text[a:b]
        # a span covers whole words: no letter right before or after it
        assert not (a > 0 and text[a - 1].isalnum()) and not (b < len(text) and text[b].isalnum()), (word, text)
    if words:
        marked = " ".join(text[a:b].lower() for a, b in hit.highlights)
        assert any(w in marked for w in words), (words, marked, text)


@pytest.fixture(scope="module")
def samples(stack, models_dir):
    from coditect_ctx.migrate import run_migrate

    embed.ensure_onnx(models_dir)
    run_migrate(stack, [DEMO])
    crafted = _short_tmp("ctx-snip-src-") / "crafted"
    folder = crafted / "MEMORY-CONTEXT" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "2025-04-02T10-00-00Z-Quota-service-rollout-for-the-Zanzibar-tenants.md").write_text(CRAFTED)
    report = run_migrate(stack, [crafted])
    assert report.not_embedded == 0, report.as_dict()
    return stack


def _hit(settings, text: str, title: str, **options):
    result = search(settings, make_query(text, **options), use_cache=False).result
    hits = [h for h in result.hits if h.title == title]
    assert hits, [h.title for h in result.hits]
    return hits[0]


def test_a_checkpoint_whose_summary_repeats_in_its_body_shows_the_sentence_once(samples):
    hit = _hit(samples, "volatile-lru", "Redis cache eviction policy tuned", mode="text", type_="checkpoint")
    assert_readable(hit, ("volatile", "lru"))
    assert hit.snippet.lower().count("volatile-lru only evicted") == 1, hit.snippet


@pytest.mark.parametrize("query, words", [
    ("zanzibar quota", ("zanzibar", "quota")),
    ("noisy tenant starving the others", ("noisy", "tenant", "starv")),
    ("why do quotas live in the gateway", ("gateway", "quota")),
])
def test_crafted_checkpoint_snippet_is_the_matched_sentence_without_scaffolding(samples, query, words):
    hit = _hit(samples, query, "Quota service rollout for the Zanzibar tenants")
    assert_readable(hit, words)


def test_a_match_in_the_decisions_shows_that_sentence(samples):
    hit = _hit(samples, "six services", "Quota service rollout for the Zanzibar tenants", mode="text")
    assert_readable(hit, ("six", "servic"))
    assert "call six services" in hit.snippet, hit.snippet


@pytest.mark.parametrize("query", ["connection pool", "what did we do when the database refused new connections",
                                   "keys vanished from the cache", "session tags migration", "staging deploy time", "redis"])
def test_every_hit_of_the_sample_searches_reads_cleanly(samples, query):
    result = search(samples, make_query(query, limit=20), use_cache=False).result
    assert result.hits
    for hit in result.hits:
        assert_readable(hit)
    assert any(h.highlights for h in result.hits)


# -- the pure function ---------------------------------------------------------------------------------------
def mark(text: str, *words: str) -> str:
    for w in words:
        text = re.sub(rf"\b({re.escape(w)})\b", f"{S}\\1{E}", text)
    return text


def plain_marked(text: str, spans) -> list[str]:
    return [text[a:b] for a, b in spans]


def test_duplicated_summary_counts_once():
    body = mark("Pool exhausted by the worker. More text here.\n\n## Summary\n\nPool exhausted by the worker.", "Pool")
    text, spans = snippet(body)
    assert text.count("Pool exhausted by the worker") == 1, text
    assert plain_marked(text, spans) == ["Pool"]


def test_scaffolding_is_dropped_and_the_prose_sentence_is_chosen():
    body = mark(textwrap.dedent("""\
        ---
        title: Redis tuning
        tags: [redis]
        ---
        # Session Export: Redis tuning
        **Timestamp:** 2025-03-05T09:30:00Z
        - **Objectives:** Redis tuning
        | key | redis |
        |-----|-------|
        ```
        redis-cli CONFIG SET maxmemory-policy allkeys-lru
        ```
        ***
        We moved redis to allkeys-lru after keys vanished.
        """), "redis")
    text, spans = snippet(body, "Redis tuning")
    assert text == "We moved redis to allkeys-lru after keys vanished.", text
    assert plain_marked(text, spans) == ["redis"]


def test_list_bullets_quotes_and_transcript_markers_are_stripped_but_their_text_kept():
    body = mark("- the retry loop never backed off\n> why did the retry storm happen\n⏺ The retry budget was spent.",
                "retry")
    text, spans = snippet(body)
    assert not re.search(r"(^|\s)[-*>⏺]\s", text), text
    assert "retry" in text and all(w == "retry" for w in plain_marked(text, spans))


def test_metadata_line_with_a_prose_value_keeps_the_value_and_its_marks():
    body = mark("**Root cause:** the export worker opened a new connection for every single message", "export")
    text, spans = snippet(body)
    assert text == "the export worker opened a new connection for every single message", text
    assert plain_marked(text, spans) == ["export"]


def test_a_highlight_inside_a_dropped_label_leaves_no_stray_marker():
    body = f"**{S}Export{E} Time:** 2025-11-16\n\n**{S}Export{E} note:** the {S}export{E} runs in the background now"
    text, spans = snippet(body)
    assert S not in text and E not in text
    assert text == "the export runs in the background now", text
    assert plain_marked(text, spans) == ["export"]


def test_the_sentence_with_most_distinct_query_words_wins_and_the_title_is_not_repeated():
    body = mark("Cache eviction tuned. The cache lost keys. Eviction of cache keys without TTL stopped.",
                "cache", "eviction", "Cache", "Eviction")
    text, _ = snippet(body, "Cache eviction tuned")
    assert text.startswith("Eviction of cache keys without TTL stopped."), text
    assert "Cache eviction tuned" not in text


def test_a_match_deep_in_a_long_sentence_is_windowed_and_its_span_covers_the_word():
    words = " ".join(f"word{i}" for i in range(120))
    text, spans = snippet(f"{words} {S}needle{E} and {words}.")
    assert len(text) <= SNIPPET_CHARS
    assert text.startswith("…") and text.endswith("…"), text
    assert plain_marked(text, spans) == ["needle"]


def test_no_match_shows_the_first_readable_sentences_without_spans():
    body = "# Title\n\n**Status:** done\n\nThe first real sentence. The second one."
    assert snippet(body, "Title") == ("The first real sentence. … The second one.", [])
    assert snippet(None) == ("", [])
    assert snippet("") == ("", [])


def test_random_marked_text_always_gives_a_bounded_clean_snippet():
    rng = random.Random(14)
    pieces = ["# Heading", "---", "| a | b |", "|---|---|", "```", "- item", "> quote", "**Key:** v", "Key: value",
              "plain words", "Sentence one. Sentence two!", "x" * 300, "", "\n", "⏺ turn", "1. step", "[link](http://x)"]
    for _ in range(400):
        parts = [rng.choice(pieces) for _ in range(rng.randint(0, 30))]
        body = "\n".join(parts)
        body = re.sub(r"\b(words|item|Sentence|v|value|step|link|turn)\b", lambda m: f"{S}{m.group(1)}{E}"
                      if rng.random() < 0.5 else m.group(1), body)
        text, spans = snippet(body, rng.choice([None, "Heading", "plain words"]))
        assert len(text) <= SNIPPET_CHARS
        assert S not in text and E not in text
        for a, b in spans:
            assert 0 <= a < b <= len(text)
            assert text[a:b] in {"words", "item", "Sentence", "v", "value", "step", "link", "turn"}, (text, a, b)


def test_text_that_is_all_scaffolding_still_shows_something():
    assert snippet('Search(pattern: "SessionLocal\\(", path: "app")')[0] == 'Search(pattern: "SessionLocal\\(", path: "app")'
    assert snippet("## Only a heading")[0] == "Only a heading"
    assert snippet("| a | b |\n|---|---|", "x")[0] == "a, b"
    assert snippet("Redis tuning", "Redis tuning")[0] == "Redis tuning"


def test_transcript_tool_output_carries_no_markdown_into_the_snippet():
    body = mark(textwrap.dedent("""\
        Wrote 190 lines to PLAN.md     # Brain Migration - Project Plan
             ## Overview
        ⎿  ## Brain usage
          4 5 + ## Brain router
        | # | Brain area | Status |
        | 1 | brain core | done, and this row was wrapped by the terminal
        (See checkpoint: MEMORY-CONTEXT/checkpoints/brain.md)
        Migrate every project to the shared brain architecture.
        """), "brain", "Brain")
    text, spans = snippet(body)
    assert text == "Migrate every project to the shared brain architecture.", text
    assert plain_marked(text, spans) == ["brain"]


def test_a_wrapped_table_row_is_data_shown_without_pipes_only_when_nothing_else_matched():
    text, spans = snippet(f"| 1 | {S}quota{E} core | done, and this row\n| wrapped on |")
    assert "|" not in text and "quota" in text, text
    assert plain_marked(text, spans) == ["quota"]


def test_a_match_beyond_many_title_repeats_is_found():
    # the title's words fill more lines than are read at first (Session: TITLE, Objectives: TITLE, ...)
    repeats = "\n\n".join(["Redis cache eviction policy tuned"] * 8)
    body = mark(f"{repeats}\n\nWe changed the eviction policy after the cache lost keys.", "Redis", "cache", "eviction")
    text, spans = snippet(body, "Redis cache eviction policy tuned")
    assert text == "We changed the eviction policy after the cache lost keys.", text
