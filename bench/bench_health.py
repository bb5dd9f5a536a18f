"""`ctx health` wall time beside the plain checks it replaces, in the same run, on the same store.

Usage: python bench/bench_health.py [RUNS]   (default 10 runs of each)

Starts a fresh local store in a temporary CTX_HOME, then times whole processes: `pg_isready`, `redis-cli ping`,
`curl` on Chroma's v2 heartbeat, the three in sequence, and `ctx health --format nagios` (which also checks the
schema, collections, disk, drift and backups). Then stops PostgreSQL and times `ctx health` again: a dead service
must cost at most one short timeout.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coditect_ctx import stack  # noqa: E402
from coditect_ctx.runtime.local import LocalRuntime, embedded_pg_bin, find_redis_server  # noqa: E402
from tests.conftest import make_settings, settings_env  # noqa: E402


def timed(argv: list[str], env: dict, runs: int) -> tuple[float, float, int]:
    times, code = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        code = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        times.append(time.perf_counter() - t)
    return statistics.median(times), max(times), code


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    settings = make_settings(Path(tempfile.mkdtemp(prefix="ctx-bench-", dir="/tmp")))
    stack.setup(settings, prepare_model=False)
    env = {**os.environ, **settings_env(settings)}
    redis_cli = find_redis_server(settings).with_name("redis-cli")
    pg = [str(embedded_pg_bin() / "pg_isready"), "-h", "127.0.0.1", "-p", str(settings.pg_port), "-t", "3"]
    redis = [str(redis_cli), "-h", "127.0.0.1", "-p", str(settings.redis_port), "--no-auth-warning", "ping"]
    redis_env = {**env, "REDISCLI_AUTH": settings.redis_password}
    curl = ["curl", "-fsS", "-m", "3", f"http://127.0.0.1:{settings.chroma_port}/api/v2/heartbeat"]
    three = ["sh", "-c", " && ".join(" ".join(c) for c in (pg, redis, curl))]
    health = [sys.executable, "-m", "coditect_ctx", "health", "--format", "nagios"]
    try:
        print(f"{runs} runs each, whole processes, median / max wall time")
        rows = [
            ("pg_isready", timed(pg, env, runs)),
            ("redis-cli ping", timed(redis, redis_env, runs)),
            ("curl /api/v2/heartbeat", timed(curl, env, runs)),
            ("all three, in sequence", timed(three, redis_env, runs)),
            ("ctx health --format nagios", timed(health, env, runs)),
        ]
        base = rows[3][1][0]
        for name, (median, worst, code) in rows:
            print(f"  {name:<28} {median * 1000:7.0f} ms  (max {worst * 1000:5.0f} ms, exit {code})  {median / base:5.1f}x the three")
        LocalRuntime(settings)._pg_ctl(["stop", "-m", "fast", "-w"])
        median, worst, code = timed(health, env, max(3, runs // 3))
        print(f"  {'ctx health, PostgreSQL down':<28} {median * 1000:7.0f} ms  (max {worst * 1000:5.0f} ms, exit {code})")
    finally:
        stack.down(settings, volumes=True)


if __name__ == "__main__":
    main()
