"""The CUDA-graph promise a target or test states, and the assertion that checks a verdict against it.

`cuda_graphs = { require = "on" | "any" | "off", batch_sizes = "1..64" }` in a target's config, or
`assert_cuda_graphs(verdict, require=..., batch_sizes=...)` in a test; failures quote the evidence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .graphs import REQUIRE_LEVELS, GraphVerdict, format_sizes

def parse_batch_sizes(value: Any, *, where: str = "batch_sizes") -> tuple[int, ...]:
    """'1..64', '1..8, 16, 32', [1, 2, '4..8'], 64 or a range -> sorted unique positive ints."""
    items: list[Any]
    if isinstance(value, range):
        items = list(value)
    elif isinstance(value, (str, int)) and not isinstance(value, bool):
        items = str(value).split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"{where}: {value!r} is not a batch-size spec; use '1..64', '1..8, 16' or a list of ints")
    out: set[int] = set()
    for item in items:
        text = str(item).strip()
        if isinstance(item, bool) or not re.fullmatch(r"\d+(\s*\.\.\s*\d+)?", text):
            raise ValueError(f"{where}: {item!r} in {value!r} is not an int or a range like '1..64'")
        lo, _, hi = text.partition("..")
        a, b = int(lo), int(hi or lo)
        if a < 1 or b < a:
            raise ValueError(f"{where}: {text!r} must be positive and ascending (e.g. '1..64')")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError(f"{where}: {value!r} names no batch size")
    return tuple(sorted(out))


@dataclass(frozen=True, slots=True)
class CudaGraphRequirement:
    """What a target promises: `cuda_graphs = { require = "on", batch_sizes = "1..64" }`."""

    require: str = "on"
    batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.require not in REQUIRE_LEVELS:
            raise ValueError(f"cuda_graphs.require: {self.require!r} is not one of {', '.join(REQUIRE_LEVELS)}")

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None, *, where: str = "cuda_graphs") -> CudaGraphRequirement:
        raw = dict(raw or {})
        unknown = sorted(set(raw) - {"require", "batch_sizes"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: require, batch_sizes")
        require = raw.get("require", "on")
        if not isinstance(require, str) or require not in REQUIRE_LEVELS:
            raise ValueError(f"{where}.require: {require!r} is not one of {', '.join(map(repr, REQUIRE_LEVELS))}")
        sizes = parse_batch_sizes(raw["batch_sizes"], where=f"{where}.batch_sizes") if "batch_sizes" in raw else ()
        if sizes and require == "off":
            raise ValueError(f"{where}: batch_sizes makes no sense with require = 'off'")
        return cls(require, sizes)

    def failures(self, verdict: GraphVerdict) -> list[str]:
        out = []
        if verdict.state not in REQUIRE_LEVELS[self.require]:
            out.append(f"required {self.require!r}, found {verdict.state!r}")
        elif self.require == "any" and verdict.mode == "NONE":  # downgraded all the way to eager
            out.append(f"required 'any', found {verdict.state!r} down to mode NONE")
        if self.batch_sizes and (missing := verdict.uncovered(self.batch_sizes)):
            out.append(f"batch sizes without a captured graph: {format_sizes(missing)}")
        return out


def assert_cuda_graphs(verdict: GraphVerdict, *, require: str = "on", batch_sizes: Any = None) -> None:
    """Raise AssertionError quoting the evidence lines unless the verdict meets the requirement."""
    req = CudaGraphRequirement(require, parse_batch_sizes(batch_sizes) if batch_sizes is not None else ())
    problems = req.failures(verdict)
    if problems:
        raise AssertionError(f"CUDA graphs check failed: {'; '.join(problems)}\n{verdict.render()}")
