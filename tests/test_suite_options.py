"""The paired suites' partner target: named, missing (skip) or the target itself (fail)."""

from __future__ import annotations

import pytest

from pytest_llmserve.settings.config import Target
from pytest_llmserve.settings.suite_options import partner_target_name


def _target(**options) -> Target:  # noqa: ANN003
    return Target(name="fp8", kind="openai", model="m", url="http://127.0.0.1:1", options=options)


def test_the_named_partner_is_returned() -> None:
    assert partner_target_name(_target(accuracy_reference="bf16"), "accuracy_reference",
                               what="reference", placeholder="x") == "bf16"


def test_no_partner_skips_and_says_which_option_to_set() -> None:
    with pytest.raises(pytest.skip.Exception) as info:
        partner_target_name(_target(), "promotion_incumbent", what="incumbent", placeholder="target serving today")
    assert str(info.value) == ("target 'fp8' names no incumbent: set options = "
                               "{ promotion_incumbent = \"<target serving today>\" }")


def test_naming_itself_fails_with_the_advice() -> None:
    with pytest.raises(pytest.fail.Exception) as info:
        partner_target_name(_target(accuracy_reference="fp8"), "accuracy_reference", what="reference",
                            placeholder="x", self_advice="name the baseline-precision target")
    assert str(info.value) == "target 'fp8' names itself as accuracy_reference; name the baseline-precision target"
