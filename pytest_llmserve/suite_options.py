"""What the paired ready-made suites (accuracy, promotion) read from a target's `options`."""

from __future__ import annotations

import pytest

from .config import Target


def partner_target_name(target: Target, key: str, *, what: str, placeholder: str, self_advice: str = "") -> str:
    """The target that `target` is compared with (`options.<key>`): the test skips when none is named
    and fails when the target names itself."""
    name = target.options.get(key)
    if not name:
        pytest.skip(f"target {target.name!r} names no {what}: set options = {{ {key} = \"<{placeholder}>\" }}")
    if name == target.name:
        pytest.fail(f"target {target.name!r} names itself as {key}" + (f"; {self_advice}" if self_advice else ""),
                    pytrace=False)
    return name
