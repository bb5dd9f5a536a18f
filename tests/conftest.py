"""Fixtures that start real services through ctx's own local runtime, in temporary data directories.

- `stack`: one store for the whole test session (setup once, `down --volumes` at the end). Tests that share it
  must leave it as they found it (or use names of their own).
- `fresh_stack`: a store of a test's own, for tests that stop or break services.
Every test runs with a clean environment: no CTX_* variables from the caller, cwd in a temp folder (no stray .env).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from coditect_ctx.config import Settings, ensure_secrets, load_settings

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
SAMPLES = REPO / "coditect_ctx" / "samples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ctx(settings: Settings, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`ctx ARGS` as a real process against this store, no terminal (the timeout only guards against a hang)."""
    return subprocess.run([sys.executable, "-m", "coditect_ctx", *args], env={**os.environ, **settings_env(settings)},
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def make_settings(home: Path, **extra) -> Settings:
    """Settings for a store of its own: own home, own free ports, local runtime."""
    env = {
        "home": str(home), "runtime": "local",
        "pg_port": free_port(), "chroma_port": free_port(), "redis_port": free_port(),
    }
    env.update(extra)
    return ensure_secrets(load_settings(**env))


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a `ctx` subprocess needs to talk to the same store."""
    return {
        "CTX_HOME": str(settings.home),
        "CTX_RUNTIME": settings.runtime,
        "CTX_PG_PORT": str(settings.pg_port),
        "CTX_CHROMA_PORT": str(settings.chroma_port),
        "CTX_REDIS_PORT": str(settings.redis_port),
        **({"CTX_REDIS_SERVER": settings.redis_server} if settings.redis_server else {}),
    }


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith("CTX_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)


def _short_tmp(prefix: str) -> Path:
    # short paths: unix socket and log paths stay well under OS limits
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture(scope="session")
def models_dir() -> Iterator[Path]:
    """One ONNX export per test run, shared by every store the tests make."""
    from coditect_ctx.embed import ensure_onnx

    path = _short_tmp("ctx-models-")
    ensure_onnx(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start(settings: Settings, models: Path | None):
    from coditect_ctx import stack

    stack.setup(settings, prepare_model=False)
    if models is not None:
        models_link = settings.home / "models"
        if not models_link.exists():
            models_link.symlink_to(models, target_is_directory=True)
    return settings


@pytest.fixture(scope="session")
def stack(models_dir):
    """A running store shared by the session."""
    from coditect_ctx import stack as stack_job

    home = _short_tmp("ctx-s-")
    settings = make_settings(home)
    _start(settings, models_dir)
    yield settings
    stack_job.down(settings, volumes=True)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def fresh_stack(models_dir):
    """A running store of this test's own (it may stop or break services)."""
    from coditect_ctx import stack as stack_job

    home = _short_tmp("ctx-f-")
    settings = make_settings(home)
    _start(settings, models_dir)
    yield settings
    try:
        stack_job.down(settings, volumes=True)
    except Exception:
        pass
    shutil.rmtree(home, ignore_errors=True)  # its .env holds the store's secrets; nothing of a test outlives it


@pytest.fixture
def cli():
    """Run the CLI in-process (Typer's CliRunner), stdout and stderr kept apart."""
    from typer.testing import CliRunner

    from coditect_ctx.cli import app

    runner = CliRunner()

    def invoke(settings: Settings | None, *args: str, input: str | None = None):
        env = settings_env(settings) if settings else {}
        return runner.invoke(app, list(args), env=env, input=input, catch_exceptions=False)

    return invoke


def with_settings(settings: Settings, **changes) -> Settings:
    return replace(settings, **changes)


# -- a source whose file names, paths and text carry secrets (fakes assembled at run time) ------------------
HOSTILE_REF = "2025-11-20T10-00-00Z-Mail-carol.secret@example.org-" + "AKIA" + "IOSFODNN7EXAMPLE"
HOSTILE_AWS_SECRET = "wJalrXUtnFEMI/" + "K7MDENG/bPxRfiCYEXAMPLEKEY"
HOSTILE_LEAKS = ("carol.secret", "IOSFODNN7EXAMPLE", "alice.smith", "Zq9pass", "cdSecret", "wJalrXUtnFEMI")


def write_hostile_source(home: Path) -> Path:
    """``home/proj/MEMORY-CONTEXT`` with a checkpoint named after an e-mail and an AWS key id, a session and
    messages naming it, and passwords the README's own advice produces; returns the repo folder."""
    import hashlib
    import json

    repo = home / "proj"
    mc = repo / "MEMORY-CONTEXT"
    for folder in ("checkpoints", "sessions", "messages/by-checkpoint"):
        (mc / folder).mkdir(parents=True, exist_ok=True)
    body = ("Moved the app to postgresql://admin:%40Zq9pass@db.internal/app and the report job to "
            f"postgresql://admin:ab/cdSecret@host; the CI key is {HOSTILE_AWS_SECRET}.")
    (mc / "checkpoints" / f"{HOSTILE_REF}.md").write_text(
        "# CODITECT Checkpoint: Rotated the app database password\n\n**Timestamp:** 2025-11-20T10:00:00Z\n"
        "**Sprint:** Sprint 9\n**Status:** ✅ CHECKPOINT CAPTURED\n\n---\n\n## Executive Summary\n\n" + body + "\n")
    (mc / "sessions" / (HOSTILE_REF.replace("T10-", "T05-") + ".md")).write_text(
        "# Session Export: Rotated the app database password\n\n**Timestamp:** 2025-11-20T10:00:00Z\n"
        f"**Checkpoint:** {HOSTILE_REF}.md\n**Repository:** {home}/proj\n**Participants:** user, claude-code\n\n---\n\n"
        "## Conversation Summary\n\n" + body + "\n")
    lines = []
    for index, (role, content) in enumerate([("user", "Rotate the database password, mail carol.secret@example.org"),
                                             ("assistant", body)]):
        digest = hashlib.sha256(json.dumps({"role": role, "content": content}, sort_keys=True).encode()).hexdigest()
        lines.append(json.dumps({"hash": digest, "message": {"index": index, "role": role, "type": role, "content": content},
                                 "first_seen": "2025-11-20T10:01:00+00:00", "checkpoint": HOSTILE_REF}))
    (mc / "messages" / "by-checkpoint" / f"{HOSTILE_REF}.jsonl").write_text("\n".join(lines) + "\n")
    return repo


def vectors_by_identity(store, ids: dict[str, str]) -> dict[str, list[tuple[str, str, str, str]]]:
    """Every vector per kind as (record identity, chunk no, content sha, sha256 of its document): comparable across
    stores, whose row uuids (and so vector ids) differ. `ids` maps row uuid -> identity; a vector of no known row
    shows as '?'."""
    import hashlib

    from coditect_ctx.kinds import COLLECTIONS
    from coditect_ctx.stores.chroma import record_id_of

    out = {}
    for kind, name in COLLECTIONS.items():
        vectors = []
        for page in store.chroma.iter_all(name, include=("metadatas", "documents")):
            for vid, meta, doc in zip(page["ids"], page["metadatas"], page["documents"]):
                vectors.append((ids.get(record_id_of(vid), "?"), vid.rsplit(":", 1)[1], meta["sha"],
                                hashlib.sha256((doc or "").encode()).hexdigest()))
        out[kind] = sorted(vectors)
    return out


# A child's ru_maxrss counts the memory of the process it was forked from (Linux keeps the old mm's high-water mark
# across fork and exec), and the tests and benches hold the model: the command runs as a grandchild of this small
# launcher instead, which reports that grandchild's own peak.
_MEASURE = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status) % 256)\n"
)


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[int, str, str, float]:
    """Run `argv`: its exit code, stdout, stderr and peak resident memory in MB (its own, not ours)."""
    import subprocess
    import sys

    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as peak:
        proc = subprocess.run([sys.executable, "-c", _MEASURE, peak.name, *argv], env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)
        kib = peak.read().strip()
    return proc.returncode, proc.stdout, proc.stderr, (int(kib) / 1024 if kib else float("nan"))

