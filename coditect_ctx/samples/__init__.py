"""Sample data the project writes itself (no real user data): a repo-like tree in the real formats."""

from __future__ import annotations

from pathlib import Path

DEMO_NAME = "coditect-demo"


def demo_path() -> Path:
    """The bundled demo repository (its own MEMORY-CONTEXT plus one submodule's)."""
    return Path(__file__).resolve().parent / DEMO_NAME
