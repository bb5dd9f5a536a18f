"""Search snippets: the sentence of a record that matched the query, once, as a person reads it.

PostgreSQL marks the matches (`ts_headline` with HighlightAll, so its own parser and stemmer decide what matched)
in a bounded slice of the record's text, SOURCE_CHARS; this module turns that marked text into the snippet:
- Markdown and transcript scaffolding is not text to show: headings (they repeat the title), horizontal rules, table
  separators, front matter, code fences, lines all in italics (footers) and 'Key: value' metadata lines are dropped; list bullets, quote and
  transcript markers (`>`, `⏺`, `⎿`), table pipes and inline markup (`**`, backticks, links) are stripped.
- What is left is cut into sentences; the one holding the most distinct query words is shown (a second one after
  " … " when it adds words and room is left). A sentence is shown once: text repeated in a record (a checkpoint's
  summary is also its body's first section) counts once, and a sentence that only repeats the title is the last resort.
- At most SNIPPET_CHARS characters, cut at spaces around the first match, with [start, end) spans of the matches.
A record with no match in the slice (found by meaning or by its title) shows its first sentences, unhighlighted.

Pure functions over strings: no I/O, no imports from the rest of ctx.
"""

from __future__ import annotations

import re
import unicodedata

MARK_START, MARK_STOP = "\ue000", "\ue001"
SNIPPET_CHARS = 200
# ts_headline reads this much of a record (title, summary, then the body): the matched sentence of nearly every
# record is in it, and the final page's SQL stays cheap on long transcripts.
SOURCE_CHARS = 6000
HEADLINE_OPTS = f'StartSel="{MARK_START}", StopSel="{MARK_STOP}", HighlightAll=true'
ELLIPSIS = "…"
JOINER = " … "

_FENCE = re.compile(r"^\s*(```|~~~)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_INLINE_HEADING = re.compile(r"[ \t]{2,}(?=#{1,6} )")  # "Wrote 9 lines to a.md     # Title": a transcript joined them
_HEADING = re.compile(r"^\s{0,3}#{1,6}(\s|$)")
_SETEXT_OR_RULE = re.compile(r"^\s*([-*_=─━═])(\s*\1){2,}\s*$")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_EMPHASISED_LINE = re.compile(r"^\s*([*_])[^*_\s].*[^*_\s]\1\s*$")  # a whole line in italics: a caption or footer
_TABLE_ROW = re.compile(r"^\|.*\|")  # a row, possibly wrapped: starts with a pipe and has another
# list bullets, numbers and checkboxes, quote and transcript markers, a numbered diff line's "12 + " (tool output)
_LEAD = re.compile(r"^\s*(?:(?:[>⏺●⎿✻∴│└├]|[-*+•]\s|\d{1,3}[.)]\s|\d{1,5}(?: \d{1,5})? [-+]\s|\[[ xX]\]\s)\s*)+")
_BOLD_KEY = re.compile(r"^\*\*([^*\n]{1,40}?)(?::\*\*|\*\*\s*:)\s*(.*)$")
_PLAIN_KEY = re.compile(r"^([A-Za-z][\w /&.-]{0,30}):\s+(.*)$")
_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\s]*\)")
_INLINE = re.compile(r"\*\*|__|`+|<br\s*/?>|(?<![\w*])\*(?=[^\s*])|(?<=[^\s*])\*(?![\w*])")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[\ue000]?[A-Z0-9])")
_WORDS = re.compile(r"\w+")
_MARKED = re.compile(f"{MARK_START}([^{MARK_STOP}]*){MARK_STOP}")
BEST_LINES = 4  # lines with the most distinct matches whose sentences are read
BATCHES = 3  # at most BATCHES x BEST_LINES lines are looked at for a match that is not the title again
WINDOW = 2  # lines read before and after each of them (a sentence wrapped over several lines)
_LEAD_CHARS = " \t>⏺●⎿✻∴│└├-+•0123456789.)" + MARK_START + MARK_STOP
_KEY_REACH = 45  # a 'Key:' label ends within this many characters of a line's start
_PROSE_WORDS = 6  # a 'Key: value' line whose value has this many words keeps the value (it is prose, not metadata)


