"""The price of Chroma's token: `chroma run` (Rust, no authentication) against chromadb's Python server with token
authentication (uvicorn chromadb.app:app, what ctx runs), on the same data, in the same run.

Run: .venv/bin/python bench/bench_chroma_auth.py [--records 5000] [--rounds 2] [--keep]
A local store of its own (temporary CTX_HOME, free ports) gets the sample data migrated with the real model, then
synthetic messages with random unit vectors until it holds --records records (bench_search's grow), and one
backup. Then, alternately for each server on the same Chroma folder and port (the other one stopped): in-process
hybrid search over bench/eval_queries.json (cache off, warm process) and `ctx restore --portable` of that backup
(deletes and re-upserts every vector). Prints figures and ratios (token / no auth), no pass/fail: the machine is
shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from bench_backup import fresh_store, remove_store  # noqa: E402
from bench_search import grow, record_count  # noqa: E402

from coditect_ctx.runtime import chroma_server, probes, procs  # noqa: E402
from coditect_ctx.runtime.base import wait_until  # noqa: E402
from coditect_ctx.runtime.local import find_chroma  # noqa: E402

SAMPLE = REPO / "coditect_ctx" / "samples" / "coditect-demo"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def swap_chroma(settings, variant: str) -> float:
    """Stop whatever Chroma serves this store and start `variant` on the same folder and port; seconds to ready."""
    run, home = settings.home / "run", settings.home
    folder = home / "chroma"
    pid = procs.live_pid(run / "chroma.pid", procs.Identity(folder))
    if pid:
        procs.terminate(pid)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTX_", "CHROMA_"))}
    env["ANONYMIZED_TELEMETRY"] = "False"
    if variant == "token":
        argv = chroma_server.server_argv(sys.executable, "127.0.0.1", settings.chroma_port)
        env.update(chroma_server.server_env(str(folder), token=settings.chroma_token))
    else:
        argv = [str(find_chroma()), "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(settings.chroma_port)]
    t = time.perf_counter()
    procs.spawn(argv, run / "chroma.pid", home / "logs" / "chroma.log", env=env, cwd=folder)
    url = f"http://127.0.0.1:{settings.chroma_port}"
    wait_until("chroma", lambda: probes.chroma_ready(url, timeout=1.0), 120, log=home / "logs" / "chroma.log",
               alive=lambda: procs.live_pid(run / "chroma.pid", procs.Identity(folder)) is not None)
    return time.perf_counter() - t


def refused_without_token(settings) -> bool:
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{settings.chroma_port}/api/v2/tenants/default_tenant/databases/default_database/collections"
    try:
        urllib.request.urlopen(url, timeout=5)
        return False
    except urllib.error.HTTPError as exc:
        return exc.code in (401, 403)


def search_times(settings, queries: list[str]) -> list[float]:
    from coditect_ctx.search import Searcher, make_query

    with Searcher(settings) as searcher:
        searcher.search(make_query("warm up the model and connections"), use_cache=False)
        out = []
        for q in queries:
            t = time.perf_counter()
            searcher.search(make_query(q), use_cache=False)
            out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two servers")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    from coditect_ctx import stack
    from coditect_ctx.backup import create_backup
    from coditect_ctx.migrate import run_migrate
    from coditect_ctx.restore import restore_backup
    from coditect_ctx.stores import Store

    settings = fresh_store("ctx-bench-auth-", setup=False, redis_server="none")
    queries = [q["q"] for q in json.loads((BENCH / "eval_queries.json").read_text())["queries"]]
    try:
        stack.setup(settings)
        run_migrate(settings, [SAMPLE], embed=True)
        grow(settings, args.records)
        with Store(settings) as store:
            with store.pg() as conn:
                records = record_count(conn)
            vectors = sum(store.chroma.count(c["name"]) for c in store.chroma.list_collections())
        backup = create_backup(settings)
        print(f"store: {records} records, {vectors} vectors; {len(queries)} questions per round; cache off")

        results: dict[str, dict[str, list[float]]] = {v: {"search": [], "restore": [], "start": []} for v in ("none", "token")}
        for rnd in range(args.rounds):
            for variant in ("none", "token"):
                results[variant]["start"].append(swap_chroma(settings, variant))
                if variant == "token" and not refused_without_token(settings):
                    raise SystemExit("the token server answered a request without a token")
                results[variant]["search"] += search_times(settings, queries)
                t = time.perf_counter()
                restore_backup(settings, backup.path, yes=True, portable=True)  # re-upserts every vector
                results[variant]["restore"].append(time.perf_counter() - t)
                print(f"  round {rnd + 1}, {variant}: done", file=sys.stderr)

        def row(name: str, f) -> None:
            a, b = f(results["none"]), f(results["token"])
            print(f"{name:34}{a:12.1f}{b:12.1f}{b / a:10.2f}")

        print(f"\n{'':34}{'chroma run':>12}{'token srv':>12}{'ratio':>10}")
        row("hybrid search p50 (ms)", lambda r: 1000 * pct(r["search"], 50))
        row("hybrid search p95 (ms)", lambda r: 1000 * pct(r["search"], 95))
        row("ctx restore, best of rounds (s)", lambda r: min(r["restore"]))
        row("server start to heartbeat (s)", lambda r: min(r["start"]))
        print("ratio = token server / chroma run (no authentication); same data, same port, alternated")
    finally:
        if not args.keep:
            remove_store(settings)


if __name__ == "__main__":
    main()
