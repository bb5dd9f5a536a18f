"""`ctx search`'s fast path (commands/search_fast.py parse_fast) parses exactly as Typer does, or leaves the line to Typer."""

from __future__ import annotations

import pytest
import typer.main

from coditect_ctx.cli import app
from coditect_ctx.commands import search_fast as search_cmd

FAST, TYPER = "fast", "typer"  # FAST: the fast path takes the line (same params as Typer); TYPER: it must decline

CASES = [
    (FAST, ["q"]),
    (FAST, ["how did we fix the Cloud SQL connection?"]),
    (FAST, ["-"]),
    (FAST, [""]),
    (FAST, ["q", "--json"]),
    (FAST, ["--json", "--json", "q"]),
    (FAST, ["--type", "session", "q"]),
    (FAST, ["-t", "session", "q"]),
    (FAST, ["--type=session", "q"]),
    (FAST, ["--type=", "q"]),
    (FAST, ["--type=a=b", "q"]),
    (FAST, ["--type", "a", "--type", "b", "q"]),
    (FAST, ["--type", "--json", "q"]),  # a value option takes the next word, whatever it looks like
    (FAST, ["q", "--submodule", "core"]),
    (FAST, ["-s", "core", "q"]),
    (FAST, ["--submodule=core", "q"]),
    (FAST, ["--tag", "a", "q"]),
    (FAST, ["--tag", "a", "--tag=b", "q", "--tag", "c"]),
    (FAST, ["--since", "7d", "--until", "2025-01-31", "q"]),
    (FAST, ["--since=2025-01-01T00:00:00+02:00", "q"]),
    (FAST, ["--privacy", "TEAM", "q"]),
    (FAST, ["--limit", "5", "q"]),
    (FAST, ["-n", "5", "q"]),
    (FAST, ["--limit=5", "q"]),
    (FAST, ["--limit", "0", "q"]),
    (FAST, ["--limit", "-5", "q"]),
    (FAST, ["-n", "-1", "q"]),
    (FAST, ["--limit=-2", "q"]),
    (FAST, ["--limit", "007", "q"]),
    (FAST, ["--limit", "3", "--limit", "4", "q"]),
    (FAST, ["--mode", "text", "q"]),
    (FAST, ["-m", "semantic", "q"]),
    (FAST, ["--mode=bogus", "q"]),
    (FAST, ["q", "-t", "pattern", "-s", "core", "--tag", "x", "--since", "1d", "--until", "2030-01-01", "--privacy",
            "PUBLIC", "-n", "3", "-m", "hybrid", "--json"]),
    # Typer accepts these too, but the fast path leaves them to it
    (TYPER, ["-tsession", "q"]),
    (TYPER, ["-n5", "q"]),
    (TYPER, ["-n-3", "q"]),
    (TYPER, ["-t=session", "q"]),  # Typer: type '=session'
    (TYPER, ["--limit", "+5", "q"]),
    (TYPER, ["--limit", "5.0", "q"]),
    (TYPER, ["--limit", "1_0", "q"]),
    (TYPER, ["--limit", " 5", "q"]),
    (TYPER, ["--", "-foo"]),
    (TYPER, ["--", "q"]),
    # Typer refuses these (usage error or help): the fast path must not run them
    (TYPER, []),
    (TYPER, ["--json"]),
    (TYPER, ["q1", "q2"]),
    (TYPER, ["-foo"]),
    (TYPER, ["-5"]),
    (TYPER, ["--foo", "q"]),
    (TYPER, ["--foo=1", "q"]),
    (TYPER, ["--ty", "session", "q"]),
    (TYPER, ["q", "--type"]),
    (TYPER, ["q", "--tag"]),
    (TYPER, ["q", "--json=1"]),
    (TYPER, ["--limit", "abc", "q"]),
    (TYPER, ["--limit", "1.5", "q"]),
    (TYPER, ["--limit", "--5", "q"]),
    (TYPER, ["--limit", "²", "q"]),
    (TYPER, ["--limit", "٣", "q"]),
    (TYPER, ["--limit=", "q"]),
    (TYPER, ["--limit", "--json", "q"]),
    (TYPER, ["--help"]),
    (TYPER, ["-h"]),
    (TYPER, ["q", "--help"]),
    (TYPER, ["--type", "x", "-h", "q"]),
]


def _search_command():
    return typer.main.get_command(app).commands["search"]


def _typer_parse(args: list[str]) -> dict | str:
    """What Typer would call `search` with, or the kind of refusal (usage error, help)."""
    try:
        with _search_command().make_context("search", list(args)) as ctx:
            return dict(ctx.params)
    except typer.Exit:
        return "exit (help)"
    except Exception as exc:
        return f"refused: {type(exc).__name__}"


@pytest.mark.parametrize(("who", "args"), CASES, ids=[" ".join(a) or "(none)" for _, a in CASES])
def test_fast_path_parses_like_typer(who, args):
    typer_says = _typer_parse(args)
    fast = search_cmd.parse_fast(["search", *args])
    if who == FAST:
        assert isinstance(typer_says, dict), typer_says
        assert fast == typer_says
    else:
        assert fast is None, f"fast path took a line it must leave to Typer ({typer_says}): {fast}"


def test_other_commands_and_global_options_go_to_typer():
    for argv in (["show", "q"], ["--home", "/tmp/x", "search", "q"], ["--version"], [], ["searchx", "q"]):
        assert search_cmd.parse_fast(argv) is None


def test_fast_path_knows_every_option_of_search():
    """Adding an option to `search` without teaching parse_fast fails here (and so would a change of kind)."""
    fast_value, fast_flags = search_cmd._VALUE_OPTIONS, search_cmd._FLAG_OPTIONS
    seen: set[str] = set()
    for param in _search_command().params:
        if param.param_type_name == "argument":
            assert param.name == "query"
            continue
        if param.name == "help":
            continue
        opts = [*param.opts, *param.secondary_opts]
        seen.update(opts)
        table = fast_flags if param.is_flag else fast_value
        for opt in opts:
            assert table.get(opt) == param.name, f"parse_fast does not know {opt} (-> {param.name})"
        assert (param.name in search_cmd._LIST_PARAMS) == bool(param.multiple), param.name
        kind = param.type_descriptor.annotation
        assert (param.name in search_cmd._INT_PARAMS) == (kind is int), (param.name, kind)
        assert kind in (bool, int, str, list[str]), f"{param.name}: parse_fast does not parse {kind}"
        default = () if param.multiple else param.default
        assert search_cmd._DEFAULTS[param.name] == default, param.name
    assert set(fast_value) | set(fast_flags) == seen, "parse_fast knows options `search` does not have"
    assert set(search_cmd._DEFAULTS) == {p.name for p in _search_command().params} - {"query", "help"}
