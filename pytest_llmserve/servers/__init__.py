"""Server backends and their lifecycle: one module per kind, plus process control."""

from __future__ import annotations
