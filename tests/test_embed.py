"""The embedding model, for real: ONNX export vs sentence-transformers, chunking, start-up imports."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coditect_ctx import embed

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"

VARIED_TEXTS = [
    "",
    "ok",
    "Redis cache eviction broke the session lookup after the deploy.",
    "# CODITECT Checkpoint: Sprint 3\n\n**Status:** in progress\n\n- [x] migrate sessions\n- [ ] dedup",
    'def handler(event):\n    return {"status": 200, "body": json.dumps(event)}',
    "Ünïcödé, 日本語のテキスト, emoji 🎉 and a path /Users/someone/project",
    "The checkpoint records the git status of every submodule. " * 40,  # > 256 tokens: truncated alike
]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """One export per test run, shared by every test here."""
    directory = tmp_path_factory.mktemp("models")
    embed.ensure_onnx(directory)
    return directory


@pytest.fixture(scope="session")
def reference_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embed.model_dir()), device="cpu")


@pytest.fixture(scope="session")
def token_count():
    """Tokens the model would see, [CLS] and [SEP] included, with no truncation."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(embed.model_dir() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return lambda text: len(tokenizer.encode(text).ids)


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_model_dir_is_the_packaged_model():
    folder = embed.model_dir()
    assert (folder / "model.safetensors").is_file()
    config = json.loads((folder / "sentence_bert_config.json").read_text())
    assert config["max_seq_length"] == embed.MAX_SEQ_LENGTH == 256


def test_query_vectors_equal_sentence_transformers(models_dir, reference_model):
    embedder = embed.QueryEmbedder(models_dir)
    expected = reference_model.encode(VARIED_TEXTS, normalize_embeddings=True).tolist()
    for text, want in zip(VARIED_TEXTS, expected):
        assert cosine(embedder.embed(text), want) > 0.9999, text[:40]


def test_bulk_vectors_equal_sentence_transformers_in_input_order(models_dir, reference_model):
    progress: list[int] = []
    got = embed.embed_documents(VARIED_TEXTS, models_dir, batch_size=3, on_batch=progress.append)
    expected = reference_model.encode(VARIED_TEXTS, normalize_embeddings=True).tolist()
    assert len(got) == len(VARIED_TEXTS)
    for text, vector, want in zip(VARIED_TEXTS, got, expected):
        assert cosine(vector, want) > 0.9999, text[:40]
    assert progress == [3, 6, 7]


def test_vectors_have_384_dimensions_and_unit_norm(models_dir):
    vector = embed.QueryEmbedder(models_dir).embed("how did we fix the flaky migration test?")
    assert len(vector) == embed.DIMENSION == 384
    assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)
    for bulk in embed.embed_documents(["one", "two three"], models_dir):
        assert len(bulk) == 384
        assert math.sqrt(sum(x * x for x in bulk)) == pytest.approx(1.0, abs=1e-5)


def test_close_meanings_score_higher_than_unrelated(models_dir):
    embedder = embed.QueryEmbedder(models_dir)
    query = embedder.embed("The database connection timed out")
    close = embedder.embed("PostgreSQL refused the connection after a timeout")
    unrelated = embedder.embed("I baked a chocolate cake for my sister's birthday")
    assert cosine(query, close) > cosine(query, unrelated) + 0.2


def test_missing_export_raises_with_setup_hint(tmp_path):
    embedder = embed.QueryEmbedder(tmp_path)  # lazy: nothing happens yet
    with pytest.raises(embed.OnnxModelMissing) as caught:
        embedder.embed("anything")
    assert "ctx setup" in caught.value.hint


def test_ensure_onnx_reuses_the_export(models_dir):
    path = models_dir / embed.ONNX_FILE
    before = path.stat().st_mtime_ns
    assert embed.ensure_onnx(models_dir) == path
    assert path.stat().st_mtime_ns == before
    assert not list(models_dir.glob("*.tmp"))


