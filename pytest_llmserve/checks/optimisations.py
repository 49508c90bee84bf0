"""Evidence that the serving optimisations credited to a result are really on: the report types.

Same approach as the CUDA-graph verdicts (`graphs`): each backend's reader (`vllm_evidence`,
`trtllm_evidence`, `triton_evidence`) reads what the server wrote and returns a finding per
optimisation with the lines it read. The report is attached to every SLO result so a latency
number never travels without what produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .graphs import GraphVerdict, State
from .log_evidence import Evidence

NAMES = ("paged_kv_cache", "inflight_batching", "chunked_prefill", "prefix_caching", "kv_cache_dtype", "quantization")


@dataclass(frozen=True, slots=True)
class Finding:
    """One optimisation: on/off/... with its value (e.g. 'fp8') and the lines that say so."""

    name: str
    state: State
    value: str | None = None
    evidence: tuple[Evidence, ...] = ()
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "value": self.value,
            "evidence": [e.to_dict() for e in self.evidence],
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class OptimisationsReport:
    """Every optimisation finding of one server, plus its CUDA-graph verdict."""

    backend: str
    items: tuple[Finding, ...]
    graphs: GraphVerdict

    def get(self, name: str) -> Finding:
        for item in self.items:
            if item.name == name:
                return item
        raise KeyError(f"no finding {name!r}; have {', '.join(i.name for i in self.items)}")

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "graphs": self.graphs.to_dict(), "items": [i.to_dict() for i in self.items]}

    def render(self) -> str:
        """A compact table: name, state, value, where the first evidence line is."""
        g = self.graphs
        rows = [("cuda_graphs", g.state, g.mode or "-", _where(g.evidence))]
        rows += [(i.name, i.state, i.value or "-", _where(i.evidence)) for i in self.items]
        widths = [max(len(r[c]) for r in rows + [("optimisation", "state", "value", "evidence")]) for c in range(3)]
        lines = [f"optimisations ({self.backend})"]
        for r in [("optimisation", "state", "value", "evidence"), *rows]:
            lines.append("  " + "  ".join(r[c].ljust(widths[c]) for c in range(3)) + "  " + r[3])
        notes = [f"  - {i.name}: {i.note}" for i in self.items if i.note] + [f"  - cuda_graphs: {n}" for n in g.notes]
        return "\n".join(lines + notes)


def _where(evidence: tuple[Evidence, ...]) -> str:
    if not evidence:
        return "(no evidence)"
    e = evidence[0]
    return f"{e.source}:{e.line_no}" if e.line_no else e.source


def flag_state(value: bool | None) -> State:
    """A yes/no setting as a finding state (None: not known)."""
    return "unknown" if value is None else "on" if value else "off"


def quantised(dtype: str | None) -> bool:
    """Whether a dtype name is a quantized format (not auto or a 16/32-bit float)."""
    return dtype is not None and dtype != "" and dtype.lower() not in ("auto", "none", "null", "float16", "bfloat16", "float32", "half")


def unknown_report(backend: str, why: str, graphs: GraphVerdict) -> OptimisationsReport:
    """Every finding unknown for the same reason (nothing of the server's own was there to read)."""
    return OptimisationsReport(backend, tuple(Finding(n, "unknown", None, (), why) for n in NAMES), graphs)
