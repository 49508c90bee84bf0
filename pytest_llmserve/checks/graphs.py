"""CUDA-graph verdicts: did the server really capture graphs, for which batch sizes, in which mode?

A `GraphVerdict` carries the lines its reader quoted (`log_evidence.Evidence`), so a failing gate
quotes its proof. The readers are per backend: `vllm_evidence.detect_vllm`,
`trtllm_evidence.detect_trtllm`, `triton_evidence.detect_triton`; each server's backend
(`servers/`) says which one reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from .log_evidence import Evidence

State = Literal["on", "off", "partial", "downgraded", "unknown"]
REQUIRE_LEVELS = {"on": ("on",), "any": ("on", "partial", "downgraded"), "off": ("off",)}


@dataclass(frozen=True, slots=True)
class GraphVerdict:
    """Whether CUDA graphs are on, with the evidence lines that say so."""

    backend: str
    state: State
    captured_batch_sizes: tuple[int, ...] = ()
    mode: str | None = None
    evidence: tuple[Evidence, ...] = ()
    notes: tuple[str, ...] = ()
    padded: bool = False  # a batch runs on the next larger captured graph (vLLM; TRT-LLM enable_padding)
    on_demand: bool = False  # graphs captured lazily per batch shape (TensorRT C++ runtime)
    replay_counts: tuple[tuple[str, int], ...] = ()  # runtime mode -> steps (vLLM --cudagraph-metrics)

    def covers(self, batch_size: int) -> bool:
        """Whether a decode batch of this size runs on a captured graph."""
        if self.state not in ("on", "partial", "downgraded") or self.mode == "NONE":
            return False
        if self.on_demand:
            return True
        if batch_size in self.captured_batch_sizes:
            return True
        return self.padded and any(s >= batch_size for s in self.captured_batch_sizes)

    def uncovered(self, batch_sizes: Iterable[int]) -> tuple[int, ...]:
        return tuple(b for b in batch_sizes if not self.covers(b))

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "state": self.state,
            "mode": self.mode,
            "captured_batch_sizes": list(self.captured_batch_sizes),
            "padded": self.padded,
            "on_demand": self.on_demand,
            "replay_counts": dict(self.replay_counts),
            "evidence": [e.to_dict() for e in self.evidence],
            "notes": list(self.notes),
        }

    def render(self) -> str:
        """Multi-line explanation: state, mode, sizes, every evidence line, notes."""
        head = f"CUDA graphs ({self.backend}): {self.state}"
        if self.mode:
            head += f", mode {self.mode}"
        if self.on_demand:
            head += ", captured on demand"
        elif self.captured_batch_sizes:
            head += f", sizes {_brief_sizes(self.captured_batch_sizes)}" + (" (padded)" if self.padded else "")
        if self.replay_counts:
            head += ", replays " + ", ".join(f"{m}={n}" for m, n in self.replay_counts)
        out = [head, "evidence:"]
        out += [f"  {e}" for e in self.evidence] or ["  (none: no line about CUDA graphs was found)"]
        out += ["notes:"] + [f"  - {n}" for n in self.notes] if self.notes else []
        return "\n".join(out)


def format_sizes(sizes: Iterable[int]) -> str:
    """[1, 2, 3, 4, 8] -> '1..4, 8': long size lists stay readable in messages."""
    vals = sorted(set(sizes))
    parts, i = [], 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if j - i < 2 else f"{vals[i]}..{vals[j]}")
        parts.extend(str(v) for v in vals[i + 1 : j + 1] if j - i == 1)
        i = j + 1
    return "[" + ", ".join(parts) + "]"


def _brief_sizes(sizes: tuple[int, ...]) -> str:
    text = format_sizes(sizes)
    return text if len(sizes) <= 12 else f"{len(sizes)} from {min(sizes)} to {max(sizes)}"


def check_max_batch(v: GraphVerdict, max_batch_size: int | None) -> GraphVerdict:
    """An "on" verdict becomes "partial" when the target's decode batch ceiling runs without a graph."""
    if v.state != "on" or not max_batch_size or v.covers(max_batch_size):
        return v
    how = "padding on: no captured size is as large" if v.padded else "padding off: it is not in the list"
    note = (
        f"max batch size {max_batch_size} runs without a graph ({how}; captured "
        f"{format_sizes(v.captured_batch_sizes)}): the most common full batch runs eager"
    )
    return replace(v, state="partial", notes=(*v.notes, note))
