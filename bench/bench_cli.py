"""Whole-process cost of the command line itself: `ctx search`'s fast path, and this tree against a baseline.

    python bench/bench_cli.py [--runs 10] [--baseline-ref REF] [--models DIR]

Starts a fresh local store in a temporary CTX_HOME, migrates the demo samples, runs one search to fill the cache,
then times whole processes (p50 over --runs, runs interleaved so noise hits both sides alike):

1. the cached search through the fast path (`ctx search ...` as installed) against the same command line forced
   through Typer (`app()` directly): is parse_fast still worth keeping?
2. with --baseline-ref: the cached `ctx search` and `ctx health --format nagios` of this tree against those of REF
   (exported with `git archive` into a temporary folder, same interpreter and store): did a change to the command
   line (e.g. shell completion) slow them down? Also the cost of one completion request.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coditect_ctx import stack  # noqa: E402
from coditect_ctx.embed import ensure_onnx  # noqa: E402
from tests.conftest import make_settings, settings_env  # noqa: E402

DEMO = REPO / "coditect_ctx" / "samples" / "coditect-demo"
QUERY = ["search", "redis eviction policy", "--limit", "3"]
FAST = "import sys; sys.argv[0] = 'ctx'; from coditect_ctx.cli import main; main()"
TYPER = "import sys; sys.argv[0] = 'ctx'; from coditect_ctx.cli import app; app(prog_name='ctx')"


def run(argv: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t, proc


def interleaved(cases: dict[str, tuple[list[str], dict]], runs: int) -> dict[str, float]:
    """p50 seconds per case; every round runs each case once. The first output of each is kept for a sanity check."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, (argv, env) in cases.items():
            took, proc = run(argv, env)
            if proc.returncode not in (0, 1):
                sys.exit(f"{name}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
            times[name].append(took)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--baseline-ref", help="a git ref to compare with (e.g. main, HEAD~1)")
    parser.add_argument("--models", type=Path, help="an existing ONNX export folder to reuse (else one is made)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="ctx-bench-cli-", dir="/tmp"))
    settings = make_settings(home)
    stack.setup(settings, prepare_model=False)
    models = home / "models"
    if args.models:
        models.symlink_to(args.models.resolve(), target_is_directory=True)
    ensure_onnx(models)
    base_dir = None
    try:
        env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(REPO), "COLUMNS": "120"}
        py = sys.executable
        _, migrated = run([py, "-m", "coditect_ctx", "migrate", str(DEMO)], env)
        assert migrated.returncode == 0, migrated.stderr
        _, first = run([py, "-c", FAST, *QUERY], env)  # fills the cache
        fast_out, typer_out = run([py, "-c", FAST, *QUERY], env)[1], run([py, "-c", TYPER, *QUERY], env)[1]
        assert fast_out.stdout == typer_out.stdout == first.stdout and fast_out.stdout.strip(), (fast_out, typer_out)

        print(f"whole processes, p50 of {args.runs} interleaved runs; cached `ctx {' '.join(QUERY)}`")
        p50 = interleaved({"fast": ([py, "-c", FAST, *QUERY], env), "typer": ([py, "-c", TYPER, *QUERY], env)}, args.runs)
        print(f"  search via fast path      {p50['fast'] * 1000:6.0f} ms")
        print(f"  search forced thru Typer  {p50['typer'] * 1000:6.0f} ms   {p50['typer'] / p50['fast']:.2f}x the fast path")

        if args.baseline_ref:
            base_dir = Path(tempfile.mkdtemp(prefix="ctx-bench-cli-base-", dir="/tmp"))
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline_ref, "coditect_ctx"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base_dir)], input=archive, check=True)
            base_env = {**env, "PYTHONPATH": str(base_dir)}
            health = ["-m", "coditect_ctx", "health", "--format", "nagios"]
            cases = {
                "search (this tree)": ([py, "-m", "coditect_ctx", *QUERY], env),
                f"search ({args.baseline_ref})": ([py, "-m", "coditect_ctx", *QUERY], base_env),
                "health (this tree)": ([py, *health], env),
                f"health ({args.baseline_ref})": ([py, *health], base_env),
                "completion `ctx logs <TAB>`": ([py, "-m", "coditect_ctx"],
                                                {**env, "_CTX_COMPLETE": "complete_bash", "COMP_WORDS": "ctx logs ",
                                                 "COMP_CWORD": "2"}),
            }
            p50 = interleaved(cases, args.runs)
            print(f"this tree against {args.baseline_ref} (same store, same interpreter)")
            names = list(cases)
            for this, base in ((names[0], names[1]), (names[2], names[3])):
                print(f"  {this:<28} {p50[this] * 1000:6.0f} ms   {base:<20} {p50[base] * 1000:6.0f} ms"
                      f"   ratio {p50[this] / p50[base]:.2f}")
            print(f"  {names[4]:<28} {p50[names[4]] * 1000:6.0f} ms")
    finally:
        stack.down(settings, volumes=True)
        shutil.rmtree(home, ignore_errors=True)
        if base_dir:
            shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
