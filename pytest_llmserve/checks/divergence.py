"""Engine against engine: where a candidate's greedy tokens first leave the incumbent's, and a verdict.

Both engines decode the same token-id prompts greedily. Per prompt, the first position where the
two token sequences differ is the divergence; after it the two condition on different text, so
nothing later is compared. The gated statistic is the **divergence per token**

    rate = diverged prompts / positions at risk,   positions at risk = Σ_prompts (agreed tokens + 1 if diverged)

i.e. the chance that at a position where both engines have produced the same prefix, they pick
different tokens (a hazard rate; the same definition as calibration.py's, so it does not depend on
max_tokens). The share of prompts that diverge within max_tokens is reported beside it.

Interval: Wilson's score interval of rate at `confidence`, with n the *effective* number of
positions: positions / design effect, the design effect from the prompt-clustered linearisation
(cluster_stats.py; ≥ 1, so prompts whose positions are more alike than independent trials widen
it). Verdict against `divergence_threshold` τ:

    pass          the interval's upper bound ≤ τ
    fail          its lower bound > τ
    inconclusive  the interval straddles τ (too few positions compared); the report says how many
                  prompts would decide it at the observed rate.

Default τ = 0.03 per token, from the calibration measurements in README ("Equivalence with the
Hugging Face reference"): Hugging Face bf16 leaves the fp32 greedy path at 0.0067 (fixture model)
and 0.0132 (held-out model) per token, and two correct bf16 engines differ from each other by at
most about the sum of their distances from fp32 (≤ 0.027); the broken builds there left it at
0.040-0.079. Same-build re-runs of the CPU vLLM diverged at 0 (README "Engine against engine").
Set a lower τ for engines expected to be bit-identical, a higher one across precisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from .cluster_stats import cluster_summary
from .stats import Interval, wilson_interval
from .equivalence import CONTEXT_TOKENS, Continuation

DEFAULT_DIVERGENCE_THRESHOLD = 0.03
DEFAULT_CONFIDENCE = 0.95
SHOWN = 5  # earliest divergences printed with their tokens
NEXT_TOKENS = 6

Verdict = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True, slots=True)
class PromptDivergence:
    """One prompt: where (if anywhere) the candidate first picked another token than the incumbent."""

    prompt_id: str
    position: int | None  # first differing position; None: identical over every compared token
    at_risk: int  # agreed tokens + 1 when diverged
    context: tuple[int, ...] = ()  # the tokens just before the divergence (prompt tail + agreed prefix)
    reference_next: tuple[int, ...] = ()  # incumbent tokens from the divergence on (a few)
    candidate_next: tuple[int, ...] = ()
    reference_gap: float | None = None  # incumbent lp(its token) − lp(candidate's); None: not in its top-k
    candidate_gap: float | None = None  # candidate lp(its token) − lp(incumbent's); None: not in its top-k

    @property
    def diverged(self) -> bool:
        return self.position is not None


def first_divergence(reference: Sequence[int], candidate: Sequence[int]) -> int | None:
    """The first index where the sequences differ; a shorter side diverges where it ends; None if equal."""
    for i, (r, c) in enumerate(zip(reference, candidate)):
        if r != c:
            return i
    return None if len(reference) == len(candidate) else min(len(reference), len(candidate))


def profile(prompt_id: str, prompt: Sequence[int], reference: Continuation, candidate: Continuation) -> PromptDivergence:
    """Compare one prompt's two continuations up to (and at) their first divergence."""
    pos = first_divergence(reference.tokens, candidate.tokens)
    if pos is None:
        return PromptDivergence(prompt_id, None, len(reference.tokens))
    context = (tuple(prompt) + reference.tokens[:pos])[-CONTEXT_TOKENS:]
    ref_next, cand_next = reference.tokens[pos:pos + NEXT_TOKENS], candidate.tokens[pos:pos + NEXT_TOKENS]
    gaps: list[float | None] = [None, None]
    if ref_next and cand_next:
        r, c = ref_next[0], cand_next[0]
        gaps = [_gap(reference.top_logprobs[pos], r, c), _gap(candidate.top_logprobs[pos], c, r)]
    return PromptDivergence(prompt_id, pos, pos + 1, context, ref_next, cand_next, gaps[0], gaps[1])


