"""Server-side metrics during a load run: scrape before, during (background thread) and after, then summarise.

Sources, recognised by what the endpoint returns:
* vLLM `/metrics` (Prometheus): `vllm:kv_cache_usage_perc` (a fraction, 1 = full, despite the
  name), `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:num_preemptions_total`,
  `vllm:request_queue_time_seconds_{sum,count}`.
* trtllm-serve `/prometheus/metrics` (needs `return_perf_metrics: true`): `trtllm_kv_cache_utilization`,
  `trtllm_num_requests_running` / `_waiting`, `trtllm_num_paused_requests`,
  `trtllm_request_queue_time_seconds_{sum,count}`.
* trtllm-serve `/metrics` (JSON iteration stats, needs `enable_iter_perf_stats`): per iteration
  `kvCacheStats.{usedNumBlocks,maxNumBlocks}`, `numActiveRequests`, `numQueuedRequests`,
  `inflightBatchingStats.numPausedRequests`. The server keeps only recent iterations and each read
  drains them, so the sampler sees the iterations since its previous read; an idle server holds
  the read up to 2 s (`get_stats_async(2)`), hence the 5 s default timeout.
* Triton `:8002/metrics`: `nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}` (or used/max),
  `nv_trt_llm_request_metrics{request_type="active"|"waiting"}`, `nv_inference_pending_request_count`,
  `nv_inference_queue_duration_us` over `nv_inference_request_success` + `_failure`.
Text is parsed with prometheus_client's `text_string_to_metric_families`. TensorRT-LLM has no
preemption counter; paused requests (its name for preempted ones) are reported as `paused_max`.
"""

from __future__ import annotations

import json
import multiprocessing
import urllib.request
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping


KV_HIGH = 0.95


@dataclass(frozen=True)
class Sample:
    """One scrape, reduced to the canonical quantities (absent ones are missing from `values`)."""

    t_ns: int
    source: str
    values: Mapping[str, float]


