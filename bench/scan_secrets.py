"""What an independent scanner still finds in what `ctx migrate` stores: the check on the redactor's blind spots.

    python bench/scan_secrets.py                 # the redacted text migrate would write for ../shared/corpus (no store)
    python bench/scan_secrets.py --corpus PATH   # another source tree
    CTX_HOME=... python bench/scan_secrets.py --store   # what a migrated store holds: every PostgreSQL row
                                                        # (row_to_json) and every Chroma document and metadata
    --show N: print up to N findings per class (the value masked), default 5

The scanner is detect-secrets (PyPI, `pip install detect-secrets`) with all its plugins, each line scanned with
eager search (high-entropy strings anywhere, not only in quotes). It knows nothing of our regexes. The default
mode reads and redacts exactly as migrate does (fill_batch + redact_batch, the functions `ctx validate` uses) and
scans every string of every record (text, title, ref, paths, metadata), the audit paths and the registry paths;
Chroma documents are chunks of the same title/summary/content, so no separate pass is needed there.

Each finding is put in a class; only "unexplained" ones are candidates for a leak and are printed in full context.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter, defaultdict
from dataclasses import fields, is_dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CORPUS = REPO.parent / "shared" / "corpus"

# Why a finding is not a secret: first matching class wins (checked on the flagged value, its line and the line
# before it). Everything else is "unexplained": a candidate leak to read and either fix in the redactor or explain.
_B64_LINE = re.compile(r"[A-Za-z0-9+/]{60,}={0,2}")
_CLASSES = [
    ("redaction marker (already redacted)", lambda v, line, prev: "REDACTED" in v or "[USER]" in v),
    ("hex digest: git commit or sha256", lambda v, line, prev: bool(re.fullmatch(r"[0-9a-fA-F]{7,128}", v))),
    ("uuid", lambda v, line, prev: bool(re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", v))),
    ("keyword with no value (code or prose: password=None, secret: str, token_var)",
     lambda v, line, prev: bool(re.fullmatch(r"[\w.$(){}\[\]'\"-]*", v))
     and not re.search(r"\d.*[A-Za-z]|[A-Za-z].*\d", v)),
    ("identifier or path (code names, file names, module paths; a commit hash as one segment)",
     lambda v, line, prev: bool(re.fullmatch(r"[A-Za-z0-9_./-]+", v)) and _wordy(v)),
    ("npm/SRI integrity hash (sha512-<base64>, wrapped)",
     lambda v, line, prev: "sha512-" in line or "sha512-" in prev or "integrity" in line),
    ("wrapped base64 data (a line of MIME width 76 or after one; gzip payload H4sI...)",
     lambda v, line, prev: v.startswith("H4sI") or (len(v) == 76 and line.strip() == v)
     or bool(_B64_LINE.fullmatch(prev.strip()))),
]


def _wordy(value: str) -> bool:
    """Mostly dictionary-like runs (snake_case, camelCase, kebab-case, paths), not random characters."""
    value = "/".join(p for p in value.split("/") if not re.fullmatch(r"[0-9a-f]{7,64}", p))
    words = re.findall(r"[A-Z]?[a-z]{3,}|[A-Z]{3,}", value)
    return bool(value) and sum(len(w) for w in words) >= 0.6 * len(value)


# Detectors that flag any random-looking string or any word like "password": only their findings can be shapes of
# harmless data. A named-format detector (AWS Access Key, GitHub Token, Slack, Stripe, JWT, Private Key, ...) has
# matched a real credential's own format, which only a redaction marker explains (its value may be as short as
# "ghp", the prefix detect-secrets captures, or look "wordy": AKIA...EXAMPLE).
_GENERIC = {"Hex High Entropy String", "Base64 High Entropy String", "Secret Keyword", "Unquoted High Entropy Token (ours)"}


def classify(kind: str, value: str, line: str, prev: str = "") -> str:
    for name, test in _CLASSES if kind in _GENERIC else _CLASSES[:1]:
        if test(value, line, prev):
            return name
    return "unexplained"


def _mask(value: str) -> str:
    return value if len(value) <= 8 else f"{value[:4]}…{value[-2:]} ({len(value)} chars)"


# -- what migrate would write -----------------------------------------------------------------------------
_SKIP_FIELDS = {"identity", "source_sha256", "session_identity"}


def _strings(value, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            out.append(str(k))
            _strings(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _strings(v, out)
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            if f.name not in _SKIP_FIELDS and f.name != "messages":
                _strings(getattr(value, f.name), out)


def texts_from_files(corpus: Path):
    from coditect_ctx.ingest.discover import discover_sources
    from coditect_ctx.ingest.redact import redact_local_path
    from coditect_ctx.migrate import Batch, MigrateReport, fill_batch, redact_batch

    batch = Batch(sources=discover_sources(corpus))
    report = MigrateReport()
    fill_batch(batch, report)
    audits = redact_batch(batch, report)
    for source in batch.sources:
        yield "submodule_registry", [source.name, redact_local_path(source.root), redact_local_path(source.memory_context)]
    for kind, entries in (("checkpoints", batch.checkpoints), ("sessions", batch.merged),
                          ("patterns", batch.patterns), ("messages", batch.messages)):
        for identity, (_src, record) in entries.items():
            out: list[str] = []
            _strings(record, out)
            if kind == "sessions":
                out.append(batch.session_text[identity])
            yield kind, out
    yield "privacy_audit", [a[4] for a in audits]


def texts_from_store():
    from coditect_ctx.config import load_settings
    from coditect_ctx.stores import Store
    from coditect_ctx.stores.chroma import COLLECTIONS

    settings = load_settings()
    with Store(settings) as store:
        with store.pg() as conn:
            for table in ("checkpoints", "sessions", "patterns", "messages", "privacy_audit", "submodule_registry",
                          "tags"):
                for (row,) in conn.execute(f"SELECT row_to_json(t)::text FROM {table} t"):
                    data = json.loads(row)
                    for key in ("id", "identity", "record_identity", "content_sha256", "embedded_sha256",
                                "source_sha256", "record_id", "submodule_id", "session_id", "checkpoint_id"):
                        data.pop(key, None)
                    out: list[str] = []
                    _strings(data, out)
                    yield f"postgres:{table}", out
        for name in COLLECTIONS.values():
            for page in store.chroma.iter_all(name, include=("documents", "metadatas")):
                for doc, meta in zip(page.get("documents") or [], page.get("metadatas") or []):
                    meta = {k: v for k, v in (meta or {}).items() if k not in ("sha", "record_id")}
                    out = [doc or ""]
                    _strings(meta, out)
                    yield f"chroma:{name}", out


# -- the scan ---------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/]{20,}={0,2}(?![A-Za-z0-9+/=_-])")


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _findings(line: str, plugins, context):
    """detect-secrets the way it scans source files (high entropy only in quoted strings), then our own pass:
    unquoted base64-alphabet tokens of 20+ characters with >= 4.5 bits/char (detect-secrets' own base64 limit)."""
    from detect_secrets.core.scan import _scan_line

    for plugin in plugins:
        for secret in _scan_line(plugin=plugin, filename="store.txt", line=line, line_number=0,
                                 enable_eager_search=False, context=context):
            yield secret.type, secret.secret_value or ""
    for m in _TOKEN.finditer(line):
        if _entropy(m.group(0)) >= 4.5:
            yield "Unquoted High Entropy Token (ours)", m.group(0)


def scan(groups) -> tuple[Counter, dict, Counter]:
    from detect_secrets.settings import default_settings, get_plugins
    from detect_secrets.util.code_snippet import get_code_snippet

    lines_by_place: dict[str, dict[str, str]] = defaultdict(dict)  # line -> the line before it (first met)
    for place, texts in groups:
        for text in texts:
            prev = ""
            for line in str(text).split("\n"):
                if len(line.strip()) >= 8:
                    lines_by_place[place].setdefault(line[:4000], prev[:4000])
                prev = line
    counts: Counter = Counter()
    examples: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    per_place: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    with default_settings():
        plugins = list(get_plugins())
        for place, lines in sorted(lines_by_place.items()):
            for line, prev in sorted(lines.items()):
                context = get_code_snippet(lines=[line], line_number=1)
                for kind, value in _findings(line, plugins, context):
                    if (kind, value) in seen:
                        continue
                    seen.add((kind, value))
                    cls = classify(kind, value, line, prev)
                    counts[(cls, kind)] += 1
                    per_place[(place, cls == "unexplained")] += 1
                    examples[cls].append((kind, value, line))
    return counts, examples, per_place


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--store", action="store_true", help="scan the store of $CTX_HOME instead of the files")
    parser.add_argument("--show", type=int, default=5)
    parser.add_argument("--reveal", action="store_true", help="print unexplained values and lines unmasked (to review)")
    args = parser.parse_args()
    if not args.store and not args.corpus.is_dir():
        print(f"Error: no corpus at {args.corpus}\nHint: pass --corpus PATH or --store", file=sys.stderr)
        return 2
    try:
        import detect_secrets  # noqa: F401
    except ImportError:
        print("Error: detect-secrets is not installed\nHint: pip install detect-secrets", file=sys.stderr)
        return 2
    groups = texts_from_store() if args.store else texts_from_files(args.corpus)
    counts, examples, per_place = scan(groups)
    where = "store of $CTX_HOME (PostgreSQL rows + Chroma documents/metadata)" if args.store else \
        f"redacted records migrate would write for {args.corpus}"
    print(f"detect-secrets findings (distinct type+value) in the {where}")
    total = sum(counts.values())
    unexplained = sum(n for (cls, _t), n in counts.items() if cls == "unexplained")
    print(f"  total {total}, explained false positives {total - unexplained}, unexplained {unexplained}")
    print("  by place (distinct values, first place met):")
    for place in sorted({p for p, _u in per_place}):
        print(f"    {place:32} {per_place[(place, False)] + per_place[(place, True)]:6}"
              f"   unexplained {per_place[(place, True)]}")
    print("  by class and detector:")
    for (cls, kind), n in sorted(counts.items(), key=lambda kv: (kv[0][0] == "unexplained", -kv[1])):
        print(f"    {n:6}  {cls}  [{kind}]")
    for cls, items in sorted(examples.items(), key=lambda kv: kv[0] == "unexplained"):
        limit = len(items) if cls == "unexplained" else args.show
        if not limit:
            continue
        print(f"  examples: {cls}")
        for kind, value, line in items[:limit]:
            at = line.find(value)
            context = line[max(0, at - 50):at].strip() if at >= 0 else ""
            print(f"    [{kind}] {_mask(value)!s:28} after: {context[-50:]!r}")
            if args.reveal and cls == "unexplained":
                print(f"        {line[:300]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