def test_query_path_never_imports_torch(models_dir):
    code = (
        "import json, sys\n"
        "from coditect_ctx import embed\n"
        f"d = {str(models_dir)!r}\n"
        "v = embed.QueryEmbedder(d).embed('where is the redis config?')\n"
        "embed.embed_documents(['a', 'b c'], d)\n"
        "embed.chunk_text('word ' * 1000)\n"
        "heavy = ['torch', 'sentence_transformers', 'transformers', 'chromadb']\n"
        "print(json.dumps({'dim': len(v), 'loaded': [m for m in heavy if m in sys.modules]}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"dim": 384, "loaded": []}


# --- chunking -------------------------------------------------------------------


def assert_chunks_cover(text: str, chunks: list[str]) -> None:
    """Chunks are verbatim slices, in order, and every non-blank character is in one."""
    covered = [False] * len(text)
    position = 0
    for chunk in chunks:
        start = text.find(chunk, position)
        assert start >= 0, f"chunk is not an in-order slice of the text: {chunk[:60]!r}"
        for i in range(start, start + len(chunk)):
            covered[i] = True
        position = start + 1
    missed = [i for i, c in enumerate(text) if not c.isspace() and not covered[i]]
    assert not missed, f"text not covered near {text[missed[0]:missed[0] + 40]!r}"


def test_short_text_is_one_chunk():
    assert embed.chunk_text("  Fixed the Redis TTL bug.\n") == ["Fixed the Redis TTL bug."]
    assert embed.chunk_text("   \n ") == []


def test_long_text_chunks_fit_the_window_and_cover_it(token_count):
    paragraphs = [
        f"## Step {n}\n\n" + " ".join(f"Sentence {n}.{s} explains change {s} to the sync worker." for s in range(12))
        for n in range(8)
    ]
    text = "\n\n".join(paragraphs)
    assert token_count(text) > 3 * 256
    chunks = embed.chunk_text(text)
    assert len(chunks) >= 4
    assert all(token_count(chunk) <= 256 for chunk in chunks)
    assert_chunks_cover(text, chunks)


def test_chunks_break_at_paragraphs_when_they_fit(token_count):
    paragraphs = [f"Paragraph {n}: " + "the migration copies sessions into postgres. " * 9 for n in range(6)]
    assert all(60 < token_count(p) < 120 for p in paragraphs)
    chunks = embed.chunk_text("\n\n".join(paragraphs), overlap=0)
    assert len(chunks) > 1
    for chunk in chunks:
        assert all(part.strip() in [p.strip() for p in paragraphs] for part in chunk.split("\n\n"))


def test_consecutive_chunks_overlap():
    text = " ".join(f"Fact number {n} about the checkpoint index." for n in range(200))
    chunks = embed.chunk_text(text, overlap=32)
    assert len(chunks) > 2
    for first, second in zip(chunks, chunks[1:]):
        head = second.split()[:5]
        assert " ".join(head) in first, "next chunk should start inside the previous one"


def test_text_without_whitespace_is_cut_to_fit(token_count):
    minified = json.dumps({f"key{n}": [n, f"value-{n}", {"ok": n % 2 == 0}] for n in range(300)}, separators=(",", ":"))
    chunks = embed.chunk_text(minified, overlap=0)
    assert len(chunks) > 1
    assert all(token_count(chunk) <= 256 for chunk in chunks)
    assert "".join(chunks) == minified


def test_single_word_longer_than_the_window_is_cut(token_count):
    word = "9f86d081884c7d659a2feaa0c55ad015b0a3f1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a7b8c9d0e1f2a3"
    assert token_count(word) > 30
    chunks = embed.chunk_text(word, max_tokens=20, overlap=0)
    assert len(chunks) > 1
    assert all(token_count(chunk) <= 20 for chunk in chunks)
    assert "".join(chunks) == word


def test_real_session_export_chunks_fit(token_count):
    sessions = CORPUS / "coditect-master" / "MEMORY-CONTEXT" / "sessions"
    if not sessions.is_dir():
        pytest.skip(f"real corpus not found at {sessions}")
    longest = max(sorted(sessions.glob("*.md"))[:40], key=lambda p: p.stat().st_size)
    text = longest.read_text(errors="replace")
    chunks = embed.chunk_text(text)
    assert len(chunks) > 1
    assert all(token_count(chunk) <= 256 for chunk in chunks)
    assert_chunks_cover(text, chunks)


def test_ensure_onnx_exports_again_when_the_weights_changed(models_dir, tmp_path):
    stale = tmp_path / "models"
    stale.mkdir()
    (stale / embed.ONNX_FILE).write_bytes((models_dir / embed.ONNX_FILE).read_bytes())
    meta = json.loads((models_dir / f"{embed.ONNX_FILE}.json").read_text())
    (stale / f"{embed.ONNX_FILE}.json").write_text(json.dumps(dict(meta, source_sha256="0" * 64)))
    os.utime(stale / embed.ONNX_FILE, ns=(0, 0))

    path = embed.ensure_onnx(stale)

    assert path.stat().st_mtime_ns != 0, "an export made from other weights must be replaced"
    assert json.loads((stale / f"{embed.ONNX_FILE}.json").read_text())["source_sha256"] == meta["source_sha256"]
    assert len(embed.QueryEmbedder(stale).embed("still works")) == 384


def test_export_that_disagrees_with_sentence_transformers_is_refused(models_dir, tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(models_dir / embed.ONNX_FILE))
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the word embeddings
    weights = numpy_helper.to_array(biggest)
    noisy = weights + np.random.default_rng(0).normal(0, weights.std(), weights.shape).astype(weights.dtype)
    biggest.CopyFrom(numpy_helper.from_array(noisy, biggest.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))

    with pytest.raises(embed.EmbeddingModelError) as caught:
        embed._verify_export(embed.model_dir(), broken)
    assert "disagrees" in caught.value.message
