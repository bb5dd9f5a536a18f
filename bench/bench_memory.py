"""Peak memory of a real `ctx migrate` subprocess: the samples (a normal input) vs one absurd record (a 20 MB line).

Usage: python bench/bench_memory.py [--mb 20] [PATH ...]   (default baseline: the shipped samples, coditect-demo)

Starts a fresh store in a temporary CTX_HOME (local runtime, free ports), runs `ctx migrate` as a child process on
the baseline, then on a generated MEMORY-CONTEXT whose one session file is a single line of `--mb` megabytes of
words, and prints each run's own peak resident memory (tests/conftest.run_measured), wall time, vectors, and the ratio to the
baseline. The bound to hold: under 1 GB on any input (CTX_EMBED_MAX_CHUNKS caps a record's vectors).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coditect_ctx import stack  # noqa: E402
from tests.conftest import make_settings, run_measured, settings_env  # noqa: E402

WORDS = ("retry policy chroma client embedding batch redis cache eviction schema migration session checkpoint "
         "postgres vector search index token window pool exhaustion deploy staging rollback latency").split()


def absurd_source(folder: Path, mb: int) -> Path:
    """A MEMORY-CONTEXT with one session file: a heading, then one line of `mb` MB of words (no newline)."""
    sessions = folder / "MEMORY-CONTEXT" / "sessions"
    sessions.mkdir(parents=True)
    rng = random.Random(10)
    line = " ".join(rng.choice(WORDS) for _ in range(mb * 1024 * 1024 // 7))[: mb * 1024 * 1024]
    (sessions / "2025-03-10-One-absurd-line.md").write_text(f"# Session: One absurd line\n\n**Date:** 2025-03-10\n\n{line}\n")
    return folder


def migrate_peak(settings, path: Path) -> tuple[float, float, dict]:
    """Peak RSS (MB) and wall seconds of one `ctx migrate PATH --json` process, and its report."""
    env = {**os.environ, **settings_env(settings)}
    t0 = time.perf_counter()
    code, out, err, peak = run_measured([sys.executable, "-m", "coditect_ctx", "migrate", str(path), "--json"], env)
    wall = time.perf_counter() - t0
    if code != 0:
        print(f"  ({path.name}: exit {code}: {err.strip()[-300:]})", flush=True)
    return peak, wall, json.loads(out) if out.strip() else {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=20)
    parser.add_argument("paths", nargs="*")
    args = parser.parse_args()
    baseline = [Path(p) for p in args.paths] or [REPO / "coditect_ctx" / "samples" / "coditect-demo"]
    scratch = Path(tempfile.mkdtemp(prefix="ctx-bench-mem-", dir="/tmp"))
    settings = make_settings(scratch / "home")
    stack.setup(settings, prepare_model=True)
    try:
        rows = []
        for path in baseline:
            rows.append((path.name, *migrate_peak(settings, path)))
        huge = absurd_source(scratch / "absurd", args.mb)
        rows.append((f"one {args.mb} MB line", *migrate_peak(settings, huge)))
        base = rows[0][1]
        print(f"ctx migrate peak memory (its own ru_maxrss), fresh store, CTX_EMBED_MAX_CHUNKS="
              f"{settings.embed_max_chunks}")
        for name, peak, wall, report in rows:
            print(f"  {name:<22} peak {peak:7.0f} MB  ({peak / base:4.2f}x baseline)  wall {wall:6.1f} s  "
                  f"vectors {report.get('embedded_vectors', '?')}")
        worst = max(r[1] for r in rows)
        print(f"worst peak {worst:.0f} MB: {'under' if worst < 1024 else 'OVER'} the 1 GB bound")
    finally:
        stack.down(settings, volumes=True)


if __name__ == "__main__":
    main()
