"""The three precision inputs of the equivalence tolerance, each with where it was read.

compute (the dtype the matmuls and activations run in), weights (a weight quantization, if any)
and KV cache (a KV-cache quantization, if any) are separate: the Hugging Face calibration can run
the compute precision (bf16/fp16) but not an fp8 KV cache or quantized weights, so those keep
their unit-roundoff tolerance and turn the calibration tests informational.

Sources, first that answers: `options.equivalence.{compute,weight,kv_cache}_precision`; the legacy
`options.equivalence.precision` (a float format sets compute, a quantized one weights); what the
engine recorded (pytest_llmserve.evidence.precision: the vLLM startup log, a TensorRT-LLM engine config, a
ModelOpt config, `options.precision`); else the target's `dtype` and vLLM `--quantization` /
`--kv-cache-dtype` flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..settings.config import Target
from .near_tie import UNIT_ROUNDOFF, _flag_values, _precision_or_none, _quant_precision, normalize_precision

FLOAT_FORMATS = ("float32", "bfloat16", "float16")
CALIBRATABLE = ("bfloat16", "float16")  # HF can run these; float32 compute is calibrated by the reference itself


@dataclass(frozen=True, slots=True)
class Component:
    """One precision input: its format (None = not quantized, i.e. the compute precision) and its source."""

    role: str  # compute | weights | kv_cache
    precision: str | None
    source: str

    def describe(self) -> str:
        return f"{self.role} {self.precision or 'not quantized'} (from {self.source})"


@dataclass(frozen=True, slots=True)
class PrecisionParts:
    """Compute, weight and KV-cache precision of a target."""

    compute: Component
    weights: Component
    kv_cache: Component
    evidence: str = ""  # the engine's own words, when it was read from the engine

    def coarsest(self) -> str:
        """The coarsest format on the path (the legacy single-precision tolerance)."""
        known = [p for c in (self.compute, self.weights, self.kv_cache)
                 if (p := c.precision) is not None and p in UNIT_ROUNDOFF]
        return max(known, key=lambda p: UNIT_ROUNDOFF[p]) if known else "bfloat16"

    def calibration_dtype(self) -> str | None:
        """The HF dtype that reproduces the compute precision (None: float32, the reference is the calibration)."""
        return self.compute.precision if self.compute.precision in CALIBRATABLE else None

    def uncovered(self) -> tuple[str, ...]:
        """Formats on the path a HF calibration cannot reproduce (quantized weights/KV, non-float compute)."""
        out = []
        if self.compute.precision not in FLOAT_FORMATS:
            out.append(self.compute.precision or "bfloat16")
        for part in (self.weights, self.kv_cache):
            if part.precision is not None and part.precision not in FLOAT_FORMATS:
                out.append(part.precision)
        return tuple(dict.fromkeys(out))

    def lines(self) -> tuple[str, ...]:
        parts = tuple(c.describe() for c in (self.compute, self.weights, self.kv_cache))
        return parts + ((f"engine said: {self.evidence}",) if self.evidence else ())


def precision_parts(target: Target, log_text: str = "") -> PrecisionParts:
    """Read the three inputs for `target` (see the module docstring for the order of sources)."""
    from ..evidence import precision as engine_precision

    table = target.options.get("equivalence")
    table = table if isinstance(table, Mapping) else {}
    where = f"target {target.name!r} options.equivalence"
    try:
        info = engine_precision.precision_of(target, log_text)
        found = {"compute": (_precision_or_none(info.dtype) or "bfloat16", info.source),
                 "weights": (_quant_precision(info.quant_algo), info.source),
                 "kv_cache": (_quant_precision(info.kv_cache_quant_algo), info.source)}
        evidence = info.evidence
    except engine_precision.PrecisionUnknown:
        dtype = target.dtype if target.dtype and target.dtype != "auto" else "bfloat16"
        quant = _flag_values(target.args, ("--quantization", "-q"))
        kv = _flag_values(target.args, ("--kv-cache-dtype",))
        found = {"compute": (_precision_or_none(dtype) or "bfloat16", "target dtype" if target.dtype else "default"),
                 "weights": (_quant_precision(quant[-1]) if quant else None, "--quantization flag" if quant else "default"),
                 "kv_cache": (_quant_precision(kv[-1]) if kv else None, "--kv-cache-dtype flag" if kv else "default")}
        evidence = ""
    legacy = table.get("precision")
    if legacy:
        name = normalize_precision(str(legacy))
        found["compute" if name in FLOAT_FORMATS else "weights"] = (name, f"{where}.precision")
    for role, key in (("compute", "compute_precision"), ("weights", "weight_precision"),
                      ("kv_cache", "kv_cache_precision")):
        if table.get(key):
            found[role] = (normalize_precision(str(table[key])), f"{where}.{key}")
    parts: list[Component] = []
    for role in ("compute", "weights", "kv_cache"):
        precision, source = found[role]
        if role != "compute" and precision in FLOAT_FORMATS:
            precision = None  # a KV cache stored in a float format is not quantized
        parts.append(Component(role, precision, source))
    compute, weights, kv_cache = parts
    return PrecisionParts(compute, weights, kv_cache, evidence=evidence)
