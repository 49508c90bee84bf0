"""Stored baselines: one small, sorted, rounded JSON file per hardware label and target.

Layout: ``<baselines_dir>/<hardware>/<target>.json`` holding ``{"entries": {test_id: entry}}``. An entry is
either the old one-number form ``{metric: value}`` (schema 1, still read and compared the old way) or the
statistical form (schema 2) ``{"shape": {...}, "repeats": R, "requests": N, "metrics": {metric: {"value",
"ci95", "n", "rounds", "run_to_run"}}}``, whose per-request samples of every round live in the compressed
sidecar ``<target>.samples.json.gz`` (baseline_samples.py), written under the same lock.
Writes are read-modify-write under a file lock and land with an atomic rename (store/entries.py, shared
with the accuracy references), so parallel workers never clobber each other and a crash never leaves
half a file. A file that does not parse is reported and never overwritten.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..settings.config import Tolerance
from .entries import EntryChange, StoreLedger, unused_ids, write_entry

SCHEMA = 1
SCHEMA_STATS = 2  # files holding statistical entries (they may still hold old one-number entries)
SIGNIFICANT_DIGITS = 4
HIGHER_IS_BETTER = frozenset({"output_tok_s", "requests_s", "accuracy", "exact_match_rate"})
DEFAULT_TOLERANCES: Mapping[str, Tolerance] = {
    "ms": Tolerance(rel=0.5, abs=5.0),  # every *_ms latency
    "output_tok_s": Tolerance(rel=0.3),
    "requests_s": Tolerance(rel=0.3),
}
UPDATE_HINT = "run with --update-baselines to record it"


class BaselineError(Exception):
    """A baseline file that cannot be used; the message says which and what to do."""


def higher_is_better(metric: str) -> bool:
    return metric in HIGHER_IS_BETTER


def default_tolerance(metric: str) -> Tolerance:
    if metric.endswith("_ms"):
        return DEFAULT_TOLERANCES["ms"]
    return DEFAULT_TOLERANCES.get(metric, Tolerance(rel=0.1))


def round_significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """Round to a few significant digits so diffs of baseline files stay readable."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


@dataclass(frozen=True)
class MetricComparison:
    """One metric against its baseline."""

    metric: str
    measured: float
    baseline: float | None
    tolerance: Tolerance
    verdict: str  # ok | regression | improvement | missing | recorded | inconclusive | (info: a verdict)
    gate: Any = None  # checks.baseline_gate.GateCheck when compared statistically

    @property
    def bound(self) -> float | None:
        """The worst value still accepted, in the metric's direction."""
        if self.baseline is None:
            return None
        if self.gate is not None:
            m = self.gate.check.margin
            return self.baseline * (1 - m) if higher_is_better(self.metric) else self.baseline * (1 + m)
        slack = abs(self.baseline) * self.tolerance.rel + self.tolerance.abs
        return self.baseline - slack if higher_is_better(self.metric) else self.baseline + slack


