"""redact(): each kind replaced in a recognisable form, no false positives, nothing left in the corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from coditect_ctx.ingest.discover import discover_sources
from coditect_ctx.ingest.readers import iter_source
from coditect_ctx.ingest.records import SessionRecord, Skipped
from coditect_ctx.ingest.redact import find_secrets, redact, redact_record
from coditect_ctx.samples import demo_path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"

# Fake secrets assembled at run time so that no secret-shaped literal sits in the repository.
ANT = "sk-ant-" + "api03-" + "Zq81bN4kLm0pX7vR2sT9wY3uE6iO5aQ"
OPENAI = "sk-" + "proj-" + "Ab12Cd34Ef56Gh78Ij90Kl12Mn34"
OPENAI_OLD = "sk-" + "4fT9kL2mN8pQ1rS6tU3vW7xY0zA5bC"
GHP = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
GHPAT = "github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnopqrstu"
AWS = "AKIA" + "IOSFODNN7EXAMPLE"
GOOGLE = "AIza" + "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
SLACK = "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
STRIPE = "sk_live_" + "51HxYzAbCdEfGhIjKlMnOpQr"
JWT = "eyJhbGciOiJIUzI1NiJ9" + "." + "eyJzdWIiOiIxMjM0NTY3ODkwIn0" + "." + "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PEM = "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEowIBAAKCAQEA7v1s\nq2Lw9x\n-----END RSA " + "PRIVATE KEY-----"


@pytest.mark.parametrize("text, kind, kept, gone", [
    (f"key {ANT} end", "anthropic_key", "sk-ant-[REDACTED]", ANT),
    (f"OPENAI_API_KEY={OPENAI}", "openai_key", "sk-proj-[REDACTED]", OPENAI),
    (f"old {OPENAI_OLD}", "openai_key", "sk-[REDACTED]", OPENAI_OLD),
    (f"token {GHP}", "github_token", "ghp_[REDACTED]", GHP),
    (f"token {GHPAT}", "github_token", "github_pat_[REDACTED]", GHPAT),
    (f"aws {AWS}", "aws_key", "AKIA[REDACTED]", AWS),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_key",
     "aws_secret_access_key = [REDACTED]", "wJalrXUtnFEMI"),
    (f"maps {GOOGLE}", "google_key", "AIza[REDACTED]", GOOGLE),
    (f"slack {SLACK}", "slack_token", "xoxb-[REDACTED]", SLACK),
    (f"stripe {STRIPE}", "stripe_key", "sk_live_[REDACTED]", STRIPE),
    (f"jwt {JWT}", "jwt", "eyJ[REDACTED-JWT]", JWT),
    ("Authorization: Bearer 8f14e45fceea167a5a36dedd4bea2543aa", "bearer_token", "Bearer [REDACTED]",
     "8f14e45fceea167a5a36dedd4bea2543aa"),
    ("postgresql://ctx_app:Winter2025!pass@10.20.0.5:5432/ctx", "url_password",
     "postgresql://ctx_app:[REDACTED]@10.20.0.5:5432/ctx", "Winter2025"),
    ("redis://:s3cretPW@cache.internal:6379/0", "url_password", None, "s3cretPW"),
    (PEM, "private_key", "-----BEGIN RSA PRIVATE KEY-----\n[REDACTED-PRIVATE-KEY]\n-----END RSA PRIVATE KEY-----",
     "MIIEowIBAAKCAQEA"),
    ("mail dana.whitfield@example.org now", "email", "[REDACTED-EMAIL]@example.org", "dana.whitfield"),
    ("call +1 415 555 0142 or (415) 555-0199", "phone", "[REDACTED-PHONE]", "555 0142"),
    ("cd /Users/halcasteel/PROJECTS/x && ls /home/dana/.ssh", "home_path",
     "cd /Users/[USER]/PROJECTS/x && ls /home/[USER]/.ssh", "halcasteel"),
    ("C:\\Users\\dana\\AppData", "home_path", "C:\\Users\\[USER]\\AppData", "dana"),
])
def test_each_kind_is_redacted_recognisably(text, kind, kept, gone):
    out, counts = redact(text)
    assert counts.get(kind, 0) >= 1, counts
    assert gone not in out
    if kept:
        assert kept in out
    assert find_secrets(out) == {}  # idempotent: redacted text has nothing left to find


def test_redis_url_without_user_keeps_host():
    out, _ = redact("redis://:s3cretPW@cache.internal:6379/0")
    assert out == "redis://:[REDACTED]@cache.internal:6379/0" or out.endswith("@cache.internal:6379/0")


@pytest.mark.parametrize("text", [
    "commit 2ed486e and b8f3dab, full 4bb2f41c93d024673db75937efd81bad9db763d6",
    "uuid 711bd53a-3501-422f-9e02-69b66d1979aa",
    "sha256 fe05f97ae58e7c6aa55c7b1fbf69e6ec0f9f076147ac5e8e914e89d4d2e627eb",
    "at 2025-11-16T19:53:41Z, file 2025-11-17T09-24-45Z-x.md, archived 20251123-223618",
    "versions 1.2.3, v2.0.42, 10.20.0.5, python 3.14.0, node 20.11.1",
    "ran 35 tests in 0.113s; 182,400 rows in 37 batches; port 5432; 1700000000",
    "git@github.com:coditect-ai/coditect-core.git and /Users/[USER]/x",
    "sk-ant-your-key-here and task-specific sk-mitigation-strategy",
    "postgresql://user:${DB_PASSWORD}@localhost/db",
    "Bearer token is required",
])
def test_no_false_positives(text):
    assert redact(text) == (text, {})


def test_redact_record_in_place_on_samples():
    mc = demo_path() / "MEMORY-CONTEXT"
    source = discover_sources(demo_path())[0]
    record = next(r for r in iter_source(source)
                  if isinstance(r, SessionRecord) and r.source_path.endswith("Redis-cache-eviction-policy-tuned.md"))
    identity = record.identity
    counts = redact_record(record)
    assert counts["anthropic_key"] >= 1 and counts["url_password"] >= 1 and counts["email"] >= 1
    assert counts["home_path"] >= 1
    assert "Winter2025" not in record.content and "Winter2025" not in record.summary
    assert "sk-ant-[REDACTED]" in record.content and "[REDACTED-EMAIL]@example.org" in record.content
    assert record.repository == "/Users/[USER]/work/coditect-demo"
    assert record.identity == identity  # identities are from the original content
    assert mc.is_dir()


def test_redact_record_reaches_messages_and_metadata():
    record = next(r for r in iter_source(discover_sources(demo_path())[0])
                  if isinstance(r, SessionRecord) and r.source_format == "transcript" and r.checkpoint_ref)
    assert any("/Users/dana" in m.content for m in record.messages) or "/Users/dana" in record.metadata["preamble"]
    redact_record(record)
    assert "/Users/dana" not in record.metadata["preamble"]
    assert all("/Users/dana" not in m.content for m in record.messages)


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"real corpus not found at {CORPUS} (../shared/corpus)")
def test_corpus_has_no_detectable_secret_after_redaction(capsys):
    found: dict[str, int] = {}
    for source in discover_sources(CORPUS):
        for record in iter_source(source):
            if isinstance(record, Skipped):
                continue
            for kind, n in redact_record(record).items():
                found[kind] = found.get(kind, 0) + n
            texts = [getattr(record, "content", "")] + [m.content for m in getattr(record, "messages", [])]
            for text in texts:
                assert find_secrets(text) == {}
    with capsys.disabled():
        print("\nredacted in corpus:", dict(sorted(found.items())))
    assert found.get("home_path", 0) > 1000  # the corpus is full of /Users/halcasteel paths
    assert found.get("email", 0) > 10
