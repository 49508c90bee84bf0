"""The session's hardware: detected, faked, or detected with a label override (see package docstring)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from .inventory import Inventory, detect_inventory
from .labels import hardware_label, parse_fake_inventory

ENV_VAR = "LLMSERVE_HARDWARE"
FAKE_PREFIX = "fake:"
# Labels name baseline directories: lowercase so that case-insensitive file systems agree.
_LABEL = re.compile(r"[a-z0-9][a-z0-9._+-]{0,99}")


@dataclass(frozen=True, slots=True)
class HardwareContext:
    """The inventory that `gpu` markers are checked against and the label baselines are filed under."""

    inventory: Inventory
    label: str
    label_source: Literal["detected", "fake", "override"]
    origin: str  # where the setting came from: "option", "env LLMSERVE_HARDWARE", "config" or "default"
    detected_label: str  # the label the inventory itself gives (differs from `label` for overrides)

    def header(self) -> str:
        """One line for pytest_report_header."""
        how: str = self.label_source
        if self.label_source == "override":
            how += f" from {self.origin}; the inventory gives {self.detected_label}"
        elif self.label_source == "fake":
            how += f" from {self.origin}"
        return f"llmserve hardware: {self.label} ({how}): {self.inventory.summary()}"


def inventory_from_env_or_option(
    option_value: str | None,
    *,
    config_value: str | None = None,
    environ: Mapping[str, str] | None = None,
    detect: Callable[[], Inventory] = detect_inventory,
    option_origin: str = "option",
) -> HardwareContext:
    """Resolve the hardware setting (option > LLMSERVE_HARDWARE > config > auto) into a HardwareContext."""
    environ = os.environ if environ is None else environ
    value, origin = None, "default"
    candidates = ((option_value, option_origin), (environ.get(ENV_VAR), f"env {ENV_VAR}"), (config_value, "config"))
    for candidate, where in candidates:
        if candidate is not None and candidate.strip():
            value, origin = candidate.strip(), where
            break
    if value is None or value.lower() == "auto":
        inv = detect()
        label = hardware_label(inv)
        return HardwareContext(inv, label, "detected", origin, label)
    if value.lower().startswith(FAKE_PREFIX):
        try:
            inv = parse_fake_inventory(value[len(FAKE_PREFIX) :])
        except ValueError as exc:
            raise ValueError(f"hardware setting from {origin}: {exc}") from None
        label = hardware_label(inv)
        return HardwareContext(inv, label, "fake", origin, label)
    if not _LABEL.fullmatch(value):
        raise ValueError(
            f"hardware setting from {origin} is {value!r}: expected 'auto', a label of lowercase "
            "letters, digits and . _ + - (e.g. 'h100-80gb-x4', 'cpu-2c'), or 'fake:<spec>' "
            "(e.g. 'fake:h100-80gb-x2')"
        )
    inv = detect()
    return HardwareContext(inv, value, "override", origin, hardware_label(inv))