def _key(text: str) -> str:
    """What makes two sentences the same sentence: their words, lower case, markers and markup ignored."""
    return " ".join(_WORDS.findall(text.replace(MARK_START, "").replace(MARK_STOP, "").lower()))


def _strip_lead_symbols(text: str) -> str:
    """Drop status emoji and other symbols a line starts with (✅, 🎯, ⚠): decoration, not text."""
    i = 0
    while i < len(text) and (unicodedata.category(text[i]) in ("So", "Sk", "Mn", "Cf") or text[i] in " \ufe0f"):
        if text[i] in (MARK_START, MARK_STOP):
            break
        i += 1
    return text[i:]


def _line_text(line: str) -> tuple[str | None, str]:
    """One source line -> (its readable text, or None to drop it; how it joins: "start" a unit that later plain
    lines continue, "alone" / "row" a unit of its own (a table row is data), "more" continues the unit)."""
    head = line.lstrip()[:1]
    if (head.isalpha() or head == MARK_START) and ":" not in line[:_KEY_REACH]:  # plain prose: most lines
        return line.strip(), "more"
    if _SETEXT_OR_RULE.match(line) or _TABLE_SEPARATOR.match(line):
        return None, "alone"
    stripped = _LEAD.sub("", line)
    how = "start" if stripped != line.lstrip() else "more"
    stripped = _strip_lead_symbols(stripped).strip()
    plain = _unmarked(stripped)
    # after a bullet, quote or tool-output marker: the Markdown it carries ("⎿ ## Usage", "> | a | b |")
    if (_HEADING.match(plain) or _SETEXT_OR_RULE.match(plain) or _TABLE_SEPARATOR.match(plain)
            or _EMPHASISED_LINE.match(plain)):
        return None, "alone"
    if _TABLE_ROW.match(plain):
        cells = [c.strip() for c in stripped.split("|")]
        return ", ".join(c for c in cells if c), "row"
    inner = plain[1:-1] if plain[:1] == "(" and plain[-1:] == ")" else plain  # "(See checkpoint: path)"
    key = _BOLD_KEY.match(inner) or _PLAIN_KEY.match(inner)
    if key:
        value = key.group(2)
        if sum(1 for w in value.split() if any(c.isalpha() for c in w)) < _PROSE_WORDS:
            return None, "alone"
        # keep the value with its marks: drop as many leading characters of the marked line as the label takes
        return _drop_prefix(stripped, len(inner) - len(value) + (inner is not plain)), "start"
    return stripped, how


def _unmarked(text: str) -> str:
    return text.replace(MARK_START, "").replace(MARK_STOP, "")


def _drop_prefix(marked: str, plain_chars: int) -> str:
    """`marked` without its first `plain_chars` unmarked characters (markers inside the prefix go with it)."""
    i = seen = 0
    while i < len(marked) and seen < plain_chars:
        if marked[i] not in (MARK_START, MARK_STOP):
            seen += 1
        i += 1
    rest = marked[i:]
    # a highlight opened inside the label and closed in the value must not leave a dangling stop marker
    if rest.find(MARK_STOP) != -1 and (rest.find(MARK_START) == -1 or rest.find(MARK_STOP) < rest.find(MARK_START)):
        rest = rest.replace(MARK_STOP, "", 1)
    return rest.lstrip()


def _units(paragraph: str, in_code: bool) -> tuple[list[tuple[str, bool]], bool]:
    """A paragraph's readable units, (text, is data): prose lines joined; a list item, quote or transcript turn starts
    a unit its wrapped lines continue; a table row or a line of code is a unit of its own, and data, not prose."""
    units: list[tuple[str, bool]] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            units.append((" ".join(current), False))
            current.clear()

    for line in paragraph.split("\n"):
        if _FENCE.match(line):
            in_code = not in_code
            flush()
            continue
        text, how = _line_text(line)
        if in_code or how in ("alone", "row") or text is None:
            flush()
            if text:
                units.append((text, in_code or how == "row"))
        elif how == "start":
            flush()
            current.append(text)
        elif text:
            current.append(text)
    flush()
    return units, in_code


