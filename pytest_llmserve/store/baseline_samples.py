"""The evidence behind a statistical baseline: per-request samples of every recorded round, in a gzip sidecar.

``<target>.samples.json.gz`` beside ``<target>.json``: ``{"schema": 2, "hardware", "target", "entries":
{test_id: [round, ...]}}``, a round being ``{"samples": {"ttft_ms": [...], "tpot_ms": [...], "e2e_ms": [...]},
"values": {metric: value}}``, values at 4 significant digits. Written deterministically (gzip mtime 0,
sorted keys) so an unchanged baseline re-records to the same bytes. Also here: the request-shape
fingerprint an entry is recorded with, and the human-readable summary of an entry.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from .atomic import atomic_write_bytes
from ..checks.baseline_gate import SAMPLE_FAMILIES, GateCheck, Round
from ..load import LoadSpec, RunResult

SIDECAR_SUFFIX = ".samples.json.gz"
# LoadSpec fields that size or pace a measurement but do not change what one request is
_NOT_SHAPE = frozenset({"requests", "duration_s", "warmup", "request_timeout_s", "seed", "vocab_size"})


def sidecar_path(json_path: Path) -> Path:
    return json_path.with_name(json_path.name.removesuffix(".json") + SIDECAR_SUFFIX)


def _sig(v: float) -> float:
    return float(f"{v:.4g}")


def round_of(result: RunResult) -> Round:
    """A round from a finished run: per-request TTFT/TPOT/E2E of successful measured requests, run metrics."""
    ok = [r for r in result.records if not r.warmup and r.ok]
    samples = {"ttft_ms": [r.ttft_ms for r in ok if r.ttft_ms is not None],
               "tpot_ms": [x for r in ok if (x := r.tpot_ms) is not None],
               "e2e_ms": [r.e2e_ms for r in ok if r.e2e_ms is not None]}
    return Round.of({k: v for k, v in samples.items() if v}, result.metrics())


def round_to_dict(rnd: Round, metrics: Sequence[str]) -> dict[str, Any]:
    out = {"samples": {k: [_sig(x) for x in rnd.samples[k]] for k in SAMPLE_FAMILIES if k in rnd.samples},
           "values": {m: _sig(rnd.values[m]) for m in metrics if m in rnd.values}}
    return out | ({"start": rnd.start} if rnd.start else {})  # absent for the first start: older files read alike


def round_from_dict(raw: Mapping[str, Any]) -> Round:
    return Round.of(raw.get("samples", {}), raw.get("values", {}), int(raw.get("start", 0)))


def _corrupt(path: Path, why: str) -> Exception:
    from .baselines import UPDATE_HINT, BaselineError

    return BaselineError(f"baseline sample file {path} is corrupt ({why}); it was not modified. Restore it from "
                         f"version control (git checkout -- {path}) or delete it and {UPDATE_HINT}")


def read_rounds_file(path: Path, hardware: str) -> dict[str, list[dict[str, Any]]]:
    """test_id → rounds, {} when the file does not exist; corrupt, truncated or foreign files are refused."""
    from .baselines import BaselineError

    if not path.exists():
        return {}
    try:
        data = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not all(
        isinstance(rs, list) and all(_valid_round(r) for r in rs) for rs in entries.values()
    ):
        raise _corrupt(path, "entries must map test ids to lists of {samples: {family: [ms, ...]}, values: {...}}")
    if data.get("hardware") not in (None, hardware):
        raise BaselineError(f"baseline sample file {path} was recorded on hardware {data['hardware']!r}, but this "
                            f"run is {hardware!r}; comparison across hardware is refused")
    return entries


def _valid_round(r: Any) -> bool:
    if not isinstance(r, dict) or not isinstance(r.get("samples", {}), dict) or not isinstance(r.get("values", {}), dict):
        return False
    nums = [x for v in r.get("samples", {}).values() for x in (v if isinstance(v, list) else [None])]
    start = r.get("start", 0)
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        return False
    nums += list(r.get("values", {}).values())
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in nums)


def write_rounds_file(path: Path, hardware: str, target: str, entries: Mapping[str, list[dict[str, Any]]]) -> None:
    text = json.dumps({"schema": 2, "hardware": hardware, "target": target, "entries": dict(sorted(entries.items()))},
                      sort_keys=True, separators=(",", ":"))
    atomic_write_bytes(path, gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))


def shape_of(spec: LoadSpec) -> dict[str, Any]:
    """What one request of the workload is: every LoadSpec field except those that size or pace the run."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        if f.name in _NOT_SHAPE:
            continue
        v = getattr(spec, f.name)
        if f.name == "prompts" and v is not None:
            v = f"{len(v)} prompts, crc32 {zlib.crc32(repr(tuple(v)).encode()):08x}"
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = _summarised(v)
        elif isinstance(v, Mapping):
            v = json.loads(json.dumps(dict(v), sort_keys=True, default=str))
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _summarised(value: Any) -> str:
    """A nested dataclass (e.g. multi-turn `Sessions`) as one line: its type, size and a checksum of its fields."""
    fields = dataclasses.asdict(value)
    sizes = [len(v) for v in fields.values() if isinstance(v, (tuple, list))]
    size = f"{max(sizes)} items, " if sizes else ""
    return f"{type(value).__name__}: {size}crc32 {zlib.crc32(repr(sorted(fields.items())).encode()):08x}"