@dataclass(frozen=True)
class MetricsSummary:
    """What the server said about itself during a run; `warnings` flag saturation and preemption."""

    source: str
    samples: int
    errors: int
    kv_usage_max: float | None
    kv_usage_mean: float | None
    kv_high_fraction: float | None  # share of samples with KV usage above 95 %
    running_max: float | None
    waiting_max: float | None
    paused_max: float | None
    preemptions_delta: float | None
    queue_time_mean_s: float | None  # mean over requests that finished queueing during the run
    warnings: tuple[str, ...] = ()
    # prefix cache over the run: hits / queries of the counter deltas (vLLM, prompt tokens), or the mean of
    # the server's own hit-rate gauge (TensorRT-LLM); None when the server publishes neither
    prefix_cache_hit_rate: float | None = None
    prefix_cache_queries_delta: float | None = None  # vLLM: prompt tokens looked up during the run
    prefix_caching_enabled: bool | None = None  # vLLM: vllm:cache_config_info{enable_prefix_caching}
    # speculative decoding: 1 + accepted / drafts of the counter deltas (vLLM), or the mean of the gauge
    spec_acceptance_length: float | None = None
    spec_drafts_delta: float | None = None

    def table(self) -> str:
        def fmt(v: float | None, pct: bool = False) -> str:
            return "n/a" if v is None else (f"{100 * v:.1f} %" if pct else f"{v:g}")

        rows = [("source", self.source), ("samples (errors)", f"{self.samples} ({self.errors})"),
                ("KV usage max / mean", f"{fmt(self.kv_usage_max, True)} / {fmt(self.kv_usage_mean, True)}"),
                ("running max", fmt(self.running_max)), ("waiting max", fmt(self.waiting_max)),
                ("paused max", fmt(self.paused_max)), ("preemptions", fmt(self.preemptions_delta)),
                ("queue time mean", "n/a" if self.queue_time_mean_s is None else f"{1000 * self.queue_time_mean_s:.2f} ms")]
        lines = [f"{k:<22} {v}" for k, v in rows] + [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)], via prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def canonical_from_prometheus(samples: Mapping[str, list[tuple[dict[str, str], float]]]) -> tuple[str, dict[str, float]]:
    """(source, canonical values) from parsed Prometheus samples."""

    def rows(name: str, match: Mapping[str, str]) -> list[float]:
        # prometheus_client names counter samples `<name>_total` even when the server wrote `<name>`
        alt = name[: -len("_total")] if name.endswith("_total") else name + "_total"
        found = samples.get(name) or samples.get(alt) or []
        return [v for labels, v in found if all(labels.get(k) == w for k, w in match.items())]

    def total(name: str, **match: str) -> float | None:
        found = rows(name, match)
        return sum(found) if found else None

    def biggest(name: str, **match: str) -> float | None:
        found = rows(name, match)
        return max(found) if found else None

    vals: dict[str, float | None]
    if any(n.startswith("vllm:") for n in samples):
        kv = biggest("vllm:kv_cache_usage_perc")
        vals = {"kv_usage": kv if kv is not None else biggest("vllm:gpu_cache_usage_perc"),
                "running": total("vllm:num_requests_running"), "waiting": total("vllm:num_requests_waiting"),
                "preemptions_total": total("vllm:num_preemptions_total"),
                "queue_time_sum_s": total("vllm:request_queue_time_seconds_sum"),
                "queue_time_count": total("vllm:request_queue_time_seconds_count"),
                # prompt tokens looked up in / found in the prefix cache (counters; CPU vLLM 0.32: *_total)
                "prefix_cache_queries": total("vllm:prefix_cache_queries"),
                "prefix_cache_hits": total("vllm:prefix_cache_hits"),
                "spec_drafts": total("vllm:spec_decode_num_drafts"),
                "spec_accepted": total("vllm:spec_decode_num_accepted_tokens"),
                "prefix_caching_enabled": _config_flag(samples, "vllm:cache_config_info", "enable_prefix_caching")}
        source = "vllm"
    elif any(n.startswith("trtllm_") for n in samples):
        vals = {"kv_usage": biggest("trtllm_kv_cache_utilization"), "running": total("trtllm_num_requests_running"),
                "waiting": total("trtllm_num_requests_waiting"), "paused": total("trtllm_num_paused_requests"),
                "queue_time_sum_s": total("trtllm_request_queue_time_seconds_sum"),
                "queue_time_count": total("trtllm_request_queue_time_seconds_count"),
                "kv_hit_rate_gauge": biggest("trtllm_kv_cache_hit_rate"),
                "spec_acceptance_gauge": biggest("trtllm_spec_decode_acceptance_length")}
        source = "trtllm"
    elif any(n.startswith("nv_") for n in samples):
        kv = biggest("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="fraction")
        if kv is None:
            used = total("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="used")
            cap = total("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="max")
            kv = used / cap if used is not None and cap else None
        running = total("nv_trt_llm_request_metrics", request_type="active")
        queue_us = total("nv_inference_queue_duration_us")
        done = [x for x in (total("nv_inference_request_success"), total("nv_inference_request_failure")) if x is not None]
        vals = {"kv_usage": kv,
                "running": running if running is not None else total("nv_inference_pending_request_count"),
                "waiting": total("nv_trt_llm_request_metrics", request_type="waiting"),
                "queue_time_sum_s": queue_us / 1e6 if queue_us is not None else None,
                "queue_time_count": sum(done) if done else None}
        source = "triton"
    else:
        return "unknown", {}
    return source, {k: v for k, v in vals.items() if v is not None}


def canonical_from_iteration_stats(stats: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """trtllm-serve `/metrics` JSON: the peak of each quantity over the iterations returned."""
    out: dict[str, float] = {}
    stats = list(stats)

    def peak(key: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = max(out.get(key, float(value)), float(value))

    for it in stats:
        kv = it.get("kvCacheStats") or {}
        if kv.get("maxNumBlocks"):
            peak("kv_usage", kv.get("usedNumBlocks", 0) / kv["maxNumBlocks"])
        peak("running", it.get("numActiveRequests"))
        peak("waiting", it.get("numQueuedRequests"))
        peak("paused", (it.get("inflightBatchingStats") or {}).get("numPausedRequests"))
    for key, table, field_name in (("kv_hit_rate_gauge", "kvCacheStats", "cacheHitRate"),
                                   ("spec_acceptance_gauge", "specDecodingStats", "acceptanceLength")):
        seen = [float(v) for it in stats if isinstance(v := (it.get(table) or {}).get(field_name), (int, float))
                and not isinstance(v, bool)]
        if seen:  # a rate per iteration: the mean over the iterations of this read
            out[key] = sum(seen) / len(seen)
    return out


def parse_payload(body: str, content_type: str = "") -> tuple[str, dict[str, float]]:
    """Either format of a metrics endpoint body."""
    stripped = body.lstrip()
    if "json" in content_type or stripped.startswith(("[", "{")):
        data = json.loads(body)
        return "trtllm-iteration-stats", canonical_from_iteration_stats(data if isinstance(data, list) else [data])
    return canonical_from_prometheus(parse_prometheus(body))


def summarize_samples(samples: list[Sample], errors: int = 0, kv_high: float = KV_HIGH) -> MetricsSummary:
    """Peaks, means and deltas; warns when KV usage is above `kv_high` in at least half the samples
    (it "stays" high rather than touching it once) or when any preemption happened."""
    def series(key: str) -> list[float]:
        return [s.values[key] for s in samples if key in s.values]

    kv = series("kv_usage")
    warnings: list[str] = []
    high = sum(1 for v in kv if v > kv_high) / len(kv) if kv else None
    if high is not None and len(kv) >= 2 and high >= 0.5:
        warnings.append(f"KV cache usage stayed above {kv_high:.0%} in {high:.0%} of {len(kv)} samples "
                        f"(max {max(kv):.1%}): the server is memory-bound; latency includes queueing/preemption")
    pre = series("preemptions_total")
    preemptions = pre[-1] - pre[0] if len(pre) >= 2 else None
    if preemptions is not None and preemptions < 0:
        warnings.append("the preemption counter went down during the run (server restarted?)")
        preemptions = None
    if preemptions:
        warnings.append(f"{preemptions:g} preemptions during the run: requests were evicted and recomputed")
    paused = series("paused")
    if paused and max(paused) > 0:
        warnings.append(f"up to {max(paused):g} requests paused (preempted) at once")
    qsum, qcount = series("queue_time_sum_s"), series("queue_time_count")
    queue_mean = None
    if len(qsum) >= 2 and len(qcount) >= 2 and qcount[-1] > qcount[0]:
        queue_mean = (qsum[-1] - qsum[0]) / (qcount[-1] - qcount[0])
    hit_rate, queries = _ratio_of_deltas(series("prefix_cache_hits"), series("prefix_cache_queries"))
    if hit_rate is None and series("kv_hit_rate_gauge"):
        hit_rate = _mean(series("kv_hit_rate_gauge"))
    accepted, drafts = _ratio_of_deltas(series("spec_accepted"), series("spec_drafts"))
    acceptance = 1.0 + accepted if accepted is not None else None
    if acceptance is None and series("spec_acceptance_gauge"):
        acceptance = _mean(series("spec_acceptance_gauge"))
    enabled = series("prefix_caching_enabled")
    return MetricsSummary(
        prefix_cache_hit_rate=hit_rate, prefix_cache_queries_delta=queries,
        prefix_caching_enabled=bool(enabled[-1]) if enabled else None,
        spec_acceptance_length=acceptance, spec_drafts_delta=drafts,
        source=samples[0].source if samples else "none", samples=len(samples), errors=errors,
        kv_usage_max=max(kv) if kv else None, kv_usage_mean=sum(kv) / len(kv) if kv else None, kv_high_fraction=high,
        running_max=max(series("running"), default=None), waiting_max=max(series("waiting"), default=None),
        paused_max=max(paused, default=None), preemptions_delta=preemptions, queue_time_mean_s=queue_mean,
        warnings=tuple(warnings),
    )


def _ratio_of_deltas(numerator: list[float], denominator: list[float]) -> tuple[float | None, float | None]:
    """(delta num / delta den, delta den) between the first and last sample; (None, None) without a pair.

    A counter that did not move gives a ratio of 0 over 0 queries: (0.0, 0.0) for a present counter,
    so "looked up nothing" reads as a hit rate of 0 rather than as a metric the server lacks.
    """
    if len(numerator) < 2 or len(denominator) < 2:
        return None, None
    num, den = numerator[-1] - numerator[0], denominator[-1] - denominator[0]
    if num < 0 or den < 0:  # a counter went down: the server restarted during the run
        return None, None
    return (num / den if den > 0 else 0.0), den


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _config_flag(samples: Mapping[str, list[tuple[dict[str, str], float]]], name: str, label: str) -> float | None:
    """1.0 / 0.0 from an info gauge's label ('True' / 'False'), None when absent."""
    for labels, _value in samples.get(name, []):
        if label in labels:
            return 1.0 if labels[label].lower() == "true" else 0.0
    return None


@dataclass
class MetricsSampler:
    """Scrape `url` every `interval_s` from a child process between `start()` and `stop()`.

    The scraping runs in its own process and keeps raw text only; parsing happens after `stop()`.
    A thread in the load client's process was measured to stall its event loop by hundreds of
    milliseconds (GIL held while fetching and parsing vLLM's large /metrics page), which made the
    client's own self-check reject the run. `start()` and `stop()` each take a sample in-process,
    so counters have a before/after pair even for runs shorter than one interval.
    """

    url: str
    interval_s: float = 0.5
    timeout_s: float = 5.0
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    summary: MetricsSummary | None = None  # set by stop()

    def __post_init__(self) -> None:
        self._process: multiprocessing.process.BaseProcess | None = None
        self._stop: Any = None  # multiprocessing Event and Connection once started (spawn context types)
        self._receiver: Any = None

    def sample_once(self) -> Sample | None:
        try:
            text, content_type = _fetch(self.url, self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - a failed scrape is counted, never fatal to the run
            self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return None
        return self._add(time.time_ns(), text, content_type)

    def _add(self, t_ns: int, text: str, content_type: str) -> Sample | None:
        try:
            source, values = parse_payload(text, content_type)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return None
        sample = Sample(t_ns=t_ns, source=source, values=values)
        self.samples.append(sample)
        return sample

    def start(self) -> MetricsSampler:
        self.sample_once()
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(target=_scrape_loop, name="llmserve-metrics", daemon=True,
                                        args=(self.url, self.interval_s, self.timeout_s, self._stop, sender))
        self._process.start()
        sender.close()
        return self

    def stop(self) -> MetricsSummary:
        raw: list[tuple[int, str, str]] = []
        if self._process is not None:
            self._stop.set()
            try:
                if self._receiver.poll(self.timeout_s + self.interval_s + 5):
                    raw, errors = self._receiver.recv()
                    self.errors.extend(errors)
            except (EOFError, OSError) as exc:
                self.errors.append(f"metrics scraper ended without results: {exc}")
            self._process.join(2)
            if self._process.is_alive():
                self._process.kill()
            self._process = None
        for t_ns, text, content_type in raw:
            self._add(t_ns, text, content_type)
        self.sample_once()
        self.samples.sort(key=lambda sample: sample.t_ns)
        self.summary = summarize_samples(self.samples, errors=len(self.errors))
        return self.summary

    def __enter__(self) -> MetricsSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.summary is None:
            self.stop()


def _fetch(url: str, timeout_s: float) -> tuple[str, str]:
    """GET a metrics page with the standard library (cheap to import in the scraper process)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - our own server
        return response.read().decode("utf-8", "replace"), response.headers.get("content-type", "")


def _scrape_loop(url: str, interval_s: float, timeout_s: float, stop: Any, sender: Any) -> None:
    """Child process: fetch raw pages until told to stop, then send them all back in one message."""
    raw: list[tuple[int, str, str]] = []
    errors: list[str] = []
    while not stop.wait(interval_s):
        try:
            text, content_type = _fetch(url, timeout_s)
            raw.append((time.time_ns(), text, content_type))
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
    sender.send((raw, errors))
    sender.close()
