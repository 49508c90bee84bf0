"""SLO keys on what the server did (its /metrics over the run) and on goodput, gated like latency keys.

Each key maps to a metric the verdict table shows. Server metrics come from the MetricsSummary the
out-of-process sampler built; goodput from the client's own records. A key whose metric the server
does not publish is *not measurable on this server*: the row says so, with why, and the gate FAILS
(a gate someone asked for must not pass because nothing was measured; drop the key for servers that
cannot report it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from ..load import RunResult
from ..evidence.server_metrics import MetricsSummary

# key -> (metric in the verdict table, the limit is an upper bound)
SERVER_LIMIT_KEYS: Mapping[str, tuple[str, bool]] = {
    "min_prefix_cache_hit_rate": ("prefix_cache_hit_rate", False),  # fraction 0..1
    "min_spec_acceptance_length": ("spec_acceptance_length", False),  # tokens per draft step, >= 1
    "max_kv_cache_usage": ("kv_cache_usage_max", True),  # fraction 0..1
    "max_preemptions": ("preemptions", True),  # vLLM: counter delta; TensorRT-LLM: most paused at once
    "max_queue_time_ms": ("queue_time_mean_ms", True),
    "min_goodput": ("goodput", False),  # share of measured requests within every goodput_* limit
}
# per-request limits that define a "good" request for min_goodput (parameters, not rows of their own)
GOODPUT_PARAMS: Mapping[str, str] = {"goodput_ttft_ms": "TTFT", "goodput_tpot_ms": "TPOT", "goodput_e2e_ms": "E2E"}
FRACTION_KEYS = ("min_prefix_cache_hit_rate", "max_kv_cache_usage", "min_goodput",
                 "max_spec_acceptance_drop")  # the last: relative, against the incumbent (server_incumbent.py)


def check_value(key: str, value: float) -> str | None:
    """Why `value` cannot be a limit for `key` (beyond being a non-negative number), or None."""
    if key in FRACTION_KEYS and value > 1:
        return f"is a fraction: give a value between 0 and 1 (e.g. {key}=0.5 for 50 %)"
    return None


@dataclass(frozen=True)
class RuntimeMeasurements:
    """Values for the server-side keys and goodput, plus why each missing one is missing."""

    values: dict[str, float]
    unmeasurable: dict[str, str]  # metric -> why not measurable on this server
    context: list[str]


def measure(summary: MetricsSummary | None, result: RunResult, limits: Mapping[str, float],
            metrics_url: str | None = None) -> RuntimeMeasurements:
    """Measure every server-side metric and goodput that `limits` asks for (and any available)."""
    values: dict[str, float] = {}
    why: dict[str, str] = {}
    context: list[str] = []
    if summary is None or not summary.samples:
        where = f"its metrics endpoint {metrics_url}" if metrics_url else "no metrics endpoint is known for it"
        reason = f"not measurable on this server: {where} gave no samples during the run"
        for metric, _ in SERVER_LIMIT_KEYS.values():
            if metric != "goodput":  # measured by the client
                why[metric] = reason
    else:
        _from_summary(summary, values, why)
        if "min_prefix_cache_hit_rate" in limits and summary.prefix_caching_enabled is False:
            context.append("prefix caching is off on this server (vllm:cache_config_info enable_prefix_caching=False)")
    if "min_goodput" in limits:
        _goodput(result, limits, values, why, context)
    return RuntimeMeasurements(values=values, unmeasurable=why, context=context)


def _from_summary(s: MetricsSummary, values: dict[str, float], why: dict[str, str]) -> None:
    absent = f"not measurable on this server: its /metrics ({s.source})"
    if s.prefix_cache_hit_rate is not None:
        values["prefix_cache_hit_rate"] = s.prefix_cache_hit_rate
    else:
        why["prefix_cache_hit_rate"] = (f"{absent} has no prefix-cache counters (vllm:prefix_cache_hits / "
                                        "_queries) or hit-rate gauge (trtllm_kv_cache_hit_rate)")
    if s.spec_acceptance_length is not None and (s.spec_drafts_delta is None or s.spec_drafts_delta > 0):
        values["spec_acceptance_length"] = s.spec_acceptance_length
    elif s.spec_drafts_delta == 0:
        why["spec_acceptance_length"] = ("not measurable on this server: no speculative draft was made during the "
                                         "run (vllm:spec_decode_num_drafts did not move)")
    else:
        why["spec_acceptance_length"] = (f"{absent} has no speculative-decoding metrics (vllm:spec_decode_num_drafts "
                                         "/ _num_accepted_tokens, trtllm_spec_decode_acceptance_length): is "
                                         "speculative decoding configured?")
    if s.kv_usage_max is not None:
        values["kv_cache_usage_max"] = s.kv_usage_max
    else:
        why["kv_cache_usage_max"] = f"{absent} has no KV-cache usage gauge"
    if s.preemptions_delta is not None:
        values["preemptions"] = s.preemptions_delta
    elif s.paused_max is not None:
        values["preemptions"] = s.paused_max
    else:
        why["preemptions"] = f"{absent} has no preemption counter or paused-request gauge"
    if s.queue_time_mean_s is not None:
        values["queue_time_mean_ms"] = 1000 * s.queue_time_mean_s
    else:
        why["queue_time_mean_ms"] = f"{absent} has no queue-time histogram, or no request finished queueing"


def _goodput(result: RunResult, limits: Mapping[str, float], values: dict[str, float], why: dict[str, str],
             context: list[str]) -> None:
    params = {k: limits[k] for k in GOODPUT_PARAMS if k in limits}
    if not params:
        why["goodput"] = ("not measurable: min_goodput needs a per-request limit; set goodput_ttft_ms, "
                          "goodput_tpot_ms and/or goodput_e2e_ms")
        return
    good, n = goodput_counts(result, params)
    if n == 0:
        why["goodput"] = "not measurable: no measured request"
        return
    values["goodput"] = good / n
    rule = " and ".join(f"{GOODPUT_PARAMS[k]} <= {v:g} ms" for k, v in params.items())
    context.append(f"goodput: {good} of {n} measured requests ({good / n:.1%}) succeeded with {rule} "
                   "(failed requests count as not good)")


def goodput_counts(result: RunResult, params: Mapping[str, float]) -> tuple[int, int]:
    """(good, measured): requests that succeeded within every per-request limit in `params`."""
    good = n = 0
    for r in result.records:
        if r.warmup:
            continue
        n += 1
        if not r.ok:
            continue
        measured = {"goodput_ttft_ms": r.ttft_ms, "goodput_tpot_ms": r.tpot_ms, "goodput_e2e_ms": r.e2e_ms}
        if all(_within(measured[k], v) for k, v in params.items()):
            good += 1
    return good, n


def _within(value: float | None, limit: float) -> bool:
    # a one-token answer has no TPOT: it cannot break a TPOT limit
    return value is None or (math.isfinite(value) and value <= limit)



STREAMING_ONLY = ("itl_", "tpot_", "goodput_tpot_ms")


def applicable_limits(limits: Mapping[str, float], stream: bool) -> tuple[dict[str, float], list[str]]:
    """Limits that mean something for this run, and a context line for those set aside.

    A non-streaming run has no inter-token gaps (ITL/TPOT), and its "first token" is the whole answer, so
    a target-wide `itl_p95_ms` or `ttft_p95_ms` (an interactive promise) is not applied to it (said in the
    context) instead of failing on a metric that cannot exist or means E2E: it is judged by E2E and
    throughput. (On the H200 a batch round's "TTFT" p95 was its 14.7 s E2E against a 1 s TTFT limit.)
    """
    if stream:
        return dict(limits), []
    gaps = sorted(k for k in limits if k.startswith(STREAMING_ONLY))
    first = sorted(k for k in limits if k.startswith("ttft_"))
    kept = {k: v for k, v in limits.items() if k not in gaps and k not in first}
    note = []
    if gaps:
        note.append(f"non-streaming requests: {', '.join(gaps)} not applied (no inter-token gaps to measure)")
    if first:
        note.append(f"non-streaming requests: {', '.join(first)} not applied (the first token arrives with the "
                    "whole answer: judged by e2e and throughput)")
    return kept, note
