"""Help text is a contract: every command has help, appears in `ctx --help` and in the README."""

from __future__ import annotations

import os
import subprocess
import sys

import typer.main

from coditect_ctx.cli import app

from .conftest import REPO


def _commands() -> dict[str, object]:
    group = typer.main.get_command(app)
    return dict(group.commands)


def test_every_command_has_help_and_a_readme_mention(cli):
    readme = (REPO / "README.md").read_text()
    commands = _commands()
    assert {"setup", "status", "down", "health", "migrate", "validate"} <= set(commands)
    top = cli(None, "--help").stdout
    for name, command in commands.items():
        assert command.help, f"ctx {name} has no help"
        assert name in top
        assert f"ctx {name}" in readme, f"README does not show `ctx {name}`"
        assert cli(None, name, "--help").exit_code == 0


def test_help_imports_nothing_heavy():
    code = ("import sys; sys.argv=['ctx','--help']\n"
            "from coditect_ctx.cli import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "heavy=[m for m in ('torch','sentence_transformers','chromadb','onnxruntime','docker','psycopg','redis') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_flags_show_no_value_in_help():
    """`--version`, `--help`, `--json` take no value: help shows none beside them, and still shows `<path>` etc."""
    env = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}
    top = subprocess.run(["ctx", "--help"], capture_output=True, text=True, env=env, timeout=60).stdout
    lines = {line.split()[1]: line for line in top.splitlines() if line.startswith("│ --")}
    assert "<path>" in lines["--home"]
    for flag in ("--version", "--help"):
        assert "<" not in lines[flag], lines[flag]
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", {})
        for argv in ([name], *([name, sub] for sub in subcommands)):
            text = subprocess.run(["ctx", *argv, "--help"], capture_output=True, text=True, env=env, timeout=60).stdout
            assert "--help" in text
            assert "<bool>" not in text, f"ctx {' '.join(argv)} --help:\n{text}"
