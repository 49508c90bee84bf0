"""Token-level equivalence with the Hugging Face reference: exact prefix, then near-tie or hard mismatch.

The rule, per prompt (greedy, same token ids on both sides):

1. Walk the generated tokens in lockstep; identical tokens are the matched prefix.
2. At the first divergence (reference token r, candidate token c) accept a *near-tie* only if
   c is in the reference top-k, r is in the candidate top-k, and the *swing* of the pair's
   log-odds, ``(ref lp(r) - ref lp(c)) + (cand lp(c) - cand lp(r))``, is within the tolerance.
   Then stop: after a divergence the two sequences condition on different text.
3. Anything else is a hard mismatch; so is a candidate that returned fewer tokens.

Why the swing and not vLLM's rule. vLLM's ``check_logprobs_close`` accepts any divergence whose
tokens are in each other's top-k, with no numeric bound, so a broken model that diverges at a
2-nat lead still passes (and exact-equality variants flake 6-8 % in their CI on bf16 near-ties).
The swing is exactly how far the two implementations' logits for r and c moved relative to each
other, which is the quantity numerical error produces; a candidate that is confidently wrong
at a reference tie has a large swing even though the reference gap alone looks harmless.

The tolerance model (what "within numerical noise" means per precision) lives in near_tie.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from .near_tie import EquivalenceSettings, ToleranceModel, precision_of  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from .calibration import Calibration

CONTEXT_TOKENS = 8


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True, slots=True)
class Continuation:
    """Greedy tokens with each step's top-k logprobs {token_id: logprob}; the reference adds |logit| scale."""

    tokens: tuple[int, ...]
    top_logprobs: tuple[Mapping[int, float], ...]
    logit_scale: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.top_logprobs) != len(self.tokens):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.top_logprobs)} top-logprob steps")
        if self.logit_scale and len(self.logit_scale) != len(self.tokens):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.logit_scale)} logit scales")


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where and how a candidate first left the reference, with the evidence to judge it."""

    position: int
    reference_token: int
    candidate_token: int
    reference_gap: float | None  # ref lp(r) - ref lp(c); None when c is not in the reference top-k
    candidate_gap: float | None  # cand lp(c) - cand lp(r); None when r is not in the candidate top-k
    tolerance: float
    context: tuple[int, ...]  # the tokens just before the divergence (prompt tail + matched prefix)
    reference_next: tuple[int, ...]  # reference tokens from the divergence on (a few)
    candidate_next: tuple[int, ...]
    reference_top: tuple[tuple[int, float], ...]
    candidate_top: tuple[tuple[int, float], ...]

    @property
    def swing(self) -> float | None:
        """How far the pair's log-odds moved between the two sides (None if a token is outside a top-k)."""
        if self.reference_gap is None or self.candidate_gap is None:
            return None
        # A side whose own logprobs disagree with its greedy choice contributes 0, not a negative credit.
        return max(0.0, self.reference_gap) + max(0.0, self.candidate_gap)


@dataclass(frozen=True, slots=True)
class PromptResult:
    """The verdict for one prompt: exact, near_tie (accepted) or mismatch (hard)."""

    prompt_id: str
    length: int  # reference tokens compared
    matched: int  # matched prefix length
    verdict: str
    reason: str
    divergence: Divergence | None = None
    max_logprob_drift: float = 0.0  # largest |ref - cand| logprob of the chosen token along the matched prefix


# ----------------------------------------------------------------------------- the rule
def compare_continuation(prompt_id: str, prompt: Sequence[int], reference: Continuation,
                         candidate: Continuation, tolerance: ToleranceModel) -> PromptResult:
    """Apply the rule to one prompt's reference and candidate continuations."""
    drift = 0.0
    for i, ref_token in enumerate(reference.tokens):
        if i >= len(candidate.tokens):
            return PromptResult(prompt_id, len(reference.tokens), i, "mismatch",
                                f"candidate returned {len(candidate.tokens)} tokens, reference {len(reference.tokens)}",
                                max_logprob_drift=drift)
        cand_token = candidate.tokens[i]
        ref_top, cand_top = reference.top_logprobs[i], candidate.top_logprobs[i]
        if cand_token == ref_token:
            if ref_token in ref_top and ref_token in cand_top:
                drift = max(drift, abs(ref_top[ref_token] - cand_top[ref_token]))
            continue
        div = _divergence(i, prompt, reference, candidate, tolerance)
        if div.reference_gap is None:
            verdict, reason = "mismatch", "candidate token is not in the reference top-k"
        elif div.candidate_gap is None:
            verdict, reason = "mismatch", "reference token is not in the candidate top-k"
        elif div.swing is not None and div.swing <= div.tolerance:
            verdict, reason = "near_tie", f"log-odds swing {div.swing:.4f} <= tolerance {div.tolerance:.4f} nats"
        else:
            verdict, reason = "mismatch", f"log-odds swing {div.swing:.4f} > tolerance {div.tolerance:.4f} nats"
        return PromptResult(prompt_id, len(reference.tokens), i, verdict, reason, div, drift)
    return PromptResult(prompt_id, len(reference.tokens), len(reference.tokens), "exact", "identical", None, drift)


