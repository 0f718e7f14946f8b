"""The one registry behind every NAME choice: lookups, the error text, option parsing."""

from __future__ import annotations

import pytest

from lrfr_cli.errors import LrfrError
from lrfr_cli.registry import Option, Registry


class Thing:
    summary = "a thing for tests"


def make() -> Registry:
    reg: Registry = Registry("widget", opt_flag="--widget-opt")
    reg.register("alpha", Thing, options={"m": Option(0.5, "margin"), "k": Option(3), "on": Option(False), "q": Option(None, kind=str)})
    reg.register("Beta", Thing, "the second one")
    return reg


def test_lookup_is_case_insensitive_and_keeps_registration_order() -> None:
    reg = make()
    assert reg.names() == ("alpha", "beta")
    assert reg.get(" ALPHA ") is Thing and reg.key("Beta") == "beta"
    assert "BETA" in reg and "gamma" not in reg and 3 not in reg
    assert list(reg) == ["alpha", "beta"] and len(reg) == 2


def test_unknown_name_is_one_line_listing_the_choices() -> None:
    with pytest.raises(LrfrError) as e:
        make().get("gamma")
    assert str(e.value) == "unknown widget 'gamma'; choose one of: alpha, beta"


def test_parse_options_types_by_default_and_kind() -> None:
    reg = make()
    got = reg.parse_options("alpha", ["m=0.25", "k=7", "on=yes", "q=hello"])
    assert got == {"m": 0.25, "k": 7, "on": True, "q": "hello"}
    assert type(got["m"]) is float and type(got["k"]) is int
    assert reg.check_options("alpha", {"k": 1, "m": None}) == {"m": 0.5, "k": 1, "on": False, "q": None}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("m", "--widget-opt 'm': expected KEY=VALUE"),
        ("z=1", "--widget-opt z=1: widget alpha has no option 'z' (its options: m=0.5, k=3, on=False, q=None)"),
        ("k=1.5", "--widget-opt k=1.5: alpha's k takes a int value (default 3)"),
        ("m=nan", "--widget-opt m=nan: alpha's m takes a float value (default 0.5)"),
        ("on=maybe", "--widget-opt on=maybe: alpha's on takes a bool value (default False)"),
    ],
)
def test_bad_options_are_one_line_errors(item: str, message: str) -> None:
    with pytest.raises(LrfrError) as e:
        make().parse_options("alpha", [item])
    assert str(e.value) == message


def test_check_options_rejects_unknown_keys() -> None:
    with pytest.raises(LrfrError, match=r"widget beta has no option x, y \(its options: none\)"):
        make().check_options("beta", {"y": 1, "x": 2})


def test_describe_lists_options_without_unset_ones() -> None:
    assert make().describe() == ["alpha (m=0.5, k=3, on=False): a thing for tests", "beta: the second one"]
    assert make().describe(lambda e: f"n={len(e.options)}")[1] == "beta (n=0): the second one"


def test_summary_must_be_one_line() -> None:
    reg: Registry = Registry("widget")
    with pytest.raises(ValueError):
        reg.register("x", object(), "two\nlines")


def test_flag_options_name_the_flag_and_skip_unset_ones() -> None:
    reg = make()
    assert reg.flag_options("alpha", {"--margin": ("m", 0.3), "--k": ("k", None)}) == {"m": 0.3}
    with pytest.raises(LrfrError) as e:
        reg.flag_options("beta", {"--margin": ("m", 0.3)})
    assert str(e.value) == "--margin: widget beta has no option 'm' (its options: none)"


def test_copy_is_independent_and_values_follow_the_order() -> None:
    reg = make()
    other = reg.copy()
    other.register("gamma", Thing)
    assert reg.names() == ("alpha", "beta") and other.names() == ("alpha", "beta", "gamma")
    assert list(other.values()) == [Thing, Thing, Thing] and other.opt_flag == "--widget-opt"
