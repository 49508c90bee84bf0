"""What the paired ready-made suites (accuracy, promotion) read from a target's `options`."""

from __future__ import annotations

from typing import Any

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


def require_capabilities(server: Any, *names: str, suite: str) -> None:
    """Skip the test when the server's probed (or configured) capabilities lack what `suite` needs, saying which."""
    caps = getattr(server, "capabilities", None)
    if caps is None:  # not probed (not an OpenAI server): the suite finds out itself
        return
    missing = [n for n in names if not getattr(caps, n)]
    if missing:
        pytest.skip(f"target {server.target.name!r}: the {suite} suite needs {' and '.join(missing)}, which the server "
                    f"does not offer: {'; '.join(caps.missing(n) for n in missing)}")
