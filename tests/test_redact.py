"""redact(): a hand-written table of inputs and their exact redacted form, near misses that must stay, the corpus."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coditect_ctx.ingest.discover import discover_sources
from coditect_ctx.ingest.readers import iter_source
from coditect_ctx.ingest.records import SessionRecord, Skipped
from coditect_ctx.ingest.redact import KINDS, find_secrets, redact, redact_record
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


AWS_SECRET = "wJalrXUtnFEMI/" + "K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documented example: 40 base64 characters
AWS_SECRET_PCT = AWS_SECRET.replace("/", "%2F")
BEARER = "ya29.a0AfB_" + "byC9x/Tk+3mQ7vR2pLs0"

# Tokens whose alphabet holds no quote, space or percent sign: each one in every place text puts it.
TOKENS = {
    "anthropic_key": (ANT, "sk-ant-[REDACTED]"),
    "openai_key": (OPENAI, "sk-proj-[REDACTED]"),
    "openai_key (legacy)": (OPENAI_OLD, "sk-[REDACTED]"),
    "github_token": (GHP, "ghp_[REDACTED]"),
    "github_token (fine-grained)": (GHPAT, "github_pat_[REDACTED]"),
    "aws_key (access key id)": (AWS, "AKIA[REDACTED]"),
    "google_key": (GOOGLE, "AIza[REDACTED]"),
    "slack_token": (SLACK, "xoxb-[REDACTED]"),
    "stripe_key": (STRIPE, "sk_live_[REDACTED]"),
    "jwt": (JWT, "eyJ[REDACTED-JWT]"),
    "aws_key (bare secret key)": (AWS_SECRET, "[REDACTED-AWS-SECRET]"),
}
PLACES = {
    "line start": "§ was pasted here\nnext line",
    "line end": "first line\nexport TOKEN=§",
    "url query": "https://api.example.com/v1/items?key=§&page=2",
    "json": '{"api_key": "§", "retries": 3}',
    "markdown inline code": "Set `§` in .env, then restart.",
    "markdown fence": "```bash\ncurl -H 'X-Key: §' https://x.example.com\n```",
}
CASES = [
    (f"{kind} at {place}", template.replace("§", secret), template.replace("§", marker))
    for kind, (secret, marker) in TOKENS.items() for place, template in PLACES.items()
] + [
    (f"{kind} percent-encoded in a query", f"https://x.example.com/cb?cfg=key%3D{secret}%26v%3D1",
     f"https://x.example.com/cb?cfg=key%3D{marker}%26v%3D1")
    for kind, (secret, marker) in TOKENS.items() if kind != "aws_key (bare secret key)"
] + [
    ("aws_key (bare secret key) percent-encoded, / as %2F", f"https://x.example.com/cb?s%3D{AWS_SECRET_PCT}%26x",
     "https://x.example.com/cb?s%3D[REDACTED-AWS-SECRET]%26x"),
    ("aws_key named secret", f"aws_secret_access_key = {AWS_SECRET}", "aws_secret_access_key = [REDACTED]"),
    ("aws_key named secret in JSON", f'{{"aws_secret_access_key": "{AWS_SECRET}"}}',
     '{"aws_secret_access_key": "[REDACTED-AWS-SECRET]"}'),
    ("aws_key id in a file name", f"2025-11-16T09-50-22Z-Keys-{AWS}.md", "2025-11-16T09-50-22Z-Keys-AKIA[REDACTED].md"),
    # bearer tokens: the token holds / + . _ and the header may be percent-encoded
    ("bearer_token at line start", f"Bearer {BEARER}\nnext", "Bearer [REDACTED]\nnext"),
    ("bearer_token at line end", f"Authorization: Bearer {BEARER}", "Authorization: Bearer [REDACTED]"),
    ("bearer_token in json", f'{{"headers": {{"Authorization": "Bearer {BEARER}"}}}}',
     '{"headers": {"Authorization": "Bearer [REDACTED]"}}'),
    ("bearer_token in markdown code", f"`curl -H 'Authorization: bearer {BEARER}' https://x.example.com`",
     "`curl -H 'Authorization: bearer [REDACTED]' https://x.example.com`"),
    ("bearer_token percent-encoded in a URL", f"https://x.example.com/?h=Authorization%3A%20Bearer%20{BEARER}%26",
     "https://x.example.com/?h=Authorization%3A%20Bearer%20[REDACTED]%26"),
    # passwords in URLs: percent-encoded, holding / : @ $ %, in every place
    ("url_password percent-encoded", "postgresql://admin:%40Zq9pass@db.internal/app",
     "postgresql://admin:[REDACTED]@db.internal/app"),
    ("url_password holding /", "postgresql://admin:ab/cdSecret@host", "postgresql://admin:[REDACTED]@host"),
    ("url_password holding /, host with domain", "postgresql+asyncpg://postgres:I7WxWOwRU/E40XwGOR@10.45.0.3:5432/dev",
     "postgresql+asyncpg://postgres:[REDACTED]@10.45.0.3:5432/dev"),
    ("url_password holding :", "redis://default:a:b:c@cache:6379/0", "redis://default:[REDACTED]@cache:6379/0"),
    ("url_password holding @", "postgresql://admin:p@ssw0rd@db.example.com:5432/app",
     "postgresql://admin:[REDACTED]@db.example.com:5432/app"),
    ("url_password holding $", "mysql://root:pa$$word@127.0.0.1/db", "mysql://root:[REDACTED]@127.0.0.1/db"),
    ("url_password holding %", "amqp://guest:100%sure@mq.internal", "amqp://guest:[REDACTED]@mq.internal"),
    ("url_password without user", "redis://:s3cretPW@cache.internal:6379/0", "redis://:[REDACTED]@cache.internal:6379/0"),
    ("url_password at line start", "https://bob:tok3n@git.example.com/x.git\nnext",
     "https://bob:[REDACTED]@git.example.com/x.git\nnext"),
    ("url_password at line end", "remote = https://bob:tok3n@git.example.com",
     "remote = https://bob:[REDACTED]@git.example.com"),
    ("url_password in json", '{"url": "postgresql://app:Winter2025!@db:5432/x"}', '{"url": "postgresql://app:[REDACTED]@db:5432/x"}'),
    ("url_password in markdown code", "`DATABASE_URL=postgres://u:s3cr3t/x@h/db`", "`DATABASE_URL=postgres://u:[REDACTED]@h/db`"),
    ("url_password in a markdown fence", "```\npostgresql://ctx_app:Winter2025!pass@10.20.0.5:5432/ctx\n```",
     "```\npostgresql://ctx_app:[REDACTED]@10.20.0.5:5432/ctx\n```"),
    ("url_password in a URL's query", "https://x.example.com/go?db=postgresql://a:Pw9x@db/app&y=1",
     "https://x.example.com/go?db=postgresql://a:[REDACTED]@db/app&y=1"),
    ("url_password, a whole URL percent-encoded (taken as an e-mail-shaped user%40host)",
     "?next=postgresql%3A%2F%2Fadmin%3Asecret%40db.internal%2Fapp", "?next=[REDACTED-EMAIL]%40db.internal%2Fapp"),
    # a password after its name
    ("password in json", '{"email": "a@b", "password": "SecureP@ss123"}', '{"email": "a@b", "password": "[REDACTED]"}'),
    ("password in a markdown list", "- Password: I7WxWOwRU/E40XwGORPhc0r33Ay52d7s (stored in /tmp/pw.txt)",
     "- Password: [REDACTED] (stored in /tmp/pw.txt)"),
    ("password in markdown bold at line end", "**Password:** hunter22", "**Password:** [REDACTED]"),
    ("password in env at line start", "DB_PASSWORD=Winter2025!\nnext", "DB_PASSWORD=[REDACTED]\nnext"),
    ("password in PostgreSQL's PGPASSWORD in a shell line", "export PGPASSWORD=Winter2025! && psql -h db",
     "export PGPASSWORD=[REDACTED] && psql -h db"),
    ("password in a JS object", "{email: 'x', password: 'Test1-example!'}", "{email: 'x', password: '[REDACTED]'}"),
    ("password in markdown code", "`export API_KEY=a1b2c3d4e5`", "`export API_KEY=[REDACTED]`"),
    ("password percent-encoded in a query", "https://x.example.com/login?user=a&password=Zq9%40pass&x=1",
     "https://x.example.com/login?user=a&password=[REDACTED]&x=1"),
    ("password holding / : @ $ %", 'secret: "a/b:c@d$e%f1"', 'secret: "[REDACTED]"'),
    # e-mail
    ("email at line start", "carol.secret@example.org wrote\nnext", "[REDACTED-EMAIL]@example.org wrote\nnext"),
    ("email at line end", "Contact: carol.secret@example.org", "Contact: [REDACTED-EMAIL]@example.org"),
    ("email in a URL", "https://x.example.com/invite?to=carol+ctx@example.org&r=1",
     "https://x.example.com/invite?to=[REDACTED-EMAIL]@example.org&r=1"),
    ("email as mailto", "<mailto:carol@example.org>", "<mailto:[REDACTED-EMAIL]@example.org>"),
    ("email in json", '{"participants": ["carol@example.org", "dan_o@corp.example.co.uk"]}',
     '{"participants": ["[REDACTED-EMAIL]@example.org", "[REDACTED-EMAIL]@corp.example.co.uk"]}'),
    ("email in markdown code", "`git config user.email carol@example.org`", "`git config user.email [REDACTED-EMAIL]@example.org`"),
    ("email percent-encoded", "https://x.example.com/?email=carol.secret%40example.org&y",
     "https://x.example.com/?email=[REDACTED-EMAIL]%40example.org&y"),
    ("email in a checkpoint file name: the UTC stamp stays", f"2025-11-16T09-50-22Z-Mail-carol.secret@example.org-{AWS}",
     "2025-11-16T09-50-22Z-[REDACTED-EMAIL]@example.org-AKIA[REDACTED]"),
    # phone
    ("phone at line start", "+1 415 555 0142 is the desk\nnext", "[REDACTED-PHONE] is the desk\nnext"),
    ("phone at line end", "call (415) 555-0199", "call [REDACTED-PHONE]"),
    ("phone dotted and dashed", "415.555.0142 or 415-555-0142", "[REDACTED-PHONE] or [REDACTED-PHONE]"),
    ("phone in a URL", "<tel:+1-415-555-0142>", "<tel:[REDACTED-PHONE]>"),
    ("phone in json", '{"phone": "+44 20 7946 0958"}', '{"phone": "[REDACTED-PHONE]"}'),
    ("phone in markdown code", "`+1 415 555 0142`", "`[REDACTED-PHONE]`"),
    ("phone percent-encoded", "https://x.example.com/?n=%2B1%20415%20555%200142&y", "https://x.example.com/?n=[REDACTED-PHONE]&y"),
    # private keys
    ("private_key in a markdown fence", f"```\n{PEM}\n```",
     "```\n-----BEGIN RSA PRIVATE KEY-----\n[REDACTED-PRIVATE-KEY]\n-----END RSA PRIVATE KEY-----\n```"),
    ("private_key (PKCS8) at line start and end", "-----BEGIN " + "PRIVATE KEY-----\nMIIEvQ/+x:y@z$%\n-----END PRIVATE KEY-----",
     "-----BEGIN PRIVATE KEY-----\n[REDACTED-PRIVATE-KEY]\n-----END PRIVATE KEY-----"),
    ("private_key in json (escaped newlines)", '{"key": "-----BEGIN OPENSSH ' + 'PRIVATE KEY-----\\nb3BlbnNzaA\\n-----END OPENSSH PRIVATE KEY-----"}',
     '{"key": "-----BEGIN OPENSSH PRIVATE KEY-----\n[REDACTED-PRIVATE-KEY]\n-----END OPENSSH PRIVATE KEY-----"}'),
    ("private_key percent-encoded", "k=-----BEGIN%20EC%20" + "PRIVATE%20KEY-----%0AMHcCAQEE%2F%0A-----END%20EC%20PRIVATE%20KEY-----",
     "k=-----BEGIN%20EC%20PRIVATE%20KEY-----\n[REDACTED-PRIVATE-KEY]\n-----END%20EC%20PRIVATE%20KEY-----"),
    # home paths
    ("home_path at line start", "/Users/halcasteel/PROJECTS/x is the repo", "/Users/[USER]/PROJECTS/x is the repo"),
    ("home_path at line end", "cd /home/alice.smith", "cd /home/[USER]"),
    ("home_path in a URL", "file:///home/alice.smith/proj/README.md", "file:///home/[USER]/proj/README.md"),
    ("home_path in json (escaped backslashes)", '{"cwd": "C:\\\\Users\\\\dana\\\\AppData"}', '{"cwd": "C:\\\\Users\\\\[USER]\\\\AppData"}'),
    ("home_path windows", "C:\\Users\\dana\\AppData", "C:\\Users\\[USER]\\AppData"),
    ("home_path in markdown code", "`ls /home/dana/.ssh`", "`ls /home/[USER]/.ssh`"),
    ("home_path percent-encoded", "https://x.example.com/open?p=%2Fhome%2Falice.smith%2Fproj",
     "https://x.example.com/open?p=%2Fhome%2F[USER]%2Fproj"),
]

PNG_BASE64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg"
              "AAAAAElFTkSuQmCCiVBORw0KGgoAAAANSUhEUgAAAAEAAAAB")
WRAPPED_BASE64 = "\n".join(["R0lGODlhPQBEAPeoAJosM//AwO/AwHVYZ/z595kzAJpmAMzMzP8/" + "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx",
                            "Q2hhcmxpZSBDaGFwbGluIGFuZCBPbGl2ZXIgSGFyZHkgd2VudCB0byB0" + "aGUgY2luZW1hIHRvZ2V0aGVyIG9u",
                            "ZUFpb3Jhc3RpYW5TdGVwaGFub3BvbG9zQWJjZDEy"])  # last line: exactly 40 characters
NEAR_MISSES = [
    ("commit hashes", "commit 2ed486e and b8f3dab, full 4bb2f41c93d024673db75937efd81bad9db763d6"),
    ("upper-case sha1", "ETAG 4BB2F41C93D024673DB75937EFD81BAD9DB763D6"),
    ("uuid", "uuid 711bd53a-3501-422f-9e02-69b66d1979aa"),
    ("sha256", "sha256 fe05f97ae58e7c6aa55c7b1fbf69e6ec0f9f076147ac5e8e914e89d4d2e627eb"),
    ("timestamps", "at 2025-11-16T19:53:41Z, file 2025-11-17T09-24-45Z-x.md, archived 20251123-223618"),
    ("versions", "versions 1.2.3, v2.0.42, 10.20.0.5, python 3.14.0, node 20.11.1"),
    ("numbers", "ran 35 tests in 0.113s; 182,400 rows in 37 batches; port 5432; 1700000000"),
    ("git remote and redacted path", "git@github.com:coditect-ai/coditect-core.git and /Users/[USER]/x"),
    ("key-shaped words", "sk-ant-your-key-here and task-specific sk-mitigation-strategy"),
    ("url password templates", "postgresql://user:${DB_PASSWORD}@localhost/db postgres://u:<password>@h/db "
                               "mysql://u:$PGPASS@h/db"),
    ("port then @ in a path", "http://localhost:3000/@vite/client and https://example.com:8443/path?q=1"),
    ("bearer prose", "Bearer token is required"),
    ("base64 of an image", f"![x](data:image/png;base64,{PNG_BASE64})"),
    ("wrapped base64 whose last line is 40 characters", WRAPPED_BASE64),
    ("40-character identifiers and paths", "ThisIsAVeryLongJavaClassNameForTesting12 getUserAccountSettingsForOrganization2Id"
                                           " (/srv/hal/v4/PROJECTS/t2/src/themes/index) src/main/java/com/example/App2/Service1X"),
    ("safe home folders", "/home/runner/work and /Users/Shared/x and /home/user/x"),
    ("email-like but no domain", "admin@localhost and user@10.0.0.5"),
    ("password names without a password", "password: str, password=None, PASSWORD=$DB_PASS, "
                                           "password = getpass.getpass(), api_key: \"YOUR_API_KEY\", "
                                           "token: ${{ secrets.GITHUB_TOKEN }}, max_tokens: 4096, PWD=/usr/local/bin, "
                                           "token = authData?.state?.token"),
    ("a password with no marker (what no pattern can see)", "the password is hunter2"),
    ("redacted markers stay as they are", "sk-ant-[REDACTED] postgresql://a:[REDACTED]@h [REDACTED-EMAIL]@example.org "
                                          "[REDACTED-AWS-SECRET] /home/[USER]/x"),
]


@pytest.mark.parametrize("label, text, expected", CASES, ids=[c[0] for c in CASES])
def test_redaction_table(label, text, expected):
    assert redact(text)[0] == expected


@pytest.mark.parametrize("label, text", NEAR_MISSES, ids=[c[0] for c in NEAR_MISSES])
def test_near_misses_stay(label, text):
    assert redact(text) == (text, {})


@pytest.mark.parametrize("text, counts", [
    (f"{ANT} and {ANT}", {"anthropic_key": 2}),
    ("postgresql://admin:%40Zq9pass@db.internal/app carol@example.org", {"url_password": 1, "email": 1}),
    (f"key {AWS_SECRET} and id {AWS}", {"aws_key": 2}),
    ("/home/dana/x +1 415 555 0142", {"home_path": 1, "phone": 1}),
])
def test_counts_by_kind(text, counts):
    assert redact(text)[1] == counts


def test_every_kind_has_a_case():
    labelled = {re.match(r"\w+", label).group(0) for label, _t, _e in CASES}
    assert labelled == set(KINDS)


def test_redacting_twice_changes_nothing():
    for _label, text, expected in CASES:
        assert redact(expected) == (expected, {}), expected


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
            for text in texts:  # stable: a second pass finds nothing (what it misses, bench/scan_secrets.py counts)
                assert find_secrets(text) == {}
    with capsys.disabled():
        print("\nredacted in corpus:", dict(sorted(found.items())))
    assert found.get("home_path", 0) > 1000  # the corpus is full of /Users/halcasteel paths
    assert found.get("email", 0) > 10
