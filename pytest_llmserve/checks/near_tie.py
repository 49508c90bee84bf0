"""The near-tie tolerance: unit roundoff per precision, scaled by logit magnitude and depth, per target.

A logit L held in a format with unit roundoff u is off by up to u|L|
from its final rounding alone, so the pair's log-odds can move 2u|L| before any upstream error;
errors made in each of n layers reach the residual stream and add roughly in quadrature. Hence

    tolerance = scale * u(precision) * max(1, |L|) * sqrt(n_layers)

with |L| the largest |logit| among the reference's top-k at that step (recorded by the reference
runner; logprobs alone cannot recover it), u = 2^-24 fp32, 2^-11 fp16, 2^-8 bf16, 2^-7 int8
weights, 2^-4 fp8 e4m3, 2^-3 fp8 e5m2 / int4 weights, 2^-2 fp4.

``scale`` defaults to 8. First set to 5 from measurements on the 4 M-parameter tiny Llama (4 layers, |L| 8-21),
in units of u*|L|*sqrt(n): Hugging Face bf16 vs fp32, 2,304 greedy steps x 4 top-k pairs, moved a
pair's log-odds by p99 1.3, p99.9 2.1, max 3.7; the CPU vLLM (bf16) vs the fp32 reference, 13,073
pairs on agreed positions of 64 prompts x 64 tokens, p99 1.2, p99.9 2.0, max 3.7, and its 24
flips had swings of at most 1.7. 5 is 1.35x the largest error seen, so a tie flips into a hard
mismatch only in the far tail; REFERENCE.md's bf16 flips at reference gaps 0.008-0.129 nats sit
well inside (bf16 at |L| = 10: 0.39 nats). The price: noise of 0.1 / 0.25 / 0.5x std on one layer
of the same model gave 1 / 1 / 6 hard mismatches (and 2 / 7 / 5 accepted ties) on 32 prompts x
32 tokens with HF fp32 as the candidate -- still caught, by fewer prompts than at scale 4 (2 / 2 / 7).
Then raised to 8 after wider runs (docs/h100_run.md, 2026-11-25): Hugging Face bf16 on a real H100
vs the CPU fp32 reference, 64 x 64, swung agreed pairs by up to 4.6 units, and bf16 on this CPU
turned one tie (reference gap 0.0245 nats) into a 5.9-unit swing -- a hard mismatch at scale 5 for
a build that was fine. 8 is 1.36x the largest seen; a real defect (a noised layer) still swings
pairs by tens of units.

The depth factor is a heuristic (errors of independent layers adding in quadrature); a target
can override ``tolerance_scale``, ``precision`` or a fixed ``tolerance_nats`` in its
``options.equivalence`` table. For fp8 and int4 the tolerance grows to whole nats: token
equivalence then mostly checks top-k membership, and the paired accuracy gate is the real gate
for those precisions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..settings.config import Target

UNIT_ROUNDOFF: Mapping[str, float] = {
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
    "int8": 2.0**-7,  # per-channel weight quantization: half a step of 1/127 of the row max, doubled for typical values
    "fp8": 2.0**-4,  # e4m3: 3 mantissa bits
    "fp8_e5m2": 2.0**-3,
    "int4": 2.0**-3,
    "fp4": 2.0**-2,  # e2m1 (NVFP4 / MXFP4)
}
_ALIASES = {
    "fp32": "float32", "float": "float32", "f32": "float32",
    "fp16": "float16", "half": "float16", "f16": "float16",
    "bf16": "bfloat16",
    "fp8_e4m3": "fp8", "e4m3": "fp8", "float8_e4m3fn": "fp8", "fp8e4m3": "fp8",
    "e5m2": "fp8_e5m2", "float8_e5m2": "fp8_e5m2",
    "nvfp4": "fp4", "mxfp4": "fp4",
}
DEFAULT_TOLERANCE_SCALE = 8.0
DEFAULT_TOP_K = 5
DEFAULT_MAX_TOKENS = 64
DEFAULT_MIN_EXACT_MATCH_RATE = 0.5  # legacy floor, applied only with `calibration = false`
SETTINGS_KEYS = ("top_k", "max_tokens", "tolerance_nats", "tolerance_scale", "precision",
                 "min_exact_match_rate", "prompts", "calibration", "calibration_margin", "swing_margin", "alpha",
                 "compute_precision", "weight_precision", "kv_cache_precision", "device")
PRECISION_KEYS = ("compute_precision", "weight_precision", "kv_cache_precision")


def normalize_precision(name: str) -> str:
    """Canonical precision name ('bf16' -> 'bfloat16'); a ValueError lists the known names."""
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in UNIT_ROUNDOFF:
        known = ", ".join(sorted(set(UNIT_ROUNDOFF) | set(_ALIASES)))
        raise ValueError(f"unknown precision {name!r}; known: {known}")
    return key


@dataclass(frozen=True, slots=True)
class ToleranceModel:
    """How far a pair's log-odds may swing at a step: scale * u * max(1, |logit|) * sqrt(layers), or fixed.

    With `calibrated_units` (measured: swing_margin x the largest swing HF in the same compute precision
    produced, per max(1, |logit|)) that term replaces the unit-roundoff one for the compute precision;
    each precision in `uncovered` (fp8 KV cache, quantized weights: what the calibration cannot
    reproduce) adds its unit-roundoff term in quadrature.
    """

    precision: str = "bfloat16"
    n_layers: int = 1
    scale: float = DEFAULT_TOLERANCE_SCALE
    fixed_nats: float | None = None
    calibrated_units: float | None = None
    uncovered: tuple[str, ...] = ()

    def _roundoff(self, precision: str, magnitude: float) -> float:
        return self.scale * UNIT_ROUNDOFF[precision] * magnitude * math.sqrt(max(1, self.n_layers))

    def at(self, logit_scale: float | None) -> float:
        """The tolerance (nats) for a step whose largest top-k |logit| is `logit_scale` (None: 1)."""
        if self.fixed_nats is not None:
            return self.fixed_nats
        magnitude = max(1.0, abs(logit_scale)) if logit_scale is not None and math.isfinite(logit_scale) else 1.0
        if self.calibrated_units is None:
            return self._roundoff(self.precision, magnitude)
        parts = [self.calibrated_units * magnitude] + [self._roundoff(p, magnitude) for p in self.uncovered]
        return math.sqrt(sum(x * x for x in parts))

    def describe(self) -> str:
        if self.fixed_nats is not None:
            return f"fixed {self.fixed_nats:g} nats"
        if self.calibrated_units is not None:
            text = f"calibrated {self.calibrated_units:.4g} x max(1,|logit|)"
            for p in self.uncovered:
                text += f" (+) {self.scale:g} x 2^-{-round(math.log2(UNIT_ROUNDOFF[p]))} ({p}) x max(1,|logit|) x sqrt({self.n_layers})"
            return text
        exponent = -round(math.log2(UNIT_ROUNDOFF[self.precision]))
        return f"{self.scale:g} x 2^-{exponent} ({self.precision}) x max(1,|logit|) x sqrt({self.n_layers} layers)"


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True, slots=True)
class EquivalenceSettings:
    """A target's `options.equivalence` table (every key optional)."""

    top_k: int = DEFAULT_TOP_K
    max_tokens: int = DEFAULT_MAX_TOKENS
    tolerance_nats: float | None = None
    tolerance_scale: float = DEFAULT_TOLERANCE_SCALE
    precision: str | None = None
    min_exact_match_rate: float | None = None  # None: derived (calibration on) or the legacy 0.5 (calibration off)
    prompts: str | None = None
    calibration: bool = True
    calibration_margin: float = 1.5
    swing_margin: float = 2.0
    alpha: float = 0.05
    compute_precision: str | None = None
    weight_precision: str | None = None
    kv_cache_precision: str | None = None
    device: str | None = None  # where the HF reference runs: auto | cpu | cuda | cuda:N (own process on CUDA)

    @property
    def exact_match_floor(self) -> float | None:
        """The floor actually applied: the explicit one, else the legacy default only without calibration."""
        if self.min_exact_match_rate is not None:
            return self.min_exact_match_rate
        return None if self.calibration else DEFAULT_MIN_EXACT_MATCH_RATE

    @classmethod
    def from_target(cls, target: Target) -> EquivalenceSettings:
        """Read `options.equivalence` of `target`; errors name the target, key and value."""
        raw = target.options.get("equivalence", {})
        try:
            return cls.from_mapping(raw)
        except ValueError as exc:
            raise ValueError(f"{target.source}: target {target.name!r} options.equivalence: {exc}") from None

    @classmethod
    def from_mapping(cls, raw: Any) -> EquivalenceSettings:
        if not isinstance(raw, Mapping):
            raise ValueError(f"must be a table with keys {', '.join(SETTINGS_KEYS)}, got {raw!r}")
        unknown = sorted(set(raw) - set(SETTINGS_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SETTINGS_KEYS)}")
        for key in ("top_k", "max_tokens"):
            value = raw.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} = {value!r} must be an integer >= 1")
        for key in ("tolerance_nats", "tolerance_scale"):
            value = raw.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"{key} = {value!r} must be a non-negative number (nats)" if key == "tolerance_nats"
                                 else f"{key} = {value!r} must be a non-negative number")
        rate = raw.get("min_exact_match_rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1):
            raise ValueError(f"min_exact_match_rate = {rate!r} must be a number between 0 and 1")
        precision = raw.get("precision")
        if precision is not None:
            precision = normalize_precision(str(precision))
        if "calibration" in raw and not isinstance(raw["calibration"], bool):
            raise ValueError(f"calibration = {raw['calibration']!r} must be true or false")
        for key in ("calibration_margin", "swing_margin"):
            value = raw.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1):
                raise ValueError(f"{key} = {value!r} must be a number >= 1 (a multiple of the calibration)")
        alpha = raw.get("alpha")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 0.5):
            raise ValueError(f"alpha = {alpha!r} must lie in (0, 0.5), e.g. 0.05")
        device = raw.get("device")
        if device is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(device)):
            raise ValueError(f"device = {device!r} must be auto, cpu, cuda or cuda:N")
        parts = {key: normalize_precision(str(raw[key])) for key in PRECISION_KEYS if raw.get(key) not in (None, "")}
        return cls(
            top_k=raw.get("top_k", DEFAULT_TOP_K),
            max_tokens=raw.get("max_tokens", DEFAULT_MAX_TOKENS),
            tolerance_nats=float(raw["tolerance_nats"]) if raw.get("tolerance_nats") is not None else None,
            tolerance_scale=float(raw.get("tolerance_scale", DEFAULT_TOLERANCE_SCALE)),
            precision=precision,
            min_exact_match_rate=float(rate) if rate is not None else None,
            prompts=raw.get("prompts"),
            calibration=raw.get("calibration", True),
            calibration_margin=float(raw.get("calibration_margin", 1.5)),
            swing_margin=float(raw.get("swing_margin", 2.0)),
            alpha=float(alpha) if alpha is not None else 0.05,
            device=device,
            **parts,
        )


