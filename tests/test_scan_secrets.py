"""bench/scan_secrets.py, the independent check on the redactor, must not explain a real credential away.

Its classes of harmless shapes (identifiers, hex digests, keywords with no value) fit the values some named-format
detectors report: an AWS access key id looks "wordy" (AKIA...EXAMPLE) and detect-secrets' GitHub detector reports
only the prefix "ghp". Only a redaction marker may explain what a named-format detector found.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .test_redact import AWS, GHP, SLACK

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "scan_secrets.py"


def _scanner():
    spec = importlib.util.spec_from_file_location("scan_secrets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unredacted_credentials_are_unexplained_and_redacted_ones_and_hashes_are_not():
    scan_secrets = _scanner()
    leaked = f"deploy notes: token {GHP} then key {AWS} and {SLACK} in the chat"
    redacted = "deploy notes: token ghp_[REDACTED] then key AKIA[REDACTED], commit 9fceb02d0ae598e95dc970b74767f19372d61af8"
    counts, examples, _ = scan_secrets.scan([("postgres:sessions", [leaked, redacted])])
    unexplained = {kind for kind, _value, _line in examples["unexplained"]}
    assert {"AWS Access Key", "GitHub Token", "Slack Token"} <= unexplained, dict(counts)
    assert all(line == leaked for _kind, _value, line in examples["unexplained"]), examples["unexplained"]
