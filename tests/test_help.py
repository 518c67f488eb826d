"""Every option of every command, benchmarks included, says what it does and its default."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from fdbpl.cli import build_parser, main

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


# how a help text says what an option left out does
_LEFT_OUT = ("default", "unless", "if given", "when given", "without it", "omitted", "left out")


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        name = "/".join(action.option_strings) or action.dest
        if not action.help:
            missing.append(f"{name}: no help")
        elif action.default not in (None, False) and not action.required and "default" not in action.help:
            missing.append(f"{name}: default {action.default!r} not shown")
        elif action.default is None and action.option_strings and not action.required and action.nargs != 0:
            if not any(word in action.help for word in _LEFT_OUT):
                missing.append(f"{name}: what leaving it out does not said")
    return missing


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_option_of_every_command_has_help_and_its_default(command):
    assert _undocumented(_commands()[command]) == []


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


@pytest.mark.parametrize(
    "script", [p for p in BENCHMARKS if not p.name.startswith("_")], ids=lambda p: p.name
)
def test_every_benchmark_option_has_help_and_its_default(script, monkeypatch):
    def capture(self, *args, **kwargs):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.syspath_prepend(str(script.parent))
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(_Captured) as captured:
        module.main()
    parser = captured.value.parser
    assert parser.description
    assert _undocumented(parser) == []


def test_the_command_list_has_one_line_per_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    for command in _commands():
        line = next(line for line in lines if line.strip().startswith(command + " "))
        assert len(line.split(maxsplit=1)) == 2, line  # name and help on the same line
    assert "Run 'fdbpl COMMAND --help'" in out


def test_the_check_can_fail():
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", default=3, help="a number")
    parser.add_argument("--b")
    assert _undocumented(parser) == ["--a: default 3 not shown", "--b: no help"]