def _divergence(i: int, prompt: Sequence[int], reference: Continuation, candidate: Continuation,
                tolerance: ToleranceModel) -> Divergence:
    r, c = reference.tokens[i], candidate.tokens[i]
    ref_top, cand_top = reference.top_logprobs[i], candidate.top_logprobs[i]
    ref_gap = ref_top[r] - ref_top[c] if r in ref_top and c in ref_top else None
    cand_gap = cand_top[c] - cand_top[r] if c in cand_top and r in cand_top else None
    scale = reference.logit_scale[i] if reference.logit_scale else None
    before = (tuple(prompt) + reference.tokens[:i])[-CONTEXT_TOKENS:]
    return Divergence(
        position=i, reference_token=r, candidate_token=c, reference_gap=ref_gap, candidate_gap=cand_gap,
        tolerance=tolerance.at(scale), context=before,
        reference_next=reference.tokens[i:i + CONTEXT_TOKENS], candidate_next=candidate.tokens[i:i + CONTEXT_TOKENS],
        reference_top=_ranked(ref_top), candidate_top=_ranked(cand_top),
    )


def _ranked(top: Mapping[int, float]) -> tuple[tuple[int, float], ...]:
    return tuple(sorted(top.items(), key=lambda kv: (-kv[1], kv[0])))


# ----------------------------------------------------------------------------- report
@dataclass(frozen=True, slots=True)
class EquivalenceReport:
    """Per-prompt verdicts and the gate: no hard mismatch, the calibration tests (when made), the floor (when set)."""

    target: str
    results: tuple[PromptResult, ...]
    tolerance: ToleranceModel
    top_k: int
    max_tokens: int
    min_exact_match_rate: float | None
    notes: tuple[str, ...] = ()
    calibration: Calibration | None = None
    precision_lines: tuple[str, ...] = ()

    @property
    def exact(self) -> int:
        return sum(r.verdict == "exact" for r in self.results)

    @property
    def near_ties(self) -> int:
        return sum(r.verdict == "near_tie" for r in self.results)

    @property
    def hard_mismatches(self) -> int:
        return sum(r.verdict == "mismatch" for r in self.results)

    @property
    def exact_match_rate(self) -> float:
        return self.exact / len(self.results) if self.results else 0.0

    @property
    def mean_matched_prefix(self) -> float:
        return sum(r.matched for r in self.results) / len(self.results) if self.results else 0.0

    @property
    def max_logprob_drift(self) -> float:
        """Largest |reference - candidate| logprob of an agreed token (the mean is gated by the calibration)."""
        return max((r.max_logprob_drift for r in self.results), default=0.0)

    @property
    def passed(self) -> bool:
        return bool(self.results) and self.hard_mismatches == 0 and not self._below_floor() and (
            self.calibration is None or self.calibration.passed)

    def _below_floor(self) -> bool:
        return self.min_exact_match_rate is not None and self.exact_match_rate < self.min_exact_match_rate

    def failures(self) -> list[str]:
        """Why the gate failed, one line each (empty when it passed)."""
        out = []
        if not self.results:
            out.append("no prompts were compared")
        if self.hard_mismatches:
            first = next(r for r in self.results if r.verdict == "mismatch")
            out.append(f"{self.hard_mismatches} hard mismatch(es); first: prompt {first.prompt_id} at token "
                       f"{first.matched} ({first.reason})")
        if self.results and self._below_floor():
            out.append(f"exact-match rate {self.exact_match_rate:.1%} < floor {self.min_exact_match_rate:.1%}")
        if self.calibration is not None:
            out += self.calibration.failures()
        return out

    def to_dict(self) -> dict[str, Any]:
        """Numbers for the JSON report (no token text)."""
        return {
            "prompts": len(self.results), "exact": self.exact, "near_ties": self.near_ties,
            "hard_mismatches": self.hard_mismatches, "exact_match_rate": self.exact_match_rate,
            "mean_matched_prefix": self.mean_matched_prefix, "max_logprob_drift": self.max_logprob_drift,
            "max_tokens": self.max_tokens, "top_k": self.top_k,
            "precision": self.tolerance.precision, "tolerance": self.tolerance.describe(),
            "min_exact_match_rate": self.min_exact_match_rate, "passed": self.passed,
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "precision_sources": list(self.precision_lines),
            "divergences": [
                {"prompt": r.prompt_id, "verdict": r.verdict, "position": r.matched, "reason": r.reason,
                 "reference_token": r.divergence.reference_token if r.divergence else None,
                 "candidate_token": r.divergence.candidate_token if r.divergence else None,
                 "reference_gap": r.divergence.reference_gap if r.divergence else None,
                 "swing": r.divergence.swing if r.divergence else None,
                 "tolerance": r.divergence.tolerance if r.divergence else None}
                for r in self.results if r.verdict != "exact"
            ],
        }

    def _floor_text(self) -> str:
        if self.min_exact_match_rate is not None:
            return f"floor {self.min_exact_match_rate:.0%}"
        return "no fixed floor: divergence rate gated against the calibration" if self.calibration else "no floor"

    def render(self, decode: Callable[[Sequence[int]], str] | None = None, max_rows: int = 20) -> str:
        """A verdict a release manager can read: summary, non-exact prompts, the first hard mismatch in detail."""
        show = _shower(decode)
        n = len(self.results)
        lines = [
            f"Token equivalence vs Hugging Face (fp32) -- target {self.target}: {'PASS' if self.passed else 'FAIL'}",
            f"  {n} prompts x {self.max_tokens} greedy tokens, top-k {self.top_k}, "
            f"near-tie tolerance {self.tolerance.describe()}",
            f"  exact {self.exact}/{n} ({self.exact_match_rate:.1%}, {self._floor_text()})   "
            f"near-ties {self.near_ties}   hard mismatches {self.hard_mismatches}   "
            f"mean matched prefix {self.mean_matched_prefix:.1f}/{self.max_tokens}",
            f"  largest logprob drift on agreed tokens {self.max_logprob_drift:.4f} nats",
        ]
        lines += [f"  precision: {line}" for line in self.precision_lines]
        if self.calibration is not None:
            lines += self.calibration.render()
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  FAIL: {line}" for line in self.failures()]
        diverged = [r for r in self.results if r.verdict != "exact"]
        if diverged:
            lines.append("")
            lines.append(f"  {'prompt':<14} {'verdict':<9} {'at':>4}  {'reference -> candidate':<34} "
                         f"{'ref gap':>8} {'swing':>8} {'tol':>7}")
            ordered = sorted(diverged, key=lambda r: (r.verdict != "mismatch", r.matched))
            for r in ordered[:max_rows]:
                d = r.divergence
                pair = f"{show([d.reference_token])} -> {show([d.candidate_token])}" if d else r.reason
                lines.append(
                    f"  {r.prompt_id[:14]:<14} {r.verdict:<9} {r.matched:>4}  {pair[:34]:<34} "
                    f"{_num(d.reference_gap if d else None):>8} {_num(d.swing if d else None):>8} "
                    f"{_num(d.tolerance if d else None):>7}"
                )
            if len(ordered) > max_rows:
                lines.append(f"  ... {len(ordered) - max_rows} more")
        first = next((r for r in self.results if r.verdict == "mismatch"), None)
        if first is not None:
            lines += ["", *_explain(first, show)]
        return "\n".join(lines)


