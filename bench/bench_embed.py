"""Figures behind coditect_ctx.embed's choices: start-up cost and bulk throughput.

Run: .venv/bin/python bench/bench_embed.py [--models-dir DIR] [--paragraphs N]
Prints figures only (no pass/fail): the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
sys.path.insert(0, str(REPO))

from coditect_ctx import embed  # noqa: E402  (light module: no heavy imports at top)


def run_fresh(code: str) -> str:
    """Run code in a fresh interpreter (nothing imported yet) and return its stdout."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def import_seconds(modules: str, repeats: int = 3) -> float:
    code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    return min(float(run_fresh(code)) for _ in range(repeats))


def first_query_seconds(models_dir: Path, repeats: int = 3) -> tuple[float, float]:
    """(process start -> first vector, in-process import+embed) for a fresh process."""
    code = (
        "import time; t = time.perf_counter()\n"
        "from coditect_ctx.embed import QueryEmbedder\n"
        f"v = QueryEmbedder({str(models_dir)!r}).embed('how did we fix the redis cache eviction?')\n"
        "print(time.perf_counter() - t)"
    )
    walls, inner = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        inner.append(float(run_fresh(code)))
        walls.append(time.perf_counter() - start)
    return min(walls), min(inner)


def corpus_paragraphs(limit: int) -> list[str]:
    """Real paragraphs (>= 80 chars) from session and checkpoint Markdown, in a fixed order."""
    folders = ["coditect-master/MEMORY-CONTEXT/sessions", "coditect-master/MEMORY-CONTEXT/checkpoints"]
    paragraphs: list[str] = []
    for folder in folders:
        for path in sorted((CORPUS / folder).glob("*.md")):
            for block in path.read_text(errors="replace").split("\n\n"):
                if len(block.strip()) >= 80:
                    paragraphs.append(block.strip())
                if len(paragraphs) >= limit:
                    return paragraphs
    return paragraphs


def bulk_onnx(texts: list[str], models_dir: Path, batch_size: int) -> float:
    embed.embed_documents(texts[:8], models_dir)  # session warm-up, not counted
    start = time.perf_counter()
    embed.embed_documents(texts, models_dir, batch_size=batch_size)
    return time.perf_counter() - start


def bulk_sentence_transformers(texts: list[str], batch_size: int) -> float:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = SentenceTransformer(str(embed.model_dir()), device="cpu")
    model.encode(texts[:8])
    start = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--paragraphs", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.models_dir is not None:
        report(args.models_dir, args.paragraphs, args.batch_size)
        return
    with tempfile.TemporaryDirectory(prefix="ctx-bench-models-") as scratch:
        report(Path(scratch), args.paragraphs, args.batch_size)


def report(models_dir: Path, paragraph_count: int, batch_size: int) -> None:
    print(f"cores: {os.cpu_count()}  python: {sys.version.split()[0]}")
    start = time.perf_counter()
    embed.ensure_onnx(models_dir)
    print(f"ensure_onnx (export+verify, or reuse): {time.perf_counter() - start:.2f} s  -> {models_dir}")
    start = time.perf_counter()
    embed.ensure_onnx(models_dir)
    print(f"ensure_onnx again (reuse, hashes weights): {time.perf_counter() - start:.2f} s")

    light = import_seconds("onnxruntime, tokenizers")
    heavy = import_seconds("sentence_transformers")
    torch_only = import_seconds("torch")
    print(f"import onnxruntime+tokenizers: {light:.2f} s")
    print(f"import torch:                  {torch_only:.2f} s")
    print(f"import sentence_transformers:  {heavy:.2f} s  ({heavy / light:.0f}x)")

    wall, inner = first_query_seconds(models_dir)
    print(f"first query, fresh process: {wall:.2f} s wall incl. interpreter start, {inner:.2f} s import+embed")

    if not CORPUS.is_dir():
        print(f"bulk: skipped, corpus not found at {CORPUS}")
        return
    texts = corpus_paragraphs(paragraph_count)
    tokenizer = embed._counting_tokenizer()
    lengths = sorted(len(tokenizer.encode(t).ids) for t in texts)
    print(
        f"bulk: {len(texts)} paragraphs, tokens median {lengths[len(lengths) // 2]}, "
        f"max {lengths[-1]} (window 256), batch {batch_size}"
    )
    onnx_s = bulk_onnx(texts, models_dir, batch_size)
    st_s = bulk_sentence_transformers(texts, batch_size)
    print(f"bulk onnxruntime (embed_documents): {len(texts) / onnx_s:6.1f} paragraphs/s ({onnx_s:.1f} s)")
    print(f"bulk sentence-transformers:         {len(texts) / st_s:6.1f} paragraphs/s ({st_s:.1f} s)")
    print(f"ratio onnxruntime / sentence-transformers: {st_s / onnx_s:.2f}x")


if __name__ == "__main__":
    main()
