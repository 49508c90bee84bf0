"""The lines pytest prints at the top of a run: hardware label, selected targets, flags that reproduce it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from . import options
from .config import Target

if TYPE_CHECKING:
    from .session import LlmserveSession


def describe_target(target: Target) -> str:
    """'name (kind, where)': the URL of an external server, else the model it serves."""
    where = target.url if not target.is_managed else target.model
    return f"{target.name} ({target.kind}, {where})" if where else f"{target.name} ({target.kind})"


def header_lines(pconfig: pytest.Config, state: LlmserveSession) -> list[str]:
    """Hardware, targets and the llmserve flags (from CLI, env or ini alike) that repeat this run."""
    source = str(Path(state.config.source).resolve()) if state.config.source else "no llmserve config file found"
    targets = ", ".join(describe_target(t) for t in state.selected) or "none selected"
    flags = options.reproduce_flags(pconfig)
    return [
        state.hardware.header(),
        f"llmserve targets: {targets} (config: {source})",
        "llmserve reproduce: pytest " + " ".join(flags) if flags else "llmserve reproduce: no llmserve flags set (defaults)",
    ]
