"""Concurrency sweeps: the same work at each concurrency against one or more targets, curves and crossovers.

    result = run_sweep([SweepTarget("a", url_a, "m"), SweepTarget("b", url_b, "m")], [1, 4, 16, 64],
                       requests_per_level=256)
    result.crossovers("output_tok_s")   # where one target's throughput overtakes the other's
    result.markdown(); result.to_dict(); plots.save_sweep_png(result, "sweep.png")

Matched work: at each (concurrency, repeat) every target gets the same LoadSpec (same prompts, same
output length forced by ignore_eos or min_tokens where the probed server accepts them, else verified
per response; with `ignore_eos=False` nothing is forced and the output length is whatever the server
decodes up to max_tokens), and the order of targets rotates from one run to the next so that
none always runs first after an idle period. A crossover is judged against noise: throughput needs
repeated runs (a Welch interval over repeats), percentile latencies use a bootstrap over requests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..store.baselines import higher_is_better
from ..load import ClientOptions, LoadSpec, RunResult
from ..load.fit import FittedLoad, fit_load
from .live_run import LiveEndpoint, Runner, run_watched
from ..report.progress import Emit
from ..checks.stats import Interval, bootstrap_percentile_diff_ci, welch_relative_mean_diff_ci

POINT_METRICS = ("output_tok_s", "requests_s", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "tpot_p50_ms",
                 "tpot_p95_ms", "itl_p50_ms", "itl_p95_ms", "e2e_p50_ms", "e2e_p95_ms", "error_rate")
SAMPLE_FAMILIES = ("ttft_ms", "tpot_ms", "e2e_ms", "step_ms")  # one value per successful request
# step_ms: a request's median inter-token gap, its decode-step time with prefills of others mostly filtered out
_MIN_BOOTSTRAP = 20  # fewer requests than this at a level: no noise estimate for a percentile there


SweepTarget = LiveEndpoint  # one endpoint in a sweep


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One run: a target at one concurrency (one repeat), its metrics and per-request samples."""

    target: str
    concurrency: int
    repeat: int
    metrics: Mapping[str, float]
    completed: int
    requests: int
    errors: Mapping[str, int]
    duration_s: float
    valid: bool
    invalid_reasons: tuple[str, ...] = ()
    samples: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    server: Mapping[str, Any] | None = None  # server_metrics.MetricsSummary as a dict
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Crossover:
    """Between two adjacent levels the leader on `metric` changes from one target to the other."""

    metric: str
    leader_below: str
    leader_above: str
    c_low: int
    c_high: int
    at: float  # interpolated concurrency (log2 scale) where the two curves meet
    significant: bool | None  # both bracketing differences exclude 0; None: no noise estimate
    note: str

    def describe(self) -> str:
        verdict = {True: "significant", False: "within noise", None: "unverified"}[self.significant]
        return (f"{self.leader_above} overtakes {self.leader_below} on {self.metric} between c={self.c_low} and "
                f"c={self.c_high} (curves meet near c≈{self.at:.3g}); {verdict}: {self.note}")