def _gap(top: Mapping[int, float], own: int, other: int) -> float | None:
    return top[own] - top[other] if own in top and other in top else None


@dataclass(frozen=True)
class DivergenceReport:
    """The comparison of two engines on the prompts both answered, with its verdict and evidence."""

    candidate: str
    reference: str
    rows: tuple[PromptDivergence, ...]
    threshold: float
    confidence: float
    max_tokens: int
    interval: Interval
    design_effect: float
    prompts_planned: int
    notes: tuple[str, ...] = ()

    @property
    def diverged(self) -> int:
        return sum(r.diverged for r in self.rows)

    @property
    def positions(self) -> int:
        return sum(r.at_risk for r in self.rows)

    @property
    def rate(self) -> float:
        return self.interval.estimate

    @property
    def prompt_rate(self) -> float:
        return self.diverged / len(self.rows) if self.rows else 0.0

    @property
    def verdict(self) -> Verdict:
        return verdict_of(self.interval, self.threshold)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def prompts_needed(self) -> int | None:
        """Prompts that would decide an inconclusive result at the observed rate (None: none would)."""
        if self.verdict != "inconclusive" or not self.rows:
            return None
        per_prompt = self.positions / len(self.rows)
        return prompts_needed(self.rate, self.threshold, self.confidence, per_prompt, self.design_effect)

    def earliest(self, n: int = SHOWN) -> list[PromptDivergence]:
        return sorted((r for r in self.rows if r.diverged), key=lambda r: (r.position, r.prompt_id))[:n]

    def summary_line(self) -> str:
        iv = self.interval
        relation = {"pass": "≤", "fail": ">", "inconclusive": "straddles"}[self.verdict]
        return (f"divergence per token {iv.estimate:.4f} [{iv.low:.4f}, {iv.high:.4f}] ({100 * iv.confidence:g} % "
                f"Wilson) {relation} threshold {self.threshold:g}: {self.diverged}/{len(self.rows)} prompts diverged "
                f"over {self.positions} positions at risk")

    def render(self, decode: Callable[[Sequence[int]], str] | None = None) -> str:
        show = decode or (lambda ids: " ".join(map(str, ids)))
        lines = [f"engine equivalence: {self.candidate} (candidate) vs {self.reference} (incumbent), greedy, "
                 f"{self.max_tokens} tokens",
                 f"  compared {len(self.rows)} of {self.prompts_planned} planned prompts"
                 + (f"; {self.prompts_needed} prompts would decide at the observed rate" if self.prompts_needed
                    else "; no prompt count decides: the rate sits on the threshold" if self.verdict == "inconclusive"
                    else ""),
                 f"  {self.summary_line()}",
                 f"  prompts diverging within {self.max_tokens} tokens: {100 * self.prompt_rate:.1f} %; "
                 f"design effect {self.design_effect:.2f}"]
        lines += [f"  {n}" for n in self.notes]
        for r in self.earliest():
            gaps = ", ".join(f"{side} gap {gap:.3f} nats" if gap is not None else f"{side}: the other's token not in "
                             "its top-k" for side, gap in (("incumbent", r.reference_gap), ("candidate", r.candidate_gap)))
            lines += [f"  prompt {r.prompt_id} at token {r.position} ({gaps}):",
                      f"      after     {show(r.context)!r}",
                      f"      incumbent {show(r.reference_next)!r}",
                      f"      candidate {show(r.candidate_next)!r}"]
        lines.append(f"  VERDICT: {self.verdict.upper()}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        iv = self.interval
        return {"candidate": self.candidate, "reference": self.reference, "verdict": self.verdict,
                "threshold": self.threshold, "confidence": self.confidence, "max_tokens": self.max_tokens,
                "prompts_planned": self.prompts_planned, "prompts_compared": len(self.rows),
                "prompts_diverged": self.diverged, "positions_at_risk": self.positions,
                "divergence_per_token": iv.estimate, "interval": [iv.low, iv.high],
                "prompt_divergence_rate": self.prompt_rate, "design_effect": self.design_effect,
                "prompts_needed": self.prompts_needed,
                "earliest": [{"prompt": r.prompt_id, "position": r.position, "incumbent": list(r.reference_next),
                              "candidate": list(r.candidate_next), "incumbent_gap": r.reference_gap,
                              "candidate_gap": r.candidate_gap} for r in self.earliest()]}


def verdict_of(interval: Interval, threshold: float) -> Verdict:
    """pass when the upper bound is at or below the threshold, fail when the lower bound is above it."""
    if interval.high <= threshold:
        return "pass"
    if interval.low > threshold:
        return "fail"
    return "inconclusive"


def rate_interval(rows: Sequence[PromptDivergence], confidence: float) -> tuple[Interval, float]:
    """Wilson interval of diverged / positions at risk with n = positions / design effect (clustered by prompt)."""
    positions = sum(r.at_risk for r in rows)
    diverged = sum(r.diverged for r in rows)
    if positions == 0:
        return wilson_interval(0, 0, confidence), 1.0
    values = np.zeros(positions)
    groups = np.repeat(np.arange(len(rows)), [r.at_risk for r in rows])
    ends = np.cumsum([r.at_risk for r in rows]) - 1
    values[ends[[r.diverged for r in rows]]] = 1.0  # the divergence is each prompt's last position at risk
    deff = max(1.0, cluster_summary(values, groups).design_effect)
    n_eff = positions / deff
    iv = wilson_interval(diverged / deff, n_eff, confidence)
    return Interval(diverged / positions, iv.low, iv.high, confidence, iv.se), deff


def prompts_needed(rate: float, threshold: float, confidence: float, positions_per_prompt: float,
                   design_effect: float = 1.0, limit: int = 10**9) -> int | None:
    """The fewest prompts whose Wilson interval at `rate` excludes `threshold` (None: not below `limit`)."""
    if positions_per_prompt <= 0 or math.isclose(rate, threshold):
        return None

    def decides(prompts: int) -> bool:
        n = prompts * positions_per_prompt / design_effect
        return verdict_of(wilson_interval(rate * n, n, confidence), threshold) != "inconclusive"

    high = 1
    while not decides(high):
        high *= 2
        if high > limit:
            return None
    low = high // 2
    while high - low > 1:  # decides() is monotone in the number of prompts: the interval only narrows
        mid = (low + high) // 2
        low, high = (low, mid) if decides(mid) else (mid, high)
    return high


def compare_engines(candidate: str, reference: str, prompts: Sequence[tuple[str, Sequence[int]]],
                    reference_conts: Sequence[Continuation], candidate_conts: Sequence[Continuation], *,
                    max_tokens: int, threshold: float = DEFAULT_DIVERGENCE_THRESHOLD,
                    confidence: float = DEFAULT_CONFIDENCE, prompts_planned: int | None = None,
                    notes: Sequence[str] = ()) -> DivergenceReport:
    """Profile every prompt both sides answered (the shorter list bounds it) and build the report."""
    n = min(len(prompts), len(reference_conts), len(candidate_conts))
    rows = tuple(profile(pid, ids, r, c) for (pid, ids), r, c in zip(prompts[:n], reference_conts, candidate_conts))
    interval, deff = rate_interval(rows, confidence)
    return DivergenceReport(candidate, reference, rows, threshold, confidence, max_tokens, interval, deff,
                            prompts_planned if prompts_planned is not None else len(prompts), tuple(notes))
