"""Crashes and absurd input: a real `ctx` subprocess killed with SIGKILL exactly at each point where a crash matters
(coditect_ctx/points.py, reached under CTX_PAUSE_AT), then rerun; and one record of a 20 MB line, bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from coditect_ctx.stores import Store

from .conftest import settings_env

ABSURD_MB = 20


def _absurd_source(folder: Path) -> tuple[Path, str]:
    """A MEMORY-CONTEXT holding one session whose body is a single 20 MB line; and that line."""
    sessions = folder / "MEMORY-CONTEXT" / "sessions"
    sessions.mkdir(parents=True)
    words = "retry policy chroma embedding batch redis eviction schema migration checkpoint vector latency".split()
    line = " ".join(words[i % len(words)] + str(i % 997) for i in range(ABSURD_MB * 1024 * 1024 // 12))
    (sessions / "2025-03-10-One-absurd-line.md").write_text(f"# Session: One absurd line\n\n**Date:** 2025-03-10\n\n{line}\n")
    return folder, line


def _run_measured(settings, *args: str, extra_env: dict | None = None) -> tuple[int, str, float]:
    """Exit code, stdout and peak resident memory (MB, from wait4) of one real `ctx` child."""
    env = {**os.environ, **settings_env(settings), **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "coditect_ctx", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, out, usage.ru_maxrss / 1024


def test_an_absurd_record_embeds_its_first_chunks_only_in_bounded_memory(fresh_stack, tmp_path):
    source, line = _absurd_source(tmp_path / "absurd")
    code, out, peak_mb = _run_measured(fresh_stack, "migrate", str(source), "--json",
                                       extra_env={"CTX_EMBED_MAX_CHUNKS": "16"})
    report = json.loads(out)
    assert code == 0, report
    assert report["embedded_records"] == 1 and report["embedded_vectors"] == 16
    assert report["embed_capped"] == 1 and report["embed_max_chunks"] == 16
    assert peak_mb < 1024, f"ctx migrate peaked at {peak_mb:.0f} MB on one {ABSURD_MB} MB line"
    with Store(fresh_stack) as store, store.pg() as conn:
        stored, chunks = conn.execute("SELECT length(content), embedded_chunks FROM sessions").fetchone()
    assert stored >= len(line) and chunks == 16  # the whole text kept, its first 16 chunks embedded
    again = subprocess.run([sys.executable, "-m", "coditect_ctx", "validate"], env={**os.environ, **settings_env(fresh_stack)},
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stdout + again.stderr
    human = subprocess.run([sys.executable, "-m", "coditect_ctx", "migrate", str(source)],
                           env={**os.environ, **settings_env(fresh_stack), "CTX_EMBED_MAX_CHUNKS": "16"},
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert human.returncode == 0 and "embedded: 0 records" in human.stdout