@dataclass(frozen=True)
class SweepResult:
    """Every run of a sweep plus the work description; aggregates, crossovers and renderings."""

    targets: tuple[SweepTarget, ...]
    concurrencies: tuple[int, ...]
    points: tuple[SweepPoint, ...]
    work: Mapping[str, Any]
    hardware: str = ""

    def runs(self, target: str, c: int) -> list[SweepPoint]:
        return [p for p in self.points if p.target == target and p.concurrency == c]

    def values(self, target: str, c: int, metric: str) -> list[float]:
        return [v for p in self.runs(target, c) if (v := p.metrics.get(metric)) is not None and math.isfinite(v)]

    def value(self, target: str, c: int, metric: str) -> float:
        """Mean over repeats; NaN when the level has no finite value."""
        vals = self.values(target, c, metric)
        return float(np.mean(vals)) if vals else math.nan

    def pooled(self, target: str, c: int, family: str) -> np.ndarray:
        return np.asarray([x for p in self.runs(target, c) for x in p.samples.get(family, ())], dtype=float)

    def level_difference(self, a: str, b: str, c: int, metric: str) -> Interval | None:
        """95 % CI of metric(a)/metric(b) − 1 at level c, or None when the noise cannot be estimated."""
        if metric.endswith("_ms") and "_p" in metric:
            family, q = metric.split("_p")[0] + "_ms", float(metric.split("_p")[1].removesuffix("_ms"))
            sa, sb = self.pooled(a, c, family), self.pooled(b, c, family)
            if min(sa.size, sb.size) < _MIN_BOOTSTRAP:
                return None
            return bootstrap_percentile_diff_ci(sa, sb, q, relative=True, n_resamples=2000, seed=c)
        va, vb = self.values(a, c, metric), self.values(b, c, metric)
        if min(len(va), len(vb)) < 2 or min(np.mean(va), np.mean(vb)) <= 0:
            return None
        return welch_relative_mean_diff_ci(va, vb)

    def crossovers(self, metric: str = "output_tok_s") -> list[Crossover]:
        """Every change of leader between adjacent levels, for every pair of targets."""
        out = []
        names = [t.name for t in self.targets]
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                out += self._pair_crossovers(a, b, metric)
        return out

    def _pair_crossovers(self, a: str, b: str, metric: str) -> list[Crossover]:
        levels = [c for c in self.concurrencies
                  if self.value(a, c, metric) > 0 and self.value(b, c, metric) > 0]
        # log ratio: > 0 means a's value is larger; the zero crossing is the same for either direction
        ratio = {c: math.log(self.value(a, c, metric) / self.value(b, c, metric)) for c in levels}
        better_a = higher_is_better(metric)
        out = []
        for lo, hi in zip(levels, levels[1:]):
            r_lo, r_hi = ratio[lo], ratio[hi]
            if r_lo == 0 or r_hi == 0 or (r_lo > 0) == (r_hi > 0):
                continue
            x_lo, x_hi = math.log2(lo), math.log2(hi)
            at = 2 ** (x_lo + (x_hi - x_lo) * r_lo / (r_lo - r_hi))
            lead_lo = a if (r_lo > 0) == better_a else b
            lead_hi = b if lead_lo == a else a
            diffs = {c: self.level_difference(a, b, c, metric) for c in (lo, hi)}
            if any(d is None for d in diffs.values()):
                significant = None
                how = ("one run per level: repeat the sweep (--repeats 3) to test it against run-to-run noise"
                       if not metric.endswith("_ms") else f"fewer than {_MIN_BOOTSTRAP} requests at a level")
            else:
                known = {c: d for c, d in diffs.items() if d is not None}  # all of them (checked above)
                significant = all(not d.contains(0.0) for d in known.values())
                how = "; ".join(f"c={c}: {a}/{b} − 1 = {d.estimate:+.1%} [{d.low:+.1%}, {d.high:+.1%}]"
                                for c, d in known.items())
            shaky = [c for c in (lo, hi) if not all(p.valid for t in (a, b) for p in self.runs(t, c))]
            if shaky:
                how += f"; runs at c={', '.join(map(str, shaky))} are invalid (see notes), so this is not a finding"
                significant = False if significant else significant
            out.append(Crossover(metric, lead_lo, lead_hi, lo, hi, at, significant, how))
        return out

    # ------------------------------------------------------------------ renderings
    def markdown(self, crossover_metrics: Sequence[str] = ("output_tok_s", "ttft_p95_ms")) -> str:
        """A results table (one row per target and concurrency), the crossovers and the warnings."""
        w = self.work
        lines = [f"### Concurrency sweep ({', '.join(t.name for t in self.targets)})", "",
                 f"Work per level and target: {w.get('requests_per_level')} measured requests after "
                 f"{w.get('warmup', 'auto')} warm-up, {w.get('input_len')} prompt / {w.get('output_len')} output "
                 f"tokens (matched work: {w.get('matched_work', 'forced (ignore_eos)')}), endpoint "
                 f"`{w.get('endpoint')}`, {w.get('repeats')} run(s) per level"
                 + (f", hardware `{self.hardware}`" if self.hardware else "") + "."
                 + (" Cells with several runs show the mean ± half the range." if (w.get("repeats") or 1) > 1 else "")
                 + " ⚠ marks a level with an invalid run (see notes).", "",
                 "| c | target | output tok/s | req/s | TTFT p50 ms | TTFT p95 ms | TPOT p50 ms | TPOT p95 ms "
                 "| E2E p95 ms | errors | server: KV max, waiting max |",
                 "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for c in self.concurrencies:
            for t in self.targets:
                runs = self.runs(t.name, c)
                if not runs:
                    continue
                cells = [_cell(self.values(t.name, c, m)) for m in
                         ("output_tok_s", "requests_s", "ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "tpot_p95_ms",
                          "e2e_p95_ms")]
                errors = sum(sum(p.errors.values()) for p in runs)
                flag = "" if all(p.valid for p in runs) else " ⚠"
                lines.append(f"| {c} | {t.name}{flag} | " + " | ".join(cells) + f" | {errors} | {_server_cell(runs)} |")
        for metric in crossover_metrics:
            found = self.crossovers(metric)
            lines += ["", f"Crossovers on {metric}: " + ("none in the levels measured" if not found else "")]
            lines += [f"- {x.describe()}" for x in found]
        notes = self.notes()
        if notes:
            lines += ["", "Notes:"] + [f"- {n}" for n in notes]
        return "\n".join(lines) + "\n"

    def notes(self) -> list[str]:
        """Invalid runs, server warnings, and levels too short to reach a steady state."""
        out = []
        for p in self.points:
            for r in p.invalid_reasons:
                out.append(f"{p.target} c={p.concurrency} run {p.repeat + 1}: INVALID: {r}")
            out += [f"{p.target} c={p.concurrency} run {p.repeat + 1}: {x}" for x in p.warnings]
        n = self.work.get("requests_per_level") or 0
        short = [c for c in self.concurrencies if n < 4 * c]
        if short:
            out.append(f"at c={', '.join(map(str, short))} fewer than 4×c requests were measured: ramp-up and drain "
                       "are a large share of the run, so throughput there is understated")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"schema": 1, "hardware": self.hardware, "work": dict(self.work),
                "targets": [asdict(t) for t in self.targets], "concurrencies": list(self.concurrencies),
                "points": [_point_dict(p) for p in self.points],
                "crossovers": {m: [asdict(x) for x in self.crossovers(m)] for m in ("output_tok_s", "ttft_p95_ms")}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepResult:
        """Read back what to_dict wrote (to re-render tables and plots without re-running)."""
        points = tuple(SweepPoint(**{**p, "metrics": {k: (math.nan if v is None else v) for k, v in p["metrics"].items()},
                                     "invalid_reasons": tuple(p["invalid_reasons"]), "warnings": tuple(p["warnings"]),
                                     "samples": {k: tuple(v) for k, v in p["samples"].items()}})
                       for p in d["points"])
        return cls(tuple(SweepTarget(**t) for t in d["targets"]), tuple(d["concurrencies"]), points,
                   dict(d["work"]), d.get("hardware", ""))


def _point_dict(p: SweepPoint) -> dict[str, Any]:
    d = asdict(p)
    d["metrics"] = {k: (v if math.isfinite(v) else None) for k, v in p.metrics.items()}
    d["samples"] = {k: [round(x, 4) for x in v] for k, v in p.samples.items()}
    return d


def _cell(vals: list[float]) -> str:
    if not vals:
        return "n/a"
    def fmt(x: float) -> str:
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.1f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) >= 0.01 or x == 0 else f"{x:.2g}"

    text = fmt(float(np.mean(vals)))
    if len(vals) > 1:  # the spread over repeats, so a reader sees how much one run moves
        text += f" ±{fmt((max(vals) - min(vals)) / 2)}"
    return text


