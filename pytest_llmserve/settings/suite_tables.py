"""The suites' keys in a target's `options`, as typed tables validated when the config loads.

`options` holds the suites' tables (equivalence, engine_equivalence, precision, accuracy_*,
promotion_*, equivalence_reference: `option_tables.SUITE_OPTION_KEYS`) beside the backend's own
settings. `suite_tables(options)` reads the suites' part into one typed value; a bad key or value is an
OptionError naming the key, the value and what is wanted, which config loading turns into the
"<file>: targets[i].options.<key> = <value>: <problem>" error. The suites read `Target.suites`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..gates.accuracy import DEFAULT_TOLERANCE
from ..reference.accuracy_tasks import DEFAULT_CONCURRENCY as ACCURACY_CONCURRENCY
from ..checks.near_tie import EquivalenceSettings
from ..checks.promotion import DEFAULT_MARGIN
from ..gates.engine_equivalence import EngineEquivalenceSettings
from ..evidence.precision import PrecisionUnknown, from_declaration
from ..gates.promotion import DEFAULT_METRICS, ArmSamples


class OptionError(ValueError):
    """One bad suite option: its key under `options`, the value given, and what it must be."""

    def __init__(self, key: str, value: Any, problem: str) -> None:
        super().__init__(f"options.{key} = {value!r}: {problem}")
        self.key, self.value, self.problem = key, value, problem


@dataclass(frozen=True)
class AccuracyTable:
    """`accuracy_*`: the paired accuracy suite (suites/test_fp8_accuracy.py)."""

    reference: str | None = None  # accuracy_reference: the target to compare with
    tasks: tuple[str, ...] | None = None  # accuracy_tasks: JSONL paths (None: the bundled tasks)
    tolerance: float = DEFAULT_TOLERANCE  # accuracy_tolerance: δ, the accuracy that may be lost
    alpha: float = 0.05  # accuracy_alpha
    beta: float = 0.2  # accuracy_beta
    concurrency: int = ACCURACY_CONCURRENCY  # accuracy_concurrency
    detectable: float | None = None  # accuracy_detectable (None: 3·δ)

    @property
    def required_detectable(self) -> float:
        return self.detectable if self.detectable is not None else 3 * self.tolerance


@dataclass(frozen=True)
class PromotionTable:
    """`promotion_*`: the candidate-vs-incumbent A/B suite (suites/test_promotion.py)."""

    incumbent: str | None = None  # promotion_incumbent: the target serving today
    concurrency: int = 8
    input_len: int = 64
    output_len: int = 64
    requests: int = 256
    rounds: int = 4
    margin: float = DEFAULT_MARGIN
    metrics: tuple[str, ...] = DEFAULT_METRICS


@dataclass(frozen=True)
class SuiteTables:
    """Everything the suites read from one target's `options`."""

    equivalence: EquivalenceSettings = field(default_factory=lambda: EquivalenceSettings.from_mapping({}))
    engine_equivalence: EngineEquivalenceSettings = field(default_factory=EngineEquivalenceSettings)
    equivalence_reference: str | None = None
    precision: Mapping[str, Any] | None = None  # a declared precision (used when the engine cannot be read)
    accuracy: AccuracyTable = field(default_factory=AccuracyTable)
    promotion: PromotionTable = field(default_factory=PromotionTable)


def suite_tables(options: Mapping[str, Any]) -> SuiteTables:
    """The typed suite tables of `options` (OptionError on the first bad key or value)."""
    return SuiteTables(
        equivalence=_table(options, "equivalence", EquivalenceSettings.from_mapping),
        engine_equivalence=_table(options, "engine_equivalence", EngineEquivalenceSettings.from_mapping),
        equivalence_reference=_name(options, "equivalence_reference"),
        precision=_precision(options),
        accuracy=AccuracyTable(
            reference=_name(options, "accuracy_reference"),
            tasks=_paths(options, "accuracy_tasks"),
            tolerance=_number(options, "accuracy_tolerance", DEFAULT_TOLERANCE, low=0.0, inclusive=False),
            alpha=_number(options, "accuracy_alpha", 0.05, low=0.0, high=0.5),
            beta=_number(options, "accuracy_beta", 0.2, low=0.0, high=0.5),
            concurrency=_integer(options, "accuracy_concurrency", ACCURACY_CONCURRENCY),
            detectable=_number(options, "accuracy_detectable", None, low=0.0, inclusive=False),
        ),
        promotion=PromotionTable(
            incumbent=_name(options, "promotion_incumbent"),
            concurrency=_integer(options, "promotion_concurrency", 8),
            input_len=_integer(options, "promotion_input_len", 64),
            output_len=_integer(options, "promotion_output_len", 64),
            requests=_integer(options, "promotion_requests", 256),
            rounds=_integer(options, "promotion_rounds", 4),
            margin=_number(options, "promotion_margin", DEFAULT_MARGIN, low=0.0, inclusive=False),
            metrics=_metrics(options, "promotion_metrics", DEFAULT_METRICS),
        ),
    )


def _table(options: Mapping[str, Any], key: str, parse: Any) -> Any:
    try:
        return parse(options.get(key, {}))
    except ValueError as exc:
        raise OptionError(key, options.get(key), str(exc)) from None


def _name(options: Mapping[str, Any], key: str) -> str | None:
    value = options.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise OptionError(key, value, "must be the name of another target")
    return value or None


def _precision(options: Mapping[str, Any]) -> Mapping[str, Any] | None:
    value = options.get("precision")
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise OptionError("precision", value, 'must be a table, e.g. { dtype = "bfloat16", kv_cache_quant_algo = "fp8" }')
    unknown = sorted(set(value) - {"dtype", "quant_algo", "kv_cache_quant_algo"})
    if unknown:
        raise OptionError("precision", value, f"unknown key(s) {', '.join(unknown)}; allowed: dtype, quant_algo, "
                                              "kv_cache_quant_algo")
    try:
        from_declaration(value, "target")
    except PrecisionUnknown:
        raise OptionError("precision", value, 'needs at least `dtype` (e.g. "bfloat16")') from None
    return dict(value)


def _paths(options: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        raise OptionError(key, value, "must be a non-empty list of JSONL paths")
    return tuple(value)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(options: Mapping[str, Any], key: str, default: float | None, *, low: float, high: float = math.inf,
            inclusive: bool = True) -> Any:
    value = options.get(key, default)
    if value is None:
        return None
    if not _real(value) or not (value >= low if inclusive else value > low) or not value < high:
        bounds = f"{'>=' if inclusive else '>'} {low:g}" + (f" and < {high:g}" if high < math.inf else "")
        raise OptionError(key, value, f"must be a number {bounds}")
    return float(value)


def _integer(options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(key, value, "must be an integer >= 1")
    return value


def _metrics(options: Mapping[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = options.get(key, list(default))
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise OptionError(key, value, "must be a non-empty list of metric names")
    for metric in value:
        try:
            ArmSamples("", "").sample(metric)  # the A/B gate's own rule for a metric name
        except ValueError as exc:
            raise OptionError(key, value, str(exc)) from None
    return tuple(value)
