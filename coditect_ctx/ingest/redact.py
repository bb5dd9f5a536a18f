"""Remove personal data and secrets from text before it is stored, keeping it recognisable.

Replacements (the readable prefix stays so a reader knows *what* was there):

=============  ==========================================================================
kind           example result
=============  ==========================================================================
private_key    ``-----BEGIN RSA PRIVATE KEY-----\\n[REDACTED-PRIVATE-KEY]\\n-----END RSA PRIVATE KEY-----``
url_password   ``postgresql://app:[REDACTED]@db.internal:5432/ctx`` (user and host kept)
jwt            ``eyJ[REDACTED-JWT]``
anthropic_key  ``sk-ant-[REDACTED]``
openai_key     ``sk-proj-[REDACTED]`` / ``sk-[REDACTED]``
github_token   ``ghp_[REDACTED]``, ``gho_[REDACTED]``, ``github_pat_[REDACTED]``
aws_key        ``AKIA[REDACTED]``; ``aws_secret_access_key=[REDACTED]``
google_key     ``AIza[REDACTED]``
slack_token    ``xoxb-[REDACTED]``
stripe_key     ``sk_live_[REDACTED]``
bearer_token   ``Bearer [REDACTED]``
email          ``[REDACTED-EMAIL]@example.com`` (domain kept; ``git@host`` remotes are not e-mail)
phone          ``[REDACTED-PHONE]``
home_path      ``/Users/[USER]/PROJECTS/...``, ``/home/[USER]/...``, ``C:\\Users\\[USER]\\...``
=============  ==========================================================================

Patterns are anchored so git SHAs, UUIDs, sha256 digests, timestamps and version numbers are left
alone (tested on the whole real corpus). Record identities are computed from the original content
before redaction and are not changed here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import fields, is_dataclass

_SAFE_USERS = frozenset({"[USER]", "USER", "user", "username", "USERNAME", "you", "your-name", "yourname",
                         "name", "me", "Shared", "runner", "linuxbrew", "ubuntu", "root", "node", "app"})

Rule = tuple[str, re.Pattern, "str | Callable[[re.Match], str]", tuple[str, ...]]


def _home(m: re.Match) -> str:
    prefix, name = m.group(1), m.group(2)
    if name in _SAFE_USERS or not any(c.isalnum() for c in name):
        return m.group(0)
    return f"{prefix}[USER]"


def _email(m: re.Match) -> str:
    local, domain = m.group(1), m.group(2)
    if local in ("git", "noreply") or local.startswith("[REDACTED"):
        return m.group(0)
    return f"[REDACTED-EMAIL]@{domain}"


_RULES: list[Rule] = [
    ("private_key", re.compile(
        r"(-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----)(?!\n\[REDACTED)[\s\S]*?(-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----)"),
     r"\1\n[REDACTED-PRIVATE-KEY]\n\2", ("PRIVATE KEY",)),
    ("url_password", re.compile(
        r"\b([a-zA-Z][a-zA-Z0-9+.-]{1,20}://)([^:/\s@\[\]]*):(?!\[REDACTED\])(?![$%{<])([^@\s/]{1,200})@(?=[\w.-])"),
     r"\1\2:[REDACTED]@", ("://",)),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), "eyJ[REDACTED-JWT]", ("eyJ",)),
    ("anthropic_key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{16,}"), "sk-ant-[REDACTED]", ("sk-ant-",)),
    ("openai_key", re.compile(r"\bsk-proj-[A-Za-z0-9_-]{16,}"), "sk-proj-[REDACTED]", ("sk-proj-",)),
    ("openai_key", re.compile(r"\bsk-(?!ant-|proj-)(?=[A-Za-z0-9]*\d)[A-Za-z0-9]{20,}\b"), "sk-[REDACTED]", ("sk-",)),
    ("github_token", re.compile(r"\b(gh[pousr])_[A-Za-z0-9]{30,}\b"), r"\1_[REDACTED]", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    ("github_token", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}"), "github_pat_[REDACTED]", ("github_pat_",)),
    ("aws_key", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), r"\1[REDACTED]", ("AKIA", "ASIA")),
    ("aws_key", re.compile(r"(?i)\b(aws_secret_access_key\s*[=:]\s*[\"']?)(?!\[REDACTED)[A-Za-z0-9/+=]{40}\b"),
     r"\1[REDACTED]", ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY")),
    ("google_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), "AIza[REDACTED]", ("AIza",)),
    ("slack_token", re.compile(r"\b(xox[abposr])-[A-Za-z0-9-]{10,}"), r"\1-[REDACTED]", ("xox",)),
    ("stripe_key", re.compile(r"\b((?:sk|rk)_live)_[A-Za-z0-9]{16,}"), r"\1_[REDACTED]", ("_live_",)),
    ("bearer_token", re.compile(r"\b([Bb]earer\s+)(?!\[REDACTED)(?=[A-Za-z0-9._~+/-]*\d)[A-Za-z0-9._~+/-]{16,}=*"),
     r"\1[REDACTED]", ("Bearer", "bearer")),
    ("email", re.compile(r"(?<![\w.%+-])([A-Za-z0-9][A-Za-z0-9._%+-]{0,63})@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24})\b"),
     _email, ("@",)),
    ("phone", re.compile(
        r"(?<![\w.+/-])(?:\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]\d{2,4}){2,3}|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[ .]\d{3}[ .]\d{4}|\d{3}-\d{3}-\d{4})(?![\w/-]|\.\d)"),
     "[REDACTED-PHONE]", ()),
    ("home_path", re.compile(r"(/Users/|/home/|[A-Za-z]:\\Users\\)([A-Za-z0-9._-]+|\[USER\])(?=[/\\\s'\"`),:;]|$)",
                             re.MULTILINE), _home, ("/Users/", "/home/", ":\\Users\\")),
]

KINDS = tuple(dict.fromkeys(rule[0] for rule in _RULES))


def redact(text: str) -> tuple[str, dict[str, int]]:
    """Return ``text`` with secrets and personal data replaced, and how many of each kind were found."""
    counts: Counter[str] = Counter()
    if not text:
        return text, {}
    for kind, pattern, replacement, gates in _RULES:
        # Cheap substring gates skip a regex pass over text that cannot match (most text).
        if gates and not any(g in text for g in gates):
            continue
        if callable(replacement):
            hits = 0

            def sub(m: re.Match, _r=replacement) -> str:
                nonlocal hits
                out = _r(m) if callable(_r) else m.expand(_r)
                if out != m.group(0):
                    hits += 1
                return out

            text = pattern.sub(sub, text)
            n = hits
        else:
            text, n = pattern.subn(replacement, text)
        if n:
            counts[kind] += n
    return text, dict(counts)


def find_secrets(text: str) -> dict[str, int]:
    """Counts of what `redact` would change (an already redacted text gives ``{}``)."""
    return redact(text)[1]


_KEEP = frozenset({"identity", "source_sha256", "source_path", "checkpoint_ref", "ref", "session_identity",
                   "source_format", "privacy_level", "kind", "role", "path"})


def _walk(value, counts: Counter):
    if isinstance(value, str):
        new, found = redact(value)
        counts.update(found)
        return new
    if isinstance(value, list):
        return [_walk(v, counts) for v in value]
    if isinstance(value, dict):
        return {k: _walk(v, counts) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        _redact_fields(value, counts)
    return value


def _redact_fields(record, counts: Counter) -> None:
    for f in fields(record):
        if f.name in _KEEP:
            continue
        value = getattr(record, f.name)
        if isinstance(value, (str, list, dict)) or is_dataclass(value):
            setattr(record, f.name, _walk(value, counts))


def redact_record(record) -> dict[str, int]:
    """Redact every text field of a record (and its messages and metadata) in place; return the counts."""
    counts: Counter[str] = Counter()
    _redact_fields(record, counts)
    return dict(counts)
