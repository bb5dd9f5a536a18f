"""Find MEMORY-CONTEXT folders: the one given, or a repo's own and its submodules' below it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from coditect_ctx.errors import UsageError

MEMORY_CONTEXT = "MEMORY-CONTEXT"
MAX_DEPTH = 6
SKIP_DIRS = frozenset({".git", "node_modules", ".venv", "venv", "__pycache__", ".tox", ".mypy_cache",
                       ".pytest_cache", "dist", "build", "target"})


@dataclass(frozen=True)
class Source:
    """One MEMORY-CONTEXT folder; ``name`` is the folder holding it (the repo or submodule name)."""

    name: str
    root: Path
    memory_context: Path


def _walk(top: Path, max_depth: int) -> list[Path]:
    found: list[Path] = []
    top_depth = len(top.parts)
    for dirpath, dirnames, _ in os.walk(top):
        here = Path(dirpath)
        if MEMORY_CONTEXT in dirnames:
            found.append(here / MEMORY_CONTEXT)
        # Never descend into MEMORY-CONTEXT itself, skipped folders, or past the depth bound.
        dirnames[:] = sorted(d for d in dirnames
                             if d != MEMORY_CONTEXT and d not in SKIP_DIRS
                             and len(here.parts) - top_depth < max_depth)
    return found


def discover_sources(path: Path, submodule: str | None = None, max_depth: int = MAX_DEPTH) -> list[Source]:
    """Sources under ``path``, the repo's own first; ``submodule`` keeps the one with that name
    (or relative path)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder", hint="Pass a repository root or a MEMORY-CONTEXT folder.")
    path = path.resolve()
    if path.name == MEMORY_CONTEXT:
        folders = [path]
        base = path.parent
    else:
        folders = _walk(path, max_depth)
        base = path
    sources = [Source(name=f.parent.name, root=f.parent, memory_context=f) for f in folders]
    sources.sort(key=lambda s: (s.root != base, len(s.root.parts), str(s.root)))
    if not sources:
        raise UsageError(f"no {MEMORY_CONTEXT} folder found in {path} (searched {max_depth} levels deep)",
                         hint="Pass a repository that has a MEMORY-CONTEXT folder, or the folder itself.")
    if submodule:
        wanted = submodule.strip("/")
        chosen = [s for s in sources
                  if s.name == wanted or _relative(s.root, base) == wanted]
        if not chosen:
            names = ", ".join(s.name for s in sources)
            raise UsageError(f"no MEMORY-CONTEXT for submodule {submodule!r} under {path}",
                             hint=f"Known sources: {names}.")
        sources = chosen
    return sources


def _relative(root: Path, base: Path) -> str:
    try:
        return root.relative_to(base).as_posix()
    except ValueError:
        return root.as_posix()
