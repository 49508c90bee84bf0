"""CUDA graphs from timing alone: decode-step time by batch size against the same server started eager.

No server exposes graph replay as a metric, and a silent fall-back to eager (TensorRT-LLM's PyTorch
backend under KV pressure, its PR #16072; vLLM above its largest capture size) leaves no log line,
so the log/config readers (checks/*_evidence.py) cannot see it. Replaying a graph removes the
per-kernel launch cost from every decode step, so at a batch size where graphs replay, a step is
faster than the same server's step with graphs switched off. The rule, for each concurrency c of a
closed-loop sweep with fixed output lengths (the batch is then about c):

    r_c = median step time (target) / median step time (control, graphs off), a request's step time
          being its median inter-token gap (sweep samples `step_ms`); 95 % bootstrap interval over requests
    graphed  the whole interval is below 1 / min_speedup
    eager    the whole interval is above 1 / min_speedup (as fast as the control, or slower)
    unclear  otherwise

Verdict: `on` (graphed at some level, eager at none), `off` (eager at some level, graphed at none),
`partial` (both; the usual shape is graphed up to a capture limit and eager above it),
`inconclusive` (no level decided). Each verdict carries `disagreement`: the share of bootstrap
replicas of the whole data set (requests resampled per level and side) whose verdict differs from
it, an estimate of its error rate from sampling noise. What it cannot see: graphs that save less
than min_speedup, and a control that is not really eager (then "off" means "no faster than control").

The control must be measured in the same sweep, interleaved on the same machine (`llmserve sweep`
rotates the targets at every level). On the H200 the eager server's step time moved by up to 1.66x
between two machines (graphs on: by at most 5 %), so a control from another run turned an eager
target into "on" in 100 % of trials (benchmarks/graph_timing_error.py, case `cross`); within one
sweep the wrong-verdict rate was 0-2.5 % and no eager target was ever called "on".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .stats import bootstrap_percentile_diff_ci

DEFAULT_MIN_SPEEDUP = 1.05  # graphs on transformers serve, H200, 1.05 B: 1.14x at c=1 to 4.4x at c=32 (docs/h200_run.md)
MIN_REQUESTS = 8  # per level and side: fewer and the interval says little; the level is left out
VERDICTS = ("on", "off", "partial", "inconclusive")


@dataclass(frozen=True, slots=True)
class LevelCall:
    """One concurrency: the step-time ratio target/control, its interval, and what it says."""

    concurrency: int
    ratio: float
    low: float
    high: float
    call: str  # graphed | eager | unclear
    n_target: int
    n_control: int


@dataclass(frozen=True)
class TimingVerdict:
    """on / off / partial / inconclusive from step times, per-level evidence, and its resampling error rate."""

    verdict: str
    levels: tuple[LevelCall, ...]
    min_speedup: float
    disagreement: float | None  # share of bootstrap replicas with another verdict (None: not resampled)
    replicas: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        graphed = [lv.concurrency for lv in self.levels if lv.call == "graphed"]
        eager = [lv.concurrency for lv in self.levels if lv.call == "eager"]
        err = ("" if self.disagreement is None else
               f"; {self.disagreement:.1%} of {self.replicas} resampled replicas disagree")
        return (f"CUDA graphs by timing: {self.verdict} (faster than the eager control by >= {self.min_speedup:g}x at "
                f"c={_levels(graphed)}; not faster at c={_levels(eager)}{err})")

    def table(self) -> str:
        rows = ["| c | target/control step time | 95 % interval | call | requests (target, control) |",
                "|---:|---:|---|---|---|"]
        rows += [f"| {lv.concurrency} | {lv.ratio:.3f} | [{lv.low:.3f}, {lv.high:.3f}] | {lv.call} | "
                 f"{lv.n_target}, {lv.n_control} |" for lv in self.levels]
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "min_speedup": self.min_speedup, "disagreement": self.disagreement,
                "replicas": self.replicas, "notes": list(self.notes),
                "levels": [{"concurrency": lv.concurrency, "ratio": lv.ratio, "low": lv.low, "high": lv.high,
                            "call": lv.call, "n_target": lv.n_target, "n_control": lv.n_control}
                           for lv in self.levels]}


def _levels(cs: Sequence[int]) -> str:
    return ",".join(map(str, cs)) if cs else "none"


StepTimes = Mapping[int, Sequence[float] | np.ndarray]  # concurrency -> one step time (ms) per request


def _calls(target: StepTimes, control: StepTimes, min_speedup: float, n_resamples: int,
           seed: int) -> tuple[list[LevelCall], list[str]]:
    out, notes = [], []
    bound = 1.0 / min_speedup
    for c in sorted(set(target) & set(control)):
        t = np.asarray(target[c], dtype=float)
        k = np.asarray(control[c], dtype=float)
        t, k = t[np.isfinite(t) & (t > 0)], k[np.isfinite(k) & (k > 0)]
        if min(t.size, k.size) < MIN_REQUESTS:
            notes.append(f"c={c}: {t.size} target / {k.size} control requests, fewer than {MIN_REQUESTS}: left out")
            continue
        iv = bootstrap_percentile_diff_ci(t, k, 50, relative=True, n_resamples=n_resamples, seed=seed + c)
        lo, hi, r = 1.0 + iv.low, 1.0 + iv.high, 1.0 + iv.estimate
        call = "graphed" if hi < bound else "eager" if lo > bound else "unclear"
        out.append(LevelCall(c, r, lo, hi, call, int(t.size), int(k.size)))
    return out, notes


def _verdict(levels: Sequence[LevelCall]) -> str:
    graphed = any(lv.call == "graphed" for lv in levels)
    eager = any(lv.call == "eager" for lv in levels)
    return "partial" if graphed and eager else "on" if graphed else "off" if eager else "inconclusive"


def decide(target: StepTimes, control: StepTimes, *, min_speedup: float = DEFAULT_MIN_SPEEDUP,
           replicas: int = 200, n_resamples: int = 1000, seed: int = 0) -> TimingVerdict:
    """The verdict for `target` against an eager `control`, with its error rate by resampling requests."""
    if not min_speedup > 1.0 or not math.isfinite(min_speedup):
        raise ValueError(f"min_speedup={min_speedup!r}: give a factor > 1, e.g. 1.05 (graphs at least 5 % faster)")
    common = sorted(set(target) & set(control))
    if not common:
        raise ValueError(f"no concurrency in common: target has {sorted(target)}, control has {sorted(control)}; "
                         "sweep both at the same levels")
    levels, notes = _calls(target, control, min_speedup, n_resamples, seed)
    verdict = _verdict(levels)
    disagreement = None
    if replicas > 0 and levels:
        rng = np.random.default_rng(seed)
        other = 0
        for _ in range(replicas):
            rt = {c: rng.choice(np.asarray(target[c], float), size=len(target[c])) for c in common}
            rk = {c: rng.choice(np.asarray(control[c], float), size=len(control[c])) for c in common}
            if _verdict(_calls(rt, rk, min_speedup, max(200, n_resamples // 5), int(rng.integers(1 << 30)))[0]) != verdict:
                other += 1
        disagreement = other / replicas
    if verdict == "inconclusive":
        notes.append("no level was decided: measure more requests per level (--requests-per-level) or more levels")
    return TimingVerdict(verdict, tuple(levels), min_speedup, disagreement, replicas if levels else 0, tuple(notes))


def step_times(sweep: Any, target: str) -> dict[int, tuple[float, ...]]:
    """Per-request step times of one target of a SweepResult (pooled over repeats), by concurrency."""
    out: dict[int, tuple[float, ...]] = {}
    for c in sweep.concurrencies:
        vals = tuple(x for p in sweep.runs(target, c) for x in p.samples.get("step_ms", ()))
        if vals:
            out[c] = vals
    if not out:
        names = [t.name for t in sweep.targets]
        raise ValueError(f"target {target!r} has no step_ms samples in this sweep (targets: {names}); "
                         "sweeps written before step_ms existed cannot be judged: run `llmserve sweep` again")
    return out


def decide_sweep(sweep: Any, target: str, control: str, **kw: Any) -> TimingVerdict:
    """`decide` on two targets of one sweep: `control` is the same server started with graphs off."""
    return decide(step_times(sweep, target), step_times(sweep, control), **kw)
