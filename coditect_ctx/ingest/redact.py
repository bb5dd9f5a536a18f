"""Remove personal data and secrets from text before it is stored, keeping it recognisable.

Replacements (the readable prefix stays so a reader knows *what* was there):

=============  ==========================================================================
kind           example result
=============  ==========================================================================
private_key    ``-----BEGIN RSA PRIVATE KEY-----\\n[REDACTED-PRIVATE-KEY]\\n-----END RSA PRIVATE KEY-----``
url_password   ``postgresql://app:[REDACTED]@db.internal:5432/ctx`` (user and host kept; the password may be
               percent-encoded or hold ``/ : @ $ %``; templates like ``${DB_PASSWORD}`` are left)
jwt            ``eyJ[REDACTED-JWT]``
anthropic_key  ``sk-ant-[REDACTED]``
openai_key     ``sk-proj-[REDACTED]`` / ``sk-[REDACTED]``
github_token   ``ghp_[REDACTED]``, ``gho_[REDACTED]``, ``github_pat_[REDACTED]``
aws_key        ``AKIA[REDACTED]``; ``aws_secret_access_key=[REDACTED]``; a bare secret key ``[REDACTED-AWS-SECRET]``
google_key     ``AIza[REDACTED]``
slack_token    ``xoxb-[REDACTED]``
stripe_key     ``sk_live_[REDACTED]``
bearer_token   ``Bearer [REDACTED]``
password       ``"password": "[REDACTED]"``, ``- Password: [REDACTED]``, ``DB_PASSWORD=[REDACTED]``,
               ``PGPASSWORD=[REDACTED]`` (a value after a password/secret/token/api_key name that looks like one:
               letters with a digit or symbol)
email          ``[REDACTED-EMAIL]@example.com`` (domain kept; also ``%40``; ``git@host`` remotes are not e-mail)
phone          ``[REDACTED-PHONE]``
home_path      ``/Users/[USER]/PROJECTS/...``, ``/home/[USER]/...``, ``C:\\Users\\[USER]\\...``
=============  ==========================================================================

Patterns are anchored so git SHAs, UUIDs, sha256 digests, timestamps, base64 data and version numbers are left
alone (tests/redaction_cases.json holds the expected output of each case, written by hand; bench/scan_secrets.py
counts what an independent scanner still finds in the real corpus). Tokens are also found right after a
percent-escape (``?key%3Dghp_...``). File names, paths and checkpoint refs are data like any other and are
redacted the same way (see ``_KEEP``). Record identities are computed from the original content before
redaction and are not changed here. What no pattern can see: a password written as free text with no marker
("the password is hunter2").
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path

_SAFE_USERS = frozenset({"[USER]", "USER", "user", "username", "USERNAME", "you", "your-name", "yourname",
                         "name", "me", "Shared", "runner", "linuxbrew", "ubuntu", "root", "node", "app"})

Rule = tuple[str, re.Pattern, "str | Callable[[re.Match], str]", tuple[str, ...]]

# Where a token may start: not inside a word, or right after a percent-escape (``?key%3Dghp_...``).
_B = r"(?:(?<![A-Za-z0-9_])|(?<=%[0-9A-Fa-f]{2}))"


def _home(m: re.Match) -> str:
    prefix, name = m.group(1), m.group(2)
    if name in _SAFE_USERS or not any(c.isalnum() for c in name):
        return m.group(0)
    return f"{prefix}[USER]"


def _email(m: re.Match) -> str:
    local, at, domain = m.group(1), m.group(2), m.group(3)
    if local in ("git", "noreply") or local.startswith("[REDACTED"):
        return m.group(0)
    return f"[REDACTED-EMAIL]{at}{domain}"


# A URL's "password" that is a template or a port, not a secret: ${DB_PASSWORD}, $PGPASS, %s, {{ pw }}, <password>,
# ***, and ``host:8080/path@x`` (a port, then a path holding an @).
_NOT_A_PASSWORD = re.compile(
    r"\$\{[^}]*\}|\$\(?[A-Za-z_]\w*\)?|%s|%\(\w+\)s|\{\{?[^{}]*\}?\}|<[^<>]*>|\*+|\.\.\.|\d{1,5}[/?#].*", re.DOTALL)


def _url_password(m: re.Match) -> str:
    if _NOT_A_PASSWORD.fullmatch(m.group(3)):
        return m.group(0)
    return f"{m.group(1)}{m.group(2)}:[REDACTED]@"


# A password written after its name: ``"password": "..."``, ``- Password: ...``, ``DB_PASSWORD=...``, ``?password=...``.
# The value must look like one (a letter and a digit or symbol, 6+ characters): ``password: str``, ``password=None``,
# ``token = make_token(...)`` and templates stay.
_SECRET_NAME = (r"(?i)((?<![A-Za-z])(?:(?:pg)?password|passwd|passphrase|client_secret|secret_key|secret|api[_-]?key"
                r"|access_token|auth_token|token)(?![A-Za-z])[\"']?\s*(?:[:=]|=>)(?:\*\*)?[ \t]*)")
_SECRET_VALUE = re.compile(r"(?=.*[A-Za-z])(?=.*[\d!@#$%^&*+=?~/]).{6,}", re.DOTALL)
_MEMBER_ACCESS = re.compile(r"[\w$]+\??(?:\.[\w$]+\??)+")  # token = authData?.state?.token (code, not a value)


def _named_secret(m: re.Match) -> str:
    name, quote, value = m.group(1), m.group(2) or "", m.group(3) if m.group(3) is not None else m.group(4)
    if (not _SECRET_VALUE.fullmatch(value) or _NOT_A_PASSWORD.fullmatch(value) or _MEMBER_ACCESS.fullmatch(value)
            or "[REDACTED" in value
            or value.startswith(("$", "%(", "{{", "<", "/", "~/", "./", "../", "process.env", "os.environ", "env.", "secrets."))):
        return m.group(0)
    return f"{name}{quote}[REDACTED]{quote}"


_B64_LINE = re.compile(r"[A-Za-z0-9/+]{60,}={0,2}")
_WORD = re.compile(r"(?:[a-z]+|[A-Z][a-z]*|[A-Z]+)[0-9]*|[0-9]+")


def _aws_secret(m: re.Match) -> str:
    """A bare 40-character AWS secret access key: random base64, not a hash, a path, an identifier or base64 data."""
    value = re.sub(r"%2[Ff]", "/", re.sub(r"%2[Bb]", "+", m.group(0)))
    if not (re.search(r"[a-z]", value) and re.search(r"[A-Z]", value) and re.search(r"\d", value)):
        return m.group(0)  # hex digests, upper-case ids, words
    counts = Counter(value)
    entropy = -sum(n / 40 * math.log2(n / 40) for n in counts.values())
    wordy = sum(len(w) for w in re.findall(r"[a-z]{3,}", value)) / 40
    if entropy < 4.3 or wordy > 0.55:
        return m.group(0)  # camelCase names and wordy paths: random keys measure >= 4.3 bits/char
    parts = [p for p in value.split("/") if p]
    if len(parts) >= 3 and all(_WORD.fullmatch(p) for p in parts):
        return m.group(0)  # a path of words: /home/hal/v4/PROJECTS/t2/src/theme/index
    text, start, end = m.string, m.start(), m.end()
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    if not text[line_start:start].strip() and not text[end:line_end].strip():
        # alone on its line: the last line of wrapped base64 (an image) is not a key
        prev = text[text.rfind("\n", 0, max(0, line_start - 1)) + 1:max(0, line_start - 1)].strip()
        nxt_end = text.find("\n", line_end + 1)
        nxt = text[line_end + 1:len(text) if nxt_end < 0 else nxt_end].strip()
        if _B64_LINE.fullmatch(prev) or _B64_LINE.fullmatch(nxt):
            return m.group(0)
    return "[REDACTED-AWS-SECRET]"


_RULES: list[Rule] = [
    ("private_key", re.compile(
        r"(-----BEGIN(?: |%20)(?:[A-Z0-9]+(?: |%20))*PRIVATE(?: |%20)KEY-----)(?!\n\[REDACTED)[\s\S]*?"
        r"(-----END(?: |%20)(?:[A-Z0-9]+(?: |%20))*PRIVATE(?: |%20)KEY-----)"),
     r"\1\n[REDACTED-PRIVATE-KEY]\n\2", ("PRIVATE KEY", "PRIVATE%20KEY")),
    # user:password@ where the password may hold / : @ $ % (an @ only when another @ follows in the same word)
    ("url_password", re.compile(
        r"\b([a-zA-Z][a-zA-Z0-9+.-]{1,20}://)([^:/\s@\[\]]*):(?!\[REDACTED\])"
        r"((?:[^\s@\"'`<>]|@(?=[^\s@\"'`<>]*@)){1,200})@(?=[\w.\[-])"),
     _url_password, ("://",)),
    ("jwt", re.compile(_B + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), "eyJ[REDACTED-JWT]", ("eyJ",)),
    ("anthropic_key", re.compile(_B + r"sk-ant-[A-Za-z0-9_-]{16,}"), "sk-ant-[REDACTED]", ("sk-ant-",)),
    ("openai_key", re.compile(_B + r"sk-proj-[A-Za-z0-9_-]{16,}"), "sk-proj-[REDACTED]", ("sk-proj-",)),
    ("openai_key", re.compile(_B + r"sk-(?!ant-|proj-)(?=[A-Za-z0-9]*\d)[A-Za-z0-9]{20,}\b"), "sk-[REDACTED]", ("sk-",)),
    ("github_token", re.compile(_B + r"(gh[pousr])_[A-Za-z0-9]{30,}\b"), r"\1_[REDACTED]", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    ("github_token", re.compile(_B + r"github_pat_[A-Za-z0-9_]{22,}"), "github_pat_[REDACTED]", ("github_pat_",)),
    ("aws_key", re.compile(_B + r"(AKIA|ASIA)[0-9A-Z]{16}\b"), r"\1[REDACTED]", ("AKIA", "ASIA")),
    ("aws_key", re.compile(r"(?i)\b(aws_secret_access_key\s*[=:]\s*[\"']?)(?!\[REDACTED)[A-Za-z0-9/+=]{40}\b"),
     r"\1[REDACTED]", ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY")),
    # the same secret without its name: exactly 40 base64 characters (%2F and %2B count as one), standing alone
    ("aws_key", re.compile(
        r"(?:(?<![A-Za-z0-9/+_%-])|(?<=%[0-9A-Fa-f]{2}))(?<!%2[FfBb])(?:%2[FfBb]|[A-Za-z0-9/+]){40}"
        r"(?![A-Za-z0-9/+=_-]|%2[FfBb])"), _aws_secret, ()),
    ("google_key", re.compile(_B + r"AIza[0-9A-Za-z_-]{35}\b"), "AIza[REDACTED]", ("AIza",)),
    ("slack_token", re.compile(_B + r"(xox[abposr])-[A-Za-z0-9-]{10,}"), r"\1-[REDACTED]", ("xox",)),
    ("stripe_key", re.compile(_B + r"((?:sk|rk)_live)_[A-Za-z0-9]{16,}"), r"\1_[REDACTED]", ("_live_",)),
    ("bearer_token", re.compile(
        _B + r"([Bb]earer(?:\s+|%20|\+))(?!\[REDACTED)(?=[A-Za-z0-9._~+/-]*\d)[A-Za-z0-9._~+/_-]{16,}=*"),
     r"\1[REDACTED]", ("Bearer", "bearer")),
    ("password", re.compile(
        _SECRET_NAME + r"""(?:(["'])([^"'\n]{1,200})\2|([^\s'"`(){}\[\],;&<>]{1,200})(?=[\s,;)}\]&<>`'"]|$))""",
        re.MULTILINE), _named_secret, ()),
    # The local part starts at a word start, after a percent-escape, or after a file name's UTC stamp
    # (``2025-11-16T09-50-22Z-carol@x.org``: the stamp stays); the @ may be percent-encoded.
    ("email", re.compile(
        r"(?:(?<![\w.%+-])(?!\d{4}-\d{2}-\d{2}T\d)|(?<=%[0-9A-Fa-f]{2})|(?<=\d[Zz]-))"
        r"([A-Za-z0-9][A-Za-z0-9._%+-]{0,63}?)(@|%40)([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24})\b"),
     _email, ("@", "%40")),
    ("phone", re.compile(
        r"(?<![\w.+/-])(?:(?:\+|%2B)\d{1,3}(?:[ .-]|%20)?\(?\d{1,4}\)?(?:(?:[ .-]|%20)\d{2,4}){2,3}|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[ .]\d{3}[ .]\d{4}|\d{3}-\d{3}-\d{4})(?![\w/-]|\.\d)"),
     "[REDACTED-PHONE]", ()),
    ("home_path", re.compile(
        r"(/Users/|/home/|%2[Ff](?:Users|home)%2[Ff]|[A-Za-z]:(?:\\\\?|/)Users(?:\\\\?|/))([A-Za-z0-9._-]+|\[USER\])"
        r"(?=[/\\\s'\"`),:;%]|$)", re.MULTILINE), _home, ("/Users/", "/home/", "Users\\", "Users/", "%2F", "%2f")),
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


# Hashes and keys the store joins on; everything else, file names, paths and checkpoint refs included, is redacted.
# A ref is redacted where it is defined (the checkpoint's file name) and where it is named (a session's
# **Checkpoint:**) by the same function of the same string, so the link still holds; identities were computed from
# the original before redaction and stay as they are.
_KEEP = frozenset({"identity", "source_sha256", "session_identity", "source_format", "privacy_level", "kind", "role"})


def redact_local_path(path: Path | str) -> str:
    """A local folder as the store keeps it (``submodule_registry``): under the user's home as ``~/...``, which
    the same user's ctx expands again (`ctx validate` re-reads the files), anywhere else redacted like text."""
    path = Path(path)
    try:
        relative = path.relative_to(Path.home())
    except ValueError:
        return redact(path.as_posix())[0]
    return redact("~" if relative == Path(".") else "~/" + relative.as_posix())[0]


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
