"""Secrets in ctx itself: never in a repr, a traceback, the .env quoting, a child's environment, or left behind
by an interrupted pg_dump."""

from __future__ import annotations

import os
import subprocess
import sys

from coditect_ctx.config import load_settings
from coditect_ctx.runtime.external import ExternalRuntime
from coditect_ctx.runtime.local import LocalRuntime

from .conftest import free_port, make_settings

# characters a generated or hand-written secret may hold, each a hazard somewhere (URL, shell, .env, regex)
PG_SECRET = "pg-Sekr1t/@:%$x"
REDIS_SECRET = "redis-Sekr1t#=x"
CHROMA_SECRET = "chroma-Sekr1t'x"
URL_SECRET = "url-Sekr1t"


def _secrets_in(text: str, values) -> list[str]:
    return [v for v in values if v in text]


def test_settings_and_endpoints_hide_secrets_in_repr_and_str(tmp_path):
    settings = make_settings(tmp_path / "home")  # real generated secrets in a real .env
    generated = [settings.pg_password, settings.redis_password, settings.chroma_token]
    assert all(len(v) >= 32 for v in generated)
    endpoints = LocalRuntime(settings).endpoints()
    for obj in (settings, endpoints):
        for text in (repr(obj), str(obj), f"{obj}", repr([obj]), repr({"x": obj})):
            assert _secrets_in(text, generated) == [], text
    assert "pg_password='***'" in repr(settings) and "redis_url='redis://:***@127.0.0.1:" in repr(endpoints)
    assert "pg_url='postgresql://ctx:***@127.0.0.1:" in repr(endpoints)

    external = load_settings(
        runtime="external", pg_url=f"postgresql://admin:{URL_SECRET}@db.example.com:5432/ctx?sslmode=require",
        redis_url=f"rediss://:{URL_SECRET}2@cache.example.com:6380/0", chroma_url=f"https://u:{URL_SECRET}3@chroma.example.com",
        chroma_token=CHROMA_SECRET, pg_password=PG_SECRET, redis_password=REDIS_SECRET,
    )
    ep = ExternalRuntime(external).endpoints()
    for obj in (external, ep):
        text = repr(obj) + str(obj)
        assert _secrets_in(text, [URL_SECRET, CHROMA_SECRET, PG_SECRET, REDIS_SECRET]) == [], text
        assert "postgresql://admin:***@db.example.com:5432/ctx?sslmode=require" in text  # the rest stays readable


def test_debug_traceback_of_a_real_failure_shows_no_secret(tmp_path):
    # the external runtime against closed ports: a real failure, shown as a traceback because CTX_DEBUG=1
    closed = free_port()
    env = {
        **os.environ, "CTX_DEBUG": "1", "CTX_HOME": str(tmp_path / "home"), "CTX_RUNTIME": "external", "CTX_TIMEOUT": "1",
        "CTX_PG_URL": f"postgresql://admin:{URL_SECRET}@127.0.0.1:{closed}/ctx",
        "CTX_REDIS_URL": f"redis://:{REDIS_SECRET}@127.0.0.1:{closed}/0",
        "CTX_CHROMA_URL": f"http://127.0.0.1:{closed}", "CTX_CHROMA_TOKEN": CHROMA_SECRET,
    }
    proc = subprocess.run([sys.executable, "-m", "coditect_ctx", "backup"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr, proc.stderr
    assert _secrets_in(proc.stdout + proc.stderr, [URL_SECRET, REDIS_SECRET, CHROMA_SECRET]) == [], proc.stderr
