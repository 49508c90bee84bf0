"""The lines pytest prints at the top of a run: hardware label, selected targets, flags that reproduce it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ..settings import pytest_options as options
from ..settings.config import Target
from ..servers.registry import backend_for

if TYPE_CHECKING:
    from ..session import LlmserveSession


def describe_target(target: Target) -> str:
    """'name (kind, where)': the URL of an external server, else the model it serves."""
    where = target.url if not target.is_managed else target.model
    return f"{target.name} ({target.kind}, {where})" if where else f"{target.name} ({target.kind})"


def probe_line(target: Target) -> str:
    """What is known of a target's API before its server starts: whether it is probed, and what config sets.

    The probe itself runs when the server is ready (for an external URL too: a network call here would
    also run under --collect-only and on every xdist worker); its findings are in the llmserve summary
    and the JSON report's "servers".
    """
    why = backend_for(target.kind).not_probed_because()
    if why:
        return f"llmserve probe {target.name}: not probed ({why})"
    told = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                     for k, v in sorted(target.capabilities.items()))
    return (f"llmserve probe {target.name}: when its server is ready (findings in the end-of-run summary and "
            f"the JSON report's 'servers'); {'set in config: ' + told if told else 'no capabilities set in config'}")


def header_lines(pconfig: pytest.Config, state: LlmserveSession) -> list[str]:
    """Hardware, targets, how each target's API is probed, and the llmserve flags (from CLI, env or ini
    alike) that repeat this run."""
    source = str(Path(state.config.source).resolve()) if state.config.source else "no llmserve config file found"
    targets = ", ".join(describe_target(t) for t in state.selected) or "none selected"
    flags = options.reproduce_flags(pconfig)
    return [
        state.hardware.header(),
        f"llmserve targets: {targets} (config: {source})",
        *(probe_line(t) for t in state.selected),
        "llmserve reproduce: pytest " + " ".join(flags) if flags else "llmserve reproduce: no llmserve flags set (defaults)",
    ]