def _server_cell(runs: list[SweepPoint]) -> str:
    kv = [p.server["kv_usage_max"] for p in runs if p.server and p.server.get("kv_usage_max") is not None]
    waiting = [p.server["waiting_max"] for p in runs if p.server and p.server.get("waiting_max") is not None]
    if not kv and not waiting:
        return "n/a"
    return f"{max(kv):.1%}, {max(waiting):g}" if kv and waiting else (f"{max(kv):.1%}" if kv else f"-, {max(waiting):g}")


def point_from_result(target: str, c: int, repeat: int, result: RunResult, server: Any = None) -> SweepPoint:
    """Reduce a RunResult to a SweepPoint (metrics, per-request samples, server summary)."""
    metrics = result.metrics()
    ok = [r for r in result.records if not r.warmup and r.ok]
    samples = {"ttft_ms": tuple(x for r in ok if (x := r.ttft_ms) is not None),
               "tpot_ms": tuple(x for r in ok if (x := r.tpot_ms) is not None),
               "e2e_ms": tuple(x for r in ok if (x := r.e2e_ms) is not None),
               "step_ms": tuple(float(np.median(r.itl_ms)) for r in ok if len(r.itl_ms) > 0)}
    s = result.summary
    return SweepPoint(target, c, repeat, {m: float(metrics.get(m, math.nan)) for m in POINT_METRICS},
                      s.completed, s.requests, dict(s.errors), s.duration_s, result.valid,
                      tuple(result.invalid_reasons), samples,
                      asdict(server) if server is not None else None,
                      tuple(server.warnings) if server is not None else ())


