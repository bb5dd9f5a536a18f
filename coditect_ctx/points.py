"""Named points where a crash matters: a test seam, so tests kill a real `ctx` run exactly there.

With `CTX_PAUSE_AT=<name>` in its environment, a run that reaches that point prints `point: <name>` on stderr and
sleeps there until it is killed (tests send SIGKILL, then check that a rerun ends as an uninterrupted run does), or,
with `CTX_PAUSE_RELEASE=<file>` too, until that file exists (tests break a service while the run holds still, then
let it go on). Unset, as always outside the tests, `reach` is one environment lookup. Below every job: imports
nothing of ctx.
"""

from __future__ import annotations

import os
import sys
import time

POINTS = {
    "migrate-read": "migrate: every file read and redacted, nothing written",
    "migrate-write": "migrate: rows upserted inside the PostgreSQL transaction, not committed",
    "migrate-committed": "migrate: the transaction committed, nothing embedded",
    "embed-batch": "migrate: one embedding batch stored and marked, the next not started",
    "embed-upserted": "migrate: a batch's vectors upserted into Chroma, its rows not yet marked embedded",
    "backup-dump": "backup: PostgreSQL dumped into the partial folder, vectors not exported",
    "backup-upload": "backup: the first file uploaded to object storage, the others and the manifest not",
    "restore-load": "restore: PostgreSQL replaced and one collection reloaded, the others not",
    "restore-swap": "restore from a snapshot: PostgreSQL replaced, Chroma stopped, its folder moved aside, the "
                    "snapshot's not yet in place",
}


def reach(name: str) -> None:
    if os.environ.get("CTX_PAUSE_AT") != name:
        return
    sys.stderr.write(f"point: {name}\n")
    sys.stderr.flush()
    release = os.environ.get("CTX_PAUSE_RELEASE")
    while not (release and os.path.exists(release)):  # held here until the test kills the process or releases it
        time.sleep(0.05 if release else 60)
