"""The `gpu` marker: evaluated once per item against the session's hardware inventory."""

from __future__ import annotations

import pytest

from .hardware import GpuRequirement, HardwareContext


def apply_gpu_marker(item: pytest.Item, hardware: HardwareContext) -> None:
    """Skip an item whose gpu(...) requirement the inventory cannot meet; bad arguments stop the run."""
    marker = item.get_closest_marker("gpu")
    if marker is None:
        return
    try:
        requirement = GpuRequirement.from_marker(marker)
    except ValueError as exc:
        raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
    reason = requirement.unmet_reason(hardware.inventory)
    if reason:
        item.add_marker(pytest.mark.skip(reason=reason))
