"""Migrate throughput against the physical limit: the model alone embedding the same texts, in the same run.

Usage: python bench/bench_migrate.py [PATH ...]   (default: ../shared/corpus/coditect-master and coditect-core)

Starts a fresh store in a temporary CTX_HOME (local runtime, free ports), runs `run_migrate` on the corpus and
times each phase; then takes the exact chunk texts migrate embedded (Chroma's documents) and times
embed.embed_documents on them alone. Prints records/s, chunks/s and the ratio migrate/model. Also times a second
migrate of the same input (nothing to do: the cost of checking).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coditect_ctx import stack  # noqa: E402
from coditect_ctx.embed import embed_documents  # noqa: E402
from coditect_ctx.migrate import run_migrate  # noqa: E402
from coditect_ctx.stores import Store  # noqa: E402
from coditect_ctx.stores.chroma import COLLECTIONS  # noqa: E402
from tests.conftest import make_settings  # noqa: E402


def main() -> None:
    corpus = REPO.parent / "shared" / "corpus"
    paths = [Path(p) for p in sys.argv[1:]] or [corpus / "coditect-master", corpus / "coditect-core"]
    settings = make_settings(Path(tempfile.mkdtemp(prefix="ctx-bench-", dir="/tmp")))
    stack.setup(settings, prepare_model=True)
    try:
        t0 = time.perf_counter()
        report = run_migrate(settings, paths)
        wall = time.perf_counter() - t0
        totals = report.totals()
        records = sum(t["imported"] for t in totals.values())
        print(f"input: {', '.join(str(p) for p in paths)}")
        for kind, t in sorted(totals.items()):
            print(f"  {kind:<10} read {t['read']:>6}  imported {t['imported']:>6}  skipped {t['skipped']:>4}  failed {t['failed']}")
        print(f"phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items()))
        print(f"migrate: {records} records, {report.embedded_vectors} vectors in {wall:.1f} s = "
              f"{records / wall:.1f} records/s, {report.embedded_vectors / wall:.1f} chunks/s")

        with Store(settings) as store:
            texts = []
            for name in COLLECTIONS.values():
                for page in store.chroma.iter_all(name, include=("documents",)):
                    texts.extend(page["documents"])
        t1 = time.perf_counter()
        embed_documents(texts, settings.models_path)
        model = time.perf_counter() - t1
        print(f"model alone: {len(texts)} chunks in {model:.1f} s = {len(texts) / model:.1f} chunks/s "
              f"({records / model:.1f} records/s equivalent)")
        print(f"ratio migrate/model throughput: {model / wall:.2f} (target >= 0.8)")

        t2 = time.perf_counter()
        again = run_migrate(settings, paths)
        print(f"second migrate (nothing to do): {time.perf_counter() - t2:.1f} s, "
              f"imported {sum(t['imported'] for t in again.totals().values())}")
    finally:
        stack.down(settings, volumes=True)


if __name__ == "__main__":
    main()