def _clean(unit: str) -> str:
    unit = _LINK.sub(r"\1", unit)
    unit = _INLINE.sub("", unit)
    return " ".join(unit.split())


def _sentences(marked: str, marked_only: bool, title_key: str = "") -> list[tuple[str, bool]]:
    """Readable sentences of the marked text, (sentence, is data), in order, scaffolding dropped, each at most once.

    marked_only: only around the lines with the most distinct matches (BEST_LINES of them, WINDOW lines before and
    after, within their paragraph; the next BEST_LINES while every match found only repeats the title, up to
    BATCHES times): the cost of a snippet stays bounded however long the text and however common the words.
    Else the first sentences, about enough to fill a snippet."""
    text = _INLINE_HEADING.sub("\n", _drop_front_matter(marked.replace("\r\n", "\n")))
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines) if _FENCE.match(line)] if ("```" in text or "~~~" in text) else []
    out: list[tuple[str, bool]] = []
    seen: set[str] = set()
    if not marked_only:
        _read(lines, [[0, len(lines)]], fences, seen, out, 2 * SNIPPET_CHARS)
        return out
    ranked = [i for *_, i in sorted((_looks_like_scaffolding(line), -len({m.lower() for m in _MARKED.findall(line)}),
                                     i) for i, line in enumerate(lines) if MARK_START in line)]
    for start in range(0, min(len(ranked), BATCHES * BEST_LINES), BEST_LINES):
        windows: list[list[int]] = []
        for i in sorted(ranked[start:start + BEST_LINES]):
            lo = i
            while lo > 0 and i - lo < WINDOW and lines[lo - 1].strip():
                lo -= 1
            hi = i + 1
            while hi < len(lines) and hi - i <= WINDOW and lines[hi].strip():
                hi += 1
            if windows and lo <= windows[-1][1]:
                windows[-1][1] = max(windows[-1][1], hi)
            else:
                windows.append([lo, hi])
        _read(lines, windows, fences, seen, out, None)
        if any(MARK_START in s and not (title_key and _contains(title_key, _key(s))) for s, _ in out):
            break
    return out


def _read(lines: list[str], windows: list[list[int]], fences: list[int], seen: set[str],
          out: list[tuple[str, bool]], enough: int | None) -> None:
    """Append the new sentences of the given [lo, hi) line windows to `out` (until `enough` characters, if given)."""
    size = 0
    for lo, hi in windows:
        in_code = sum(1 for f in fences if f < lo) % 2 == 1
        for paragraph in _PARAGRAPH.split("\n".join(lines[lo:hi])):
            units, in_code = _units(paragraph, in_code)
            for unit, data in units:
                for sentence in _SENTENCE_END.split(_clean(unit)):
                    key = _key(sentence)
                    if key and key not in seen:
                        seen.add(key)
                        out.append((sentence, data))
                        size += len(sentence)
            if enough is not None and size > enough:
                return


def _looks_like_scaffolding(line: str) -> bool:
    """A cheap first look (the full rules are in _line_text): a heading, table row or bold label, after markers."""
    head = line.lstrip(_LEAD_CHARS)
    return head[:1] in ("#", "|", "(") or (head[:2] == "**" and ":" in head[:_KEY_REACH])


def _drop_front_matter(text: str) -> str:
    if not text.startswith("---\n"):
        return text
    end = text.find("\n---", 4)
    if end == -1 or end > 4000:
        return text
    block = text[4:end].strip("\n").split("\n")
    if all(not line.strip() or re.match(r"^\s*[\w.-]+\s*:", line) or line.startswith((" ", "-")) for line in block):
        return text[end + 4:].lstrip("\n-")
    return text


def _terms(sentence: str) -> set[str]:
    return {m.lower() for m in _MARKED.findall(sentence)}