# ----------------------------------------------------------------------------- target precision
def precision_of(target: Target, log_text: str = "") -> str:
    """The coarsest numeric format on the target's path, as a UNIT_ROUNDOFF key.

    `options.equivalence.precision` wins; otherwise what the engine itself records, via
    pytest_llmserve.evidence.precision (the vLLM startup log when given, a TensorRT-LLM engine config.json
    in `engine.dir` or the model dir -- `pretrained_config.dtype` and quantization algos --, a
    ModelOpt hf_quant_config.json, or `options.precision`); failing those, the target's `dtype`
    (else "bfloat16") and vLLM `--quantization` / `--kv-cache-dtype` flags. Of the dtype, the weight
    quantization and the KV-cache quantization, the coarsest bounds the error.
    """
    from ..evidence import precision as engine_precision

    table = target.options.get("equivalence")
    if isinstance(table, Mapping) and table.get("precision"):
        return normalize_precision(str(table["precision"]))
    try:
        info = engine_precision.precision_of(target, log_text)
        found = [_precision_or_none(info.dtype) or "bfloat16",
                 _quant_precision(info.quant_algo), _quant_precision(info.kv_cache_quant_algo)]
    except engine_precision.PrecisionUnknown:
        dtype = target.dtype if target.dtype and target.dtype != "auto" else "bfloat16"
        found = [_precision_or_none(dtype) or "bfloat16"]
        found += [_quant_precision(v) for v in _flag_values(target.args, ("--quantization", "-q", "--kv-cache-dtype"))]
    known = [p for p in found if p is not None and p in UNIT_ROUNDOFF]
    return max(known, key=lambda p: UNIT_ROUNDOFF[p]) if known else "bfloat16"


def _flag_values(args: Sequence[str], flags: Sequence[str]) -> list[str]:
    """Values of `--flag value` and `--flag=value` arguments."""
    out = []
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in flags and eq:
            out.append(value)
        elif arg in flags and i + 1 < len(args):
            out.append(args[i + 1])
    return out


def _precision_or_none(name: str) -> str | None:
    try:
        return normalize_precision(name)
    except ValueError:
        return None


def _quant_precision(algo: Any) -> str | None:
    """Map a quantization name (TRT-LLM quant_algo, vLLM --quantization / --kv-cache-dtype) to a precision."""
    if not algo or str(algo).lower() in ("auto", "none"):
        return None
    name = str(algo).upper()
    if "FP4" in name or "MXFP4" in name:
        return "fp4"
    if "E5M2" in name:
        return "fp8_e5m2"
    if "FP8" in name:
        return "fp8"
    if re.search(r"W4|INT4|AWQ|GPTQ", name):
        return "int4"
    if re.search(r"W8|INT8|SMOOTH|SQ", name):
        return "int8"
    return None


