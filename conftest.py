"""Project-level pytest configuration: pytester for the plugin's own behaviour tests."""

from __future__ import annotations

pytest_plugins = ("pytester",)
