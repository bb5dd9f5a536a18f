"""discover_sources: a MEMORY-CONTEXT folder itself, or a repo root with submodules below it."""

from __future__ import annotations

from pathlib import Path

import pytest

from coditect_ctx.errors import UsageError
from coditect_ctx.ingest.discover import discover_sources
from coditect_ctx.samples import demo_path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def test_repo_root_finds_own_and_submodule_sources_own_first():
    sources = discover_sources(demo_path())
    assert [s.name for s in sources] == ["coditect-demo", "demo-core"]
    assert sources[0].memory_context == demo_path() / "MEMORY-CONTEXT"
    assert sources[1].root == demo_path() / "submodules" / "demo-core"


def test_memory_context_folder_itself():
    sources = discover_sources(demo_path() / "submodules" / "demo-core" / "MEMORY-CONTEXT")
    assert [(s.name, s.root) for s in sources] == [("demo-core", demo_path() / "submodules" / "demo-core")]


def test_submodule_filter_by_name_and_by_path():
    assert [s.name for s in discover_sources(demo_path(), submodule="demo-core")] == ["demo-core"]
    assert [s.name for s in discover_sources(demo_path(), submodule="submodules/demo-core")] == ["demo-core"]
    with pytest.raises(UsageError) as err:
        discover_sources(demo_path(), submodule="nope")
    assert "demo-core" in err.value.hint


def test_no_memory_context_is_a_usage_error(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(UsageError) as err:
        discover_sources(tmp_path)
    assert "no MEMORY-CONTEXT" in err.value.message and err.value.hint
    with pytest.raises(UsageError):
        discover_sources(tmp_path / "missing")


def test_skips_git_node_modules_venv_and_respects_depth(tmp_path):
    for hidden in (".git/modules/x", "node_modules/pkg", ".venv/lib"):
        (tmp_path / hidden / "MEMORY-CONTEXT").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "d" / "e" / "f" / "g" / "MEMORY-CONTEXT").mkdir(parents=True)
    (tmp_path / "MEMORY-CONTEXT").mkdir()
    (tmp_path / "MEMORY-CONTEXT" / "sessions" / "MEMORY-CONTEXT").mkdir(parents=True)  # never inside one
    sources = discover_sources(tmp_path)
    assert [s.memory_context for s in sources] == [tmp_path / "MEMORY-CONTEXT"]
    deep = discover_sources(tmp_path, max_depth=10)
    assert len(deep) == 2


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"real corpus not found at {CORPUS} (../shared/corpus)")
def test_real_corpus_has_two_sources():
    assert sorted(s.name for s in discover_sources(CORPUS)) == ["coditect-core", "coditect-master"]