@dataclass
class BaselineStore:
    """Reads, compares and (with update) writes baselines for one hardware label."""

    root: Path
    hardware: str
    update: bool = False
    add_start: bool = False  # with update: add this run's rounds to a statistical entry as one more server start
    ledger: StoreLedger = field(default_factory=StoreLedger)  # shared with the run's accuracy references

    @property
    def changes(self) -> list[EntryChange]:
        """Every entry this run wrote, baselines and accuracy references alike."""
        return self.ledger.changes

    def path_for(self, target: str) -> Path:
        return self.root / self.hardware / f"{target}.json"

    def lookup(self, target: str, test_id: str) -> dict[str, float] | None:
        """The stored metrics for a test, or None; marks the entry as used."""
        found = self.lookup_entry(target, test_id)
        return flat_values(found) if found is not None else None

    def lookup_entry(self, target: str, test_id: str) -> dict[str, Any] | None:
        """The stored entry as written (either form), or None; marks the entry as used."""
        path = self.path_for(target)
        self.ledger.mark_used(path, test_id)
        found = self._read(path).get(test_id)
        return dict(found) if found is not None else None

    def compare(
        self, target: str, test_id: str, metrics: Mapping[str, float], tolerances: Mapping[str, Tolerance]
    ) -> list[MetricComparison]:
        """Compare (or, with update, record) every metric; verdicts are direction-aware."""
        # a metric the run could not measure (NaN, e.g. TPOT of one-token outputs) is neither compared nor
        # recorded: a stored NaN would fail every later comparison
        metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        stored = self.lookup(target, test_id)
        rows = []
        for metric, measured in sorted(metrics.items()):
            tol = tolerances.get(metric) or default_tolerance(metric)
            base = None if stored is None else stored.get(metric)
            if self.update:
                verdict = "recorded"
            elif base is None:
                verdict = "missing"
            elif not tol.allows(measured, base, higher_is_better(metric)):
                verdict = "regression"
            elif (measured > base) == higher_is_better(metric) and measured != base:
                verdict = "improvement"
            else:
                verdict = "ok"
            rows.append(MetricComparison(metric, measured, base, tol, verdict))
        if self.update:
            self.record(target, test_id, metrics)
        return rows

    def record(self, target: str, test_id: str, metrics: Mapping[str, float]) -> EntryChange:
        """Write one entry atomically under a lock, keeping every other entry of the file."""
        new = {k: round_significant(float(v)) for k, v in sorted(metrics.items()) if math.isfinite(float(v))}
        return self._write(target, test_id, new)

    def record_entry(self, target: str, test_id: str, entry: Mapping[str, Any],
                     rounds: list[dict[str, Any]]) -> EntryChange:
        """Write a statistical entry and its rounds' samples (sidecar first, then the JSON), both atomic,
        under the file's lock; a corrupt file or sidecar stops it before anything is written."""
        from .baseline_samples import read_rounds_file, sidecar_path, write_rounds_file

        side = sidecar_path(self.path_for(target))

        def write_samples() -> None:
            samples = read_rounds_file(side, self.hardware)
            samples[test_id] = rounds
            write_rounds_file(side, self.hardware, target, samples)

        return self._write(target, test_id, entry, write_samples)

    def _write(self, target: str, test_id: str, entry: Mapping[str, Any],
               before_write: Callable[[], None] | None = None) -> EntryChange:
        def header(entries: dict[str, Any]) -> dict[str, Any]:
            schema = SCHEMA_STATS if any(is_statistical(e) for e in entries.values()) else SCHEMA
            return {"schema": schema, "hardware": self.hardware, "target": target}

        return write_entry(self.path_for(target), test_id, entry, ledger=self.ledger, read=self._read,
                           header=header, summary=flat_values, before_write=before_write)

    def rounds(self, target: str, test_id: str) -> list[dict[str, Any]]:
        """The stored rounds of a statistical entry, from the sidecar; a missing or corrupt one is an error."""
        from .baseline_samples import read_rounds_file, sidecar_path

        path = self.path_for(target)
        side = sidecar_path(path)
        found = read_rounds_file(side, self.hardware).get(test_id)
        if not found:
            raise BaselineError(f"baseline sample file {side} has no rounds for {test_id} (the entry in {path} needs "
                                f"them); restore it from version control or {UPDATE_HINT}")
        return found

    def other_hardware_with(self, target: str, test_id: str) -> list[str]:
        """Hardware labels that do have a baseline for this test (to explain a refusal)."""
        labels: list[str] = []
        if not self.root.is_dir():
            return labels
        for hw_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != self.hardware):
            try:
                if test_id in _read_entries(hw_dir / f"{target}.json", hw_dir.name):
                    labels.append(hw_dir.name)
            except BaselineError:
                continue
        return labels

    def unused(self, targets: list[str], known_test_ids: set[str]) -> list[tuple[Path, str]]:
        """Entries of the selected targets' files whose test no longer exists in the collected modules."""
        modules = {tid.split("::", 1)[0] for tid in known_test_ids}
        out = []
        for target in targets:
            path = self.path_for(target)
            used = self.ledger.used_in(path) | known_test_ids
            out += [(path, t) for t in unused_ids(self._read(path), used, lambda t: t.split("::", 1)[0] in modules)]
        return out

    def _read(self, path: Path) -> dict[str, dict[str, float]]:
        return _read_entries(path, self.hardware)


def is_statistical(entry: Mapping[str, Any]) -> bool:
    """Whether an entry is the schema-2 form (summary + sidecar samples) rather than one number per metric."""
    return isinstance(entry.get("metrics"), dict)


def flat_values(entry: Mapping[str, Any]) -> dict[str, float]:
    """{metric: value} of an entry of either form."""
    if is_statistical(entry):
        return {m: float(v["value"]) for m, v in entry["metrics"].items()}
    return {m: float(v) for m, v in entry.items()}


def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    if is_statistical(entry):
        return isinstance(entry.get("shape"), dict) and all(
            isinstance(v, dict) and _finite_number(v.get("value")) for v in entry["metrics"].values())
    return all(_finite_number(x) for x in entry.values())


def _read_entries(path: Path, hardware: str) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text("utf-8"))
        entries = data["entries"]
        if not isinstance(entries, dict) or not all(_valid_entry(v) for v in entries.values()):
            raise ValueError("entries must map test ids to {metric: finite number} or to "
                             "{shape, metrics: {metric: {value, ...}}}")
    except (ValueError, KeyError, TypeError) as exc:
        raise BaselineError(
            f"baseline file {path} is corrupt ({exc}); it was not modified. Fix it from version control "
            f"(git checkout -- {path}) or delete it and {UPDATE_HINT}"
        ) from None
    recorded_for = data.get("hardware")
    if recorded_for is not None and recorded_for != hardware:
        raise BaselineError(
            f"baseline file {path} was recorded on hardware {recorded_for!r}, but this run is {hardware!r}; "
            "comparison across hardware is refused (move the file to its own label's directory)"
        )
    return entries


def _finite_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
