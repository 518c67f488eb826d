"""Settings dataclasses and their command line: each default and help written once, in the field."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fdbpl.cache import BUILD_DEFAULTS, BuildSettings, build_table
from fdbpl.cli import _train_config, build_parser
from fdbpl.errors import FDBPLError
from fdbpl.losses import LossWeights
from fdbpl.options import add_settings, check_settings, setting, settings_from
from fdbpl.train import TrainConfig


def _command(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _train_parser() -> argparse.ArgumentParser:
    return _command("train")


def _settings(cls):
    return [f for f in dataclasses.fields(cls) if "cli" in f.metadata]


@pytest.mark.parametrize(
    ("cls", "command"), [(TrainConfig, "train"), (LossWeights, "train"), (BuildSettings, "build-cache")]
)
def test_every_setting_is_a_flag_with_the_fields_default(cls, command):
    actions = {a.dest: a for a in _command(command)._actions}
    assert _settings(cls)
    for f in _settings(cls):
        action = actions[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")]
        assert action.default == f.default, f.name
        assert f.metadata["cli"]["help"] in action.help


def test_no_flag_parses_back_to_the_default_config():
    args = _train_parser().parse_args(["TABLE", "IMAGES", "--student", "S", "--out", "O"])
    assert _train_config(args) == TrainConfig()


@dataclasses.dataclass(frozen=True)
class Example:
    count: int = setting(3, "how many", minimum=1)
    rate: float = setting(0.5, "how fast", positive=True, source="the paper's")
    kind: str = setting("a", "which", choices=("a", "b"))
    on: bool = setting(False, "switch it on")
    cap: int | None = setting(None, "at most this many (default: no cap)", minimum=0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_settings(p, Example)
    return p


@given(
    st.integers(1, 10**6),
    st.floats(1e-6, 1e6, allow_nan=False),
    st.sampled_from(["a", "b"]),
    st.booleans(),
    st.none() | st.integers(0, 100),
)
def test_given_values_parse_back_into_the_dataclass(count, rate, kind, on, cap):
    argv = ["--count", str(count), "--rate", repr(rate), "--kind", kind]
    argv += ["--on"] if on else []
    argv += ["--cap", str(cap)] if cap is not None else []
    parsed = Example(**settings_from(Example, _parser().parse_args(argv)))
    assert parsed == Example(count, rate, kind, on, cap)


def test_help_shows_the_default_once_and_refuses_bad_values(capsys):
    text = _parser().format_help()
    assert "how many (default: 3)" in text and "(default: 0.5, the paper's)" in text
    assert "at most this many (default: no cap)" in text and "(default: None)" not in text
    for argv in (["--count", "0"], ["--rate", "0"], ["--rate", "nan"], ["--kind", "c"], ["--count", "x"]):
        with pytest.raises(SystemExit):
            argparse.ArgumentParser.parse_args(_exiting_parser(), argv)
        assert argv[0] in capsys.readouterr().err


def _exiting_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_settings(p, Example)
    return p


def test_build_table_reads_its_defaults_from_build_settings():
    parameters = inspect.signature(build_table).parameters
    for f in dataclasses.fields(BuildSettings):
        assert parameters[f.name].default == getattr(BUILD_DEFAULTS, f.name), f.name


@dataclasses.dataclass(frozen=True)
class Checked(Example):
    def __post_init__(self) -> None:
        check_settings(self)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("count", 0),
        ("count", 1.5),
        ("count", True),
        ("rate", 0.0),
        ("rate", float("nan")),
        ("kind", "c"),
        ("cap", -1),
    ],
)
def test_check_settings_refuses_what_the_flag_refuses_naming_the_field(field, value):
    with pytest.raises(FDBPLError, match=f"^{field}: expected"):
        Checked(**{field: value})


def test_check_settings_stores_plain_numbers():
    checked = Checked(count=np.int64(4), rate=np.float32(0.25), cap=None)
    assert type(checked.count) is int and type(checked.rate) is float and checked.cap is None
