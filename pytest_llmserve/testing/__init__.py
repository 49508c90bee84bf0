"""Test helpers shipped with the plugin: scripted stand-in servers speaking real protocols.

`TruthServer` / `Script` (truth_server.py): an OpenAI-style SSE server with scripted timings and faults
that logs when every chunk really left; kserve_server.py: a Triton/KServe stand-in.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Script", "TruthServer"]


def __getattr__(name: str) -> Any:
    # lazy, so `python -m pytest_llmserve.testing.truth_server` does not import that module twice
    if name == "Script":
        from .truth_script import Script

        return Script
    if name == "TruthServer":
        from .truth_server import TruthServer

        return TruthServer
    raise AttributeError(name)