def run_sweep(targets: Sequence[SweepTarget], concurrencies: Sequence[int], *, requests_per_level: int = 64,
              input_len: int = 64, output_len: int = 64, warmup: int | None = None, repeats: int = 1,
              endpoint: str | None = None, ignore_eos: bool = True, seed: int = 0,
              options: ClientOptions | None = None,
              emit: Emit | None = None, interval_s: float = 10.0, runner: Runner | None = None,
              server_metrics: bool = True, hardware: str = "", capabilities: Any = None) -> SweepResult:
    """Run every target at every concurrency (ascending), `repeats` times, with matched work.

    `capabilities`: what every target accepts (servers.capabilities.common of their probes); the work
    is fitted to it once per spec, so every target gets the same requests. `endpoint` None: completions,
    or chat where the targets lack completions.
    """
    levels = tuple(sorted(set(int(c) for c in concurrencies)))
    if not targets or not levels or min(levels) < 1:
        raise ValueError("give at least one target and concurrencies >= 1, e.g. --concurrency 1,2,4,8")
    if len({t.name for t in targets}) != len(targets):
        raise ValueError(f"target names must be unique, got {[t.name for t in targets]}")
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be >= 1")
    points, total, k = [], len(levels) * repeats * len(targets), 0
    fitted: FittedLoad | None = None
    for li, c in enumerate(levels):
        for r in range(repeats):
            spec = LoadSpec(endpoint=endpoint or "completions", concurrency=c, requests=requests_per_level,
                            warmup=min(c, 8) if warmup is None else warmup, input_len=input_len,
                            output_len=output_len, ignore_eos=ignore_eos, seed=seed + r)
            explicit = ({"endpoint"} if endpoint else set()) | (set() if ignore_eos else {"ignore_eos"})
            fitted = fit_load(spec, capabilities, explicit=explicit)
            shift = (li + r) % len(targets)
            for t in [*targets[shift:], *targets[:shift]]:
                k += 1
                points.append(_one_run(t, c, r, fitted, f"({k}/{total})", options=options, runner=runner,
                                       emit=emit, interval_s=interval_s, server_metrics=server_metrics))
    assert fitted is not None
    work = {"requests_per_level": requests_per_level, "warmup": "min(c, 8)" if warmup is None else warmup,
            "input_len": input_len, "output_len": output_len, "endpoint": fitted.spec.endpoint,
            "ignore_eos": fitted.spec.ignore_eos, "repeats": repeats, "seed": seed, "prompt_form": fitted.prompt_form,
            "matched_work": fitted.describe().split("matched work: ")[1]}
    return SweepResult(tuple(targets), levels, tuple(points), work, hardware)


def _one_run(t: SweepTarget, c: int, r: int, fitted: FittedLoad, counter: str, *, options: ClientOptions | None,
             runner: Runner | None, emit: Emit | None, interval_s: float, server_metrics: bool) -> SweepPoint:
    label = f"sweep {t.name} c={c}" + (f" run {r + 1}" if r else "") + f" {counter}"
    result, summary = run_watched(t, fitted.spec, label, options=options, runner=runner, emit=emit,
                                  interval_s=interval_s, server_metrics=server_metrics)
    result = fitted.check(result)
    point = point_from_result(t.name, c, r, result, summary)
    if emit is not None:
        s = result.summary
        emit(f"llmserve: {label} done: {s.completed}/{s.requests} ok, {s.output_tok_s:,.0f} tok/s, TTFT p95 "
             f"{point.metrics['ttft_p95_ms']:.1f} ms, {s.duration_s:.1f} s" + ("" if result.valid else " (INVALID)"))
    return point