def _explain(result: PromptResult, show: Callable[[Sequence[int]], str]) -> list[str]:
    lines = [f"  First hard mismatch: prompt {result.prompt_id}, generated token {result.matched} -- {result.reason}"]
    d = result.divergence
    if d is None:
        return lines
    lines += [
        f"    context  : ...{show(d.context)}",
        f"    reference: {show(d.reference_next)}   (top-k: {_top(d.reference_top, show)})",
        f"    candidate: {show(d.candidate_next)}   (top-k: {_top(d.candidate_top, show)})",
    ]
    return lines


def _top(top: Iterable[tuple[int, float]], show: Callable[[Sequence[int]], str]) -> str:
    return ", ".join(f"{show([t])} {lp:.3f}" for t, lp in top)


def _shower(decode: Callable[[Sequence[int]], str] | None) -> Callable[[Sequence[int]], str]:
    def show(tokens: Sequence[int]) -> str:
        if decode is None:
            return " ".join(f"#{t}" for t in tokens)
        try:
            return repr(decode(list(tokens)))
        except Exception:  # noqa: BLE001  (a decoder failing must not hide the verdict)
            return " ".join(f"#{t}" for t in tokens)

    return show


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def compare_all(target: str, prompts: Sequence[tuple[str, Sequence[int]]], references: Sequence[Continuation],
                candidates: Sequence[Continuation], tolerance: ToleranceModel, *, top_k: int, max_tokens: int,
                min_exact_match_rate: float | None, notes: Sequence[str] = (),
                calibration: Calibration | None = None, precision_lines: Sequence[str] = ()) -> EquivalenceReport:
    """Compare every prompt (id, prompt token ids) and build the report."""
    if not len(prompts) == len(references) == len(candidates):
        raise ValueError(f"{len(prompts)} prompts, {len(references)} references, {len(candidates)} candidates")
    results = tuple(compare_continuation(pid, ids, ref, cand, tolerance)
                    for (pid, ids), ref, cand in zip(prompts, references, candidates))
    return EquivalenceReport(target, results, tolerance, top_k, max_tokens, min_exact_match_rate, tuple(notes),
                             calibration, tuple(precision_lines))