def _contains(a: str, b: str) -> bool:
    """Is sentence key b within key a (as whole words)?"""
    return f" {b} " in f" {a} "


def choose(marked: str, title: str | None = None) -> list[str]:
    """The sentences to show, best first: marked ones (prose before tables and code, then by distinct matched words),
    else the first readable prose."""
    title_key = _key(title or "")
    sentences = _sentences(marked, MARK_START in marked, title_key)
    candidates = [(i, s, data) for i, (s, data) in enumerate(sentences) if MARK_START in s]
    if not candidates and MARK_START in marked:  # every match was in scaffolding: show the record's first sentences
        sentences = _sentences(marked, False)
    if candidates:
        def rank(item):
            i, s, data = item
            repeats_title = bool(title_key) and _contains(title_key, _key(s))
            return (repeats_title, data, -len(_terms(s)), -s.count(MARK_START), i)

        ordered = sorted(candidates, key=rank)
        best = ordered[0][1]
        chosen = [best]
        room = SNIPPET_CHARS - _plain_len(best) - len(JOINER)
        best_key, best_terms = _key(best), _terms(best)
        for _, s, _data in ordered[1:]:
            k = _key(s)
            if (_plain_len(s) <= room and _terms(s) - best_terms and not _contains(best_key, k)
                    and not _contains(k, best_key) and not (title_key and _contains(title_key, k))):
                chosen.append(s)
                break
        return chosen
    chosen: list[str] = []
    used = 0
    for s, data in sorted(sentences, key=lambda sd: sd[1]):
        if title_key and _contains(title_key, _key(s)):
            continue
        if chosen and used + len(JOINER) + len(s) > SNIPPET_CHARS:
            break
        chosen.append(s)
        used += len(s) + (len(JOINER) if len(chosen) > 1 else 0)
    if not chosen and sentences:  # only the title again: better than nothing
        chosen = [sentences[0][0]]
    if not chosen:  # every line is scaffolding (a bare tool call, a table): the text as it is, markup dropped
        flat = _clean(marked.replace("#", " "))
        chosen = [flat] if flat else []
    return chosen


def _plain_len(s: str) -> int:
    return len(s) - s.count(MARK_START) - s.count(MARK_STOP)


def _unmark(marked: str) -> tuple[str, list[list[int]]]:
    out: list[str] = []
    spans: list[list[int]] = []
    pos = 0
    start = None
    for ch in marked:
        if ch == MARK_START:
            start = pos
        elif ch == MARK_STOP:
            if start is not None and pos > start:
                spans.append([start, pos])
            start = None
        else:
            out.append(ch)
            pos += 1
    return "".join(out), spans


def _window(text: str, spans: list[list[int]], limit: int) -> tuple[str, list[list[int]]]:
    """At most `limit` characters of text, cut at spaces, starting a little before the first match."""
    if len(text) <= limit:
        return text, spans
    start = 0
    if spans and spans[0][1] > limit - 1 - len(ELLIPSIS):
        start = max(0, spans[0][0] - 40)
        space = text.rfind(" ", 0, start + 1)
        start = space + 1 if space != -1 else 0
    head = ELLIPSIS if start > 0 else ""
    room = limit - len(head) - len(ELLIPSIS)
    end = start + room
    if end < len(text):
        space = text.rfind(" ", start, end + 1)
        end = space if space > start else end
    body = text[start:end].rstrip()
    tail = ELLIPSIS if start + len(body) < len(text) else ""
    shift = len(head) - start
    kept = [[a + shift, b + shift] for a, b in spans if a >= start and b <= start + len(body)]
    return head + body + tail, kept


def snippet(marked: str | None, title: str | None = None) -> tuple[str, list[list[int]]]:
    """ts_headline's marked text -> (one-line snippet of at most SNIPPET_CHARS, [start, end) spans of the matches)."""
    chosen = choose(marked or "", title)
    text, spans = _unmark(JOINER.join(chosen))
    return _window(text, spans, SNIPPET_CHARS)
