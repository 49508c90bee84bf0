"""Where a backend's evidence readers find their inputs: the server log and the files its target names."""

from __future__ import annotations

import json
from pathlib import Path

from ..settings.config import Target
from .base import ServerHandle


def log_source(handle: ServerHandle) -> str:
    """The name evidence lines quote for the server log."""
    return handle.log_path.name if handle.log_path else "server.log"


def engine_config(target: Target) -> dict | None:
    """The config.json of the target's `engine.dir`, if it names one and it reads."""
    engine_dir = target.engine.get("dir") if target.engine else None
    return _read_json(Path(engine_dir) / "config.json") if engine_dir else None


def max_batch_size(target: Target) -> int | None:
    """The decode batch ceiling the target's engine or options table sets."""
    for table in (target.engine or {}, target.options or {}):
        value = table.get("max_batch_size")
        if isinstance(value, int):
            return value
    return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
