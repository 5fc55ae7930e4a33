"""The config checks every config is built from, and the one state-dict check."""

from __future__ import annotations

import pytest
import torch

from petl.core.validators import (
    check_bool,
    check_choice,
    check_non_negative_int,
    check_number,
    check_positive_int,
    check_state_dict,
    int_tuple,
    reject_unknown,
    str_tuple,
)
from petl.errors import CheckpointError, ConfigError, PetlError


@pytest.mark.parametrize("value", [1, 7])
def test_positive_int_accepts(value: int) -> None:
    check_positive_int("r", value)


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3", None])
def test_positive_int_rejects_with_the_name_and_value(value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^r must be a positive integer, got {value!r}\.$"):
        check_positive_int("r", value)


def test_none_is_accepted_only_when_allowed() -> None:
    check_positive_int("eval_steps", None, allow_none=True)
    check_non_negative_int("seed", None, allow_none=True)
    check_number("scaling", None, allow_none=True)
    with pytest.raises(ConfigError, match="eval_steps must be a positive integer or None"):
        check_positive_int("eval_steps", 0, allow_none=True)


def test_non_negative_int() -> None:
    check_non_negative_int("seed", 0)
    with pytest.raises(ConfigError, match="seed must be a non-negative integer, got -1"):
        check_non_negative_int("seed", -1)


@pytest.mark.parametrize(
    "kwargs,bad,message",
    [
        ({"low": 0, "low_open": True}, 0, r"alpha must be a positive number, got 0\."),
        ({"low": 0, "high": 1}, 1, r"alpha must be a number in \[0, 1\), got 1\."),
        ({"low": 0, "high": 1, "low_open": True}, 0.0, r"alpha must be a number in \(0, 1\), got 0\.0\."),
        ({"low": 0, "high": 1, "high_open": False}, 1.5, r"alpha must be a number in \[0, 1\], got 1\.5\."),
        ({"low": 0.0}, -0.5, r"alpha must be a number >= 0\.0, got -0\.5\."),
        ({}, "x", r"alpha must be a number, got 'x'\."),
        ({}, True, r"alpha must be a number, got True\."),
    ],
)
def test_number_bounds_and_messages(kwargs: dict, bad: object, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        check_number("alpha", bad, **kwargs)


def test_number_bounds_accept_their_edges() -> None:
    check_number("dropout", 0, low=0, high=1)
    check_number("ratio", 1, low=0, high=1, high_open=False)
    check_number("lr", 0.5, low=0, high=1, low_open=True)


def test_choice_suggests_the_nearest() -> None:
    check_choice("bias", "all", ("none", "all"))
    with pytest.raises(ConfigError, match=r"bias must be one of 'none', 'all', got 'nnoe'\. Did you mean 'none'\?"):
        check_choice("bias", "nnoe", ("none", "all"))
    with pytest.raises(ConfigError, match=r"got 3\.$"):
        check_choice("bias", 3, ("none", "all"))


def test_bool() -> None:
    check_bool("resume", False)
    with pytest.raises(ConfigError, match="resume must be True or False, got 1"):
        check_bool("resume", 1)


def test_str_tuple_and_int_tuple() -> None:
    assert str_tuple("target_modules", "query") == ("query",)
    assert str_tuple("target_modules", ["query", "value"]) == ("query", "value")
    with pytest.raises(ConfigError, match="only strings"):
        str_tuple("target_modules", ["query", 3])
    with pytest.raises(ConfigError, match="a list of module names"):
        str_tuple("target_modules", 3)
    assert int_tuple("layers", 2) == (2,)
    assert int_tuple("layers", [0, 3]) == (0, 3)
    for bad in ([], [-1], [True], ["0"]):
        with pytest.raises(ConfigError, match=r"integers >= 0"):
            int_tuple("layers", bad)
    with pytest.raises(ConfigError, match="lists an entry twice"):
        int_tuple("layers", [1, 1])


def test_reject_unknown_names_the_key_the_nearest_and_all() -> None:
    reject_unknown({"r": 1}, ("r", "alpha"), "an option of 'lora'")
    message = r"'alhpa' is not an option of 'lora'\. Did you mean 'alpha'\? Valid options: r, alpha\."
    with pytest.raises(ConfigError, match=message):
        reject_unknown({"alhpa": 1}, ("r", "alpha"), "an option of 'lora'")


def test_state_dict_check_lists_missing_unexpected_and_shapes() -> None:
    expected = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}
    check_state_dict(expected, {k: v.clone() for k, v in expected.items()}, source="S", fix="F")
    found = {"a": torch.zeros(3, 2), "b": torch.zeros(4), "x": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        check_state_dict(expected, found, source="The adapter in out/", fix="Load it onto the same base model.")
    message = str(info.value)
    assert message.startswith("The adapter in out/ does not fit this model (")
    assert "missing from the file: ['c']" in message and "not in the model: ['x']" in message
    assert "a: file (3, 2), model (2, 3)" in message and message.endswith("Load it onto the same base model.")


def test_state_dict_check_raises_the_requested_error() -> None:
    class Mine(PetlError):
        pass

    with pytest.raises(Mine):
        check_state_dict({"a": torch.zeros(1)}, {}, source="S", fix="F", error=Mine)
