"""Stored absolute accuracy references, keyed by model, task and the precision the engine reported.

Layout: ``<baselines_dir>/<hardware>/accuracy/<model>.json`` holding
``{"entries": {"<task>|<dtype>|<quant_algo>|<kv_cache_quant_algo>": {"accuracy", "mean_loglik", "n",
"task_sha256"}}}`` (TensorRT-LLM keys its references the same way, minus the hardware level). The
paired gate decides FP8 vs BF16 from two live runs; these references additionally catch both sides
drifting together (e.g. the BF16 engine itself regressed), with TensorRT-LLM's unpaired threshold
ref + Φ⁻¹(α)·√(2σ²/n), σ = 0.5 for 0/1 scores (its σ = 50 on a 0-100 scale).
The file is an entry file of the baselines' store (store/entries.py): the same locked update, and its
changes and unused entries appear in the end-of-run report beside the baselines'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from .baselines import SCHEMA, UPDATE_HINT, BaselineStore, round_significant
from ..checks.accuracy_gate import trtllm_threshold
from .entries import StoreLedger, unused_ids, write_entry
from ..evidence.precision import PrecisionInfo

RefVerdict = Literal["ok", "regression", "missing", "stale", "recorded"]
BINARY_SIGMA = 0.5


def model_label(target: Any) -> str:
    """A file-name-safe model name: a model directory's basename, a hub id with '/' as '--'."""
    model = getattr(target, "model", None) or getattr(target, "name", "model")
    path = Path(str(model))
    name = path.name if path.is_absolute() or path.exists() else str(model)
    return name.replace("/", "--").replace("\\", "--") or "model"


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    """One measured score next to its stored reference."""

    key: str
    measured: float
    n: int
    stored: float | None
    threshold: float | None
    verdict: RefVerdict
    note: str = ""

    def render(self) -> str:
        stored = "—" if self.stored is None else f"{100 * self.stored:.2f} %"
        thr = "" if self.threshold is None else f", pass ≥ {100 * self.threshold:.2f} %"
        extra = f" ({self.note})" if self.note else ""
        return f"{self.key}: measured {100 * self.measured:.2f} %, stored {stored}{thr} → {self.verdict}{extra}"


@dataclass
class AccuracyReferences:
    """Reads, checks and (with update) writes the reference file of one model on one hardware label."""

    root: Path
    hardware: str
    model: str
    update: bool = False
    alpha: float = 0.05
    ledger: StoreLedger = field(default_factory=StoreLedger)  # the session's, so the report sees the changes

    @classmethod
    def in_store(cls, store: BaselineStore, model: str, alpha: float = 0.05) -> AccuracyReferences:
        """The references of `model` kept beside `store`'s baselines, sharing its update flag and ledger."""
        return cls(root=store.root, hardware=store.hardware, model=model, update=store.update, alpha=alpha,
                   ledger=store.ledger)

    @property
    def path(self) -> Path:
        return folder(self.root, self.hardware) / f"{self.model}.json"

    def entries(self) -> dict[str, dict[str, Any]]:
        return _read_entries(self.path)

    def check(self, task: str, task_sha256: str, precision: PrecisionInfo, summary: dict[str, float]) -> ReferenceRow:
        """Compare one measured accuracy with its reference, or record it when updating."""
        key = f"{task}|{precision.key()}"
        n, measured = int(summary["n"]), float(summary["accuracy"])
        self.ledger.mark_used(self.path, key)
        if self.update:
            self._record(key, {"accuracy": measured, "mean_loglik": summary["mean_loglik"]}, n, task_sha256)
            return ReferenceRow(key, measured, n, measured, None, "recorded", f"written to {self.path}")
        stored = self.entries().get(key)
        if stored is None or "accuracy" not in stored:
            return ReferenceRow(key, measured, n, None, None, "missing", f"no reference in {self.path}; {UPDATE_HINT}")
        ref = float(stored["accuracy"])
        if stored.get("task_sha256") != task_sha256 or int(stored.get("n", -1)) != n:
            return ReferenceRow(key, measured, n, ref, None, "stale",
                                f"recorded on another version of the task file; {UPDATE_HINT}")
        threshold = trtllm_threshold(ref, BINARY_SIGMA, n, self.alpha)
        verdict: RefVerdict = "ok" if measured >= threshold else "regression"
        return ReferenceRow(key, measured, n, ref, threshold, verdict, f"σ={BINARY_SIGMA}, α={self.alpha:g}")

    def _record(self, key: str, metrics: dict[str, float], n: int, task_sha256: str) -> None:
        """Read-modify-write under a lock, landing with an atomic rename (parallel workers are safe)."""
        new: dict[str, Any] = {k: round_significant(float(v)) for k, v in metrics.items()}
        new.update(n=n, task_sha256=task_sha256)  # n exact: it identifies the task version too
        write_entry(self.path, key, dict(sorted(new.items())), ledger=self.ledger, read=_read_entries,
                    header=lambda _: {"schema": SCHEMA, "hardware": self.hardware, "model": self.model},
                    summary=change_summary)


def folder(root: Path, hardware: str) -> Path:
    """Where the accuracy reference files of one hardware label live."""
    return root / hardware / "accuracy"


def change_summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The values a change report shows: the numbers, and the task file's hash shortened."""
    return {k: (str(v)[:12] if k == "task_sha256" else v) for k, v in entry.items()}


def unused_references(store: BaselineStore) -> list[tuple[Path, str]]:
    """Entries this run did not check, of a reference file and a precision it did check (so a task no longer
    run is found, while a target left out of a partial run leaves its precision's entries alone)."""
    out = []
    for path in store.ledger.used_files():
        if path.parent != folder(store.root, store.hardware):
            continue
        used = store.ledger.used_in(path)
        precisions = {key.partition("|")[2] for key in used}
        out += [(path, key) for key in unused_ids(_read_entries(path), used, lambda k: k.partition("|")[2] in precisions)]
    return out


def _read_entries(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text("utf-8"))
        entries = data["entries"]
        if not isinstance(entries, dict):
            raise ValueError("`entries` must be a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"accuracy reference file {path} is corrupt ({exc}); it was not modified. Restore it "
            f"(git checkout -- {path}) or delete it and {UPDATE_HINT}"
        ) from None
    return entries