def shape_mismatch(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ ("key: stored → current"); a key only one side knows counts at its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(LoadSpec) if f.default is not dataclasses.MISSING}
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key, defaults.get(key)), current.get(key, defaults.get(key))
        if a != b:
            out.append(f"{key}: {a!r} → {b!r}")
    return out


def check_shape(entry: Mapping[str, Any], spec: LoadSpec, path: Path, test_id: str) -> None:
    """Refuse a statistical baseline recorded with another request shape, naming both."""
    from .baselines import UPDATE_HINT, BaselineError

    current = shape_of(spec)
    diff = shape_mismatch(entry.get("shape", {}), current)
    if diff:
        raise BaselineError(
            f"baseline for {test_id} in {path} was recorded with another request shape or workload "
            f"({describe_shape(entry.get('shape', {}))}); this run is ({describe_shape(current)}); differs in "
            f"{'; '.join(diff)}. Comparison refused: restore the test's shape, or {UPDATE_HINT.replace('it', 'the new one')}")


def describe_shape(shape: Mapping[str, Any]) -> str:
    keys = ("endpoint", "concurrency", "rate", "input_len", "output_len")
    return ", ".join(f"{k}={shape.get(k)!r}" for k in keys if k in shape) + (
        f" (+{len(shape) - sum(k in shape for k in keys)} more fields)" if len(shape) > len(keys) else "")


def summary_entry(shape: Mapping[str, Any], rounds: Sequence[Round], checks: Sequence[GateCheck]) -> dict[str, Any]:
    """The reviewable JSON entry: per metric value, 95 % interval, n, rounds and run-to-run spread."""
    metrics = {}
    for c in checks:
        lo, hi = c.baseline_ci
        metrics[c.metric] = {"value": _sig(c.check.incumbent_value),
                             "ci95": [_sig(lo), _sig(hi)] if math.isfinite(lo) and math.isfinite(hi) else None,
                             "n": c.requests[0], "rounds": c.rounds[0],
                             "run_to_run": round(c.run_to_run, 4) if math.isfinite(c.run_to_run) else None}
    starts = len({r.start for r in rounds})
    for c in checks:
        if starts >= 2 and math.isfinite(c.start_to_start):
            metrics[c.metric]["start_to_start"] = round(c.start_to_start, 4)
    return {"shape": dict(shape), "repeats": len(rounds), "requests": sum(r.requests for r in rounds),
            "metrics": dict(sorted(metrics.items()))} | ({"server_starts": starts} if starts >= 2 else {})
