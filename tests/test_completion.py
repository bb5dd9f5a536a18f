"""Shell completion, for real: `ctx` run as the shells run it (Typer's `_CTX_COMPLETE` protocol), candidates checked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coditect_ctx.runtime.base import SERVICES
from coditect_ctx.search import TYPES

from .conftest import settings_env

COMMANDS = {"setup", "status", "down", "logs", "health", "migrate", "validate", "restore", "search", "show", "backup"}


def _ctx(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "coditect_ctx", *args], env={**os.environ, **env},
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    return proc


def bash(line: str, env: dict[str, str] | None = None) -> list[str]:
    """Candidates bash gets for `line` (the cursor at its end; a trailing space starts a new word)."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    out = _ctx({**(env or {}), "_CTX_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(cword)}).stdout
    return out.split()


def test_bash_completes_commands_options_and_values():
    assert COMMANDS <= set(bash("ctx "))
    assert bash("ctx lo") == ["logs"]
    assert bash("ctx ba") == ["backup"]
    assert {"--home", "--version", "--help", "--install-completion", "--show-completion"} <= set(bash("ctx --"))
    assert bash("ctx logs ") == list(SERVICES) == ["postgres", "chroma", "redis"]
    assert bash("ctx logs r") == ["redis"]
    assert {"--follow", "--lines"} <= set(bash("ctx logs postgres --"))
    assert bash("ctx search q --type ") == list(TYPES)
    assert bash("ctx search q -t p") == ["pattern"]
    assert bash("ctx search q --type c") == ["checkpoint"]
    assert {"--type", "--submodule", "--tag", "--limit", "--mode", "--json"} <= set(bash("ctx search q --"))
    assert bash("ctx health --format ") == ["table", "json", "nagios", "prometheus"]
    assert {"verify", "list", "prune"} <= set(bash("ctx backup "))


def test_zsh_and_fish_get_the_same_candidates():
    zsh = _ctx({"_CTX_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "ctx logs "}).stdout
    assert all(f'"{s}"' in zsh for s in SERVICES), zsh
    zsh_types = _ctx({"_CTX_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "ctx search q --type s"}).stdout
    assert '"session"' in zsh_types and '"pattern"' not in zsh_types, zsh_types
    fish = _ctx({"_CTX_COMPLETE": "complete_fish", "_TYPER_COMPLETE_ARGS": "ctx logs ",
                 "_TYPER_COMPLETE_FISH_ACTION": "get-args"}).stdout
    assert [line.split("\t")[0] for line in fish.splitlines()] == list(SERVICES), fish


def test_backup_names_complete_for_restore_and_verify(stack, tmp_path):
    dest = tmp_path / "backups"
    env = settings_env(stack)
    _ctx(env, "backup", "--dest", str(dest))
    taken = [p.name for p in dest.iterdir()]
    assert len(taken) == 1
    (dest / "20200101T000000Z").mkdir()  # unfinished (no manifest): nothing to restore, not offered
    assert bash(f"ctx restore --dest {dest} ", env) == taken
    assert bash(f"ctx backup verify --dest {dest} ", env) == taken
    assert bash(f"ctx backup --dest {dest} verify ", env) == taken
    assert bash(f"ctx backup verify --dest {dest} 1999", env) == []
    home_env = {**env, "CTX_BACKUP_DIR": str(dest)}
    assert bash("ctx restore ", home_env) == taken
    assert bash("ctx restore ", {**env, "CTX_BACKUP_DIR": str(tmp_path / "none")}) == []


def _in_shell(shell: str, tmp_path: Path, env: dict[str, str], *args: str) -> str:
    """`ctx ARGS` run from a shell called `shell`, as a user types it there: Typer detects the shell from its parent
    process (shellingham). bash, zsh and fish are not all installed here, so dash under each name stands in."""
    fake = tmp_path / "shells" / shell
    fake.parent.mkdir(exist_ok=True)
    shutil.copy(shutil.which("dash") or shutil.which("sh"), fake)
    command = " ".join([sys.executable, "-m", "coditect_ctx", *args]) + "; :"  # `; :` keeps the shell as parent
    proc = subprocess.run([str(fake), "-c", command], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize(("shell", "marker", "installed_in"), [
    ("bash", "complete -o default -F _ctx_completion ctx", ".bash_completions/ctx.sh"),
    ("zsh", "#compdef ctx", ".zfunc/_ctx"),
    ("fish", "complete --command ctx", ".config/fish/completions/ctx.fish"),
])
def test_show_and_install_completion(shell, marker, installed_in, tmp_path):
    script = _in_shell(shell, tmp_path, {}, "--show-completion")
    assert marker in script and f"_CTX_COMPLETE=complete_{shell}" in script
    home = tmp_path / "home"
    home.mkdir()
    out = _in_shell(shell, tmp_path, {"HOME": str(home)}, "--install-completion")
    assert f"{shell} completion installed in" in out
    assert f"_CTX_COMPLETE=complete_{shell}" in (home / installed_in).read_text()


def test_bash_really_completes(tmp_path):
    """The script --show-completion prints, sourced in a real bash, fills COMPREPLY."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    script = tmp_path / "ctx.bash"
    script.write_text(_in_shell("bash", tmp_path, {}, "--show-completion"))
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "ctx").write_text(f"#!/bin/sh\nexec {sys.executable} -m coditect_ctx \"$@\"\n")
    (shim / "ctx").chmod(0o755)
    test = (f"source {script}; COMP_WORDS=(ctx logs ''); COMP_CWORD=2; _ctx_completion ctx '' logs; "
            "printf '%s\\n' \"${COMPREPLY[@]}\"")
    proc = subprocess.run(["bash", "-c", test], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"})
    assert proc.stdout.split() == list(SERVICES), proc.stdout + proc.stderr

