"""Engine against engine: a candidate target's greedy tokens against a reference (incumbent) target's.

    run = run_engine_equivalence(candidate_handle, incumbent_handle, cache_dir=..., default_prompt_file=...)
    run.report.verdict, print(run.render())

The prompt set is `prompts` windows (prompt_windows.py) of a source prompt file (default: the shipped
stdlib-64 set); both sides get the same token ids, greedy, ignore_eos, `max_tokens` tokens. The
incumbent side goes first (usually all from its cache); the candidate is then sent only the prompts
the incumbent has answered. Each side that has to send stops taking new prompts after `budget_s`;
the comparison covers the prompts both answered and says whether that was enough to decide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..checks.divergence import DEFAULT_CONFIDENCE, DEFAULT_DIVERGENCE_THRESHOLD, DivergenceReport, compare_engines
from ..settings.config import Target
from ..reference.engine_outputs import SideResult, cached_side, engine_version, side_identity
from .equivalence import max_model_len
from ..reference.prompt_windows import window_prompts
from ..reference.hf import Prompt, ReferenceError, decoder, fit_prompts, load_prompts
from ..servers.info import max_model_len as served_max_model_len
from ..servers.base import ServerHandle

OPTION = "engine_equivalence"
REFERENCE_OPTION = "equivalence_reference"


@dataclass(frozen=True, slots=True)
class EngineEquivalenceSettings:
    """A candidate target's `options.engine_equivalence` table (every key optional)."""

    prompts: int = 2000
    prompt_file: str | None = None
    seed: int = 0
    min_prompt_len: int = 8
    max_prompt_len: int = 64
    max_tokens: int = 32
    top_k: int = 2
    divergence_threshold: float = DEFAULT_DIVERGENCE_THRESHOLD
    confidence: float = DEFAULT_CONFIDENCE
    budget_s: float = 300.0
    concurrency: int = 16

    @classmethod
    def from_target(cls, target: Target) -> EngineEquivalenceSettings:
        try:
            return cls.from_mapping(target.options.get(OPTION, {}))
        except ValueError as exc:
            raise ValueError(f"{target.source}: target {target.name!r} options.{OPTION}: {exc}") from None

    @classmethod
    def from_mapping(cls, raw: Any) -> EngineEquivalenceSettings:
        keys = tuple(cls.__dataclass_fields__)
        if not isinstance(raw, Mapping):
            raise ValueError(f"must be a table with keys {', '.join(keys)}, got {raw!r}")
        unknown = sorted(set(raw) - set(keys))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(keys)}")
        for key, (low, what) in _RULES.items():
            if key in raw and not _number_ok(raw[key], low, key in _INTEGERS, key in ("divergence_threshold",
                                                                                       "confidence")):
                raise ValueError(f"{key} = {raw[key]!r} must be {what}")
        if "prompt_file" in raw and not (isinstance(raw["prompt_file"], str) and raw["prompt_file"]):
            raise ValueError(f"prompt_file = {raw['prompt_file']!r} must be a JSONL path")
        values: dict[str, Any] = {k: (float(v) if k not in _INTEGERS and k != "prompt_file" else v)
                                  for k, v in raw.items()}
        made = cls(**values)
        if made.min_prompt_len > made.max_prompt_len:
            raise ValueError(f"min_prompt_len = {made.min_prompt_len} exceeds max_prompt_len = {made.max_prompt_len}")
        return made


_INTEGERS = ("prompts", "seed", "min_prompt_len", "max_prompt_len", "max_tokens", "top_k", "concurrency")
_RULES = {"prompts": (1, "an integer >= 1"), "seed": (0, "an integer >= 0"),
          "min_prompt_len": (1, "an integer >= 1"), "max_prompt_len": (1, "an integer >= 1"),
          "max_tokens": (1, "an integer >= 1"), "top_k": (1, "an integer >= 1"),
          "concurrency": (1, "an integer >= 1"), "budget_s": (0, "a number of seconds > 0"),
          "divergence_threshold": (0, "a rate in (0, 1), e.g. 0.03"), "confidence": (0, "a level in (0, 1), e.g. 0.95")}


def _number_ok(value: Any, low: float, integer: bool, open_unit: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    if open_unit:
        return 0 < value < 1
    return value >= low if integer else value > low


@dataclass(frozen=True)
class EngineEquivalenceRun:
    """The report plus both sides' provenance and a decoder for rendering."""

    report: DivergenceReport
    incumbent: SideResult
    candidate: SideResult
    total_s: float
    decode: Callable[[Sequence[int]], str] | None = field(default=None, repr=False)

    def render(self) -> str:
        return self.report.render(self.decode)

    def data(self) -> dict[str, Any]:
        return {**self.report.to_dict(), "total_s": round(self.total_s, 3),
                "sides": {side.name: {"reused": side.reused, "sent": side.sent, "send_s": round(side.send_s, 3),
                                      "budget_spent": side.budget_spent, "cache_file": str(side.path)}
                          for side in (self.incumbent, self.candidate)}}


def engine_prompts(candidate: ServerHandle, incumbent: ServerHandle, settings: EngineEquivalenceSettings,
                   default_prompt_file: str | Path | None) -> tuple[tuple[Prompt, ...], list[str]]:
    """The planned prompt set, cut to fit both servers' lengths, and a note on where it came from."""
    target = candidate.target
    if settings.prompt_file:
        source_file = Path(settings.prompt_file).expanduser()
    elif default_prompt_file is not None:
        source_file = Path(default_prompt_file)
    else:
        raise ReferenceError(f"target {target.name!r}: no prompt set for the engine comparison (the installed package "
                             "ships none): set options.engine_equivalence.prompt_file")
    if settings.prompt_file and not source_file.is_absolute() and not target.source.startswith("<"):
        source_file = Path(target.source).parent / source_file
    model_dir = target.model if target.model and Path(target.model).is_dir() else None
    source = load_prompts(source_file, model_dir)
    prompts = window_prompts(source, settings.prompts, seed=settings.seed, min_len=settings.min_prompt_len,
                             max_len=settings.max_prompt_len)
    limits = [max_model_len(s.target) or served_max_model_len(s.base_url, s.model) for s in (candidate, incumbent)]
    known = [x for x in limits if x]
    prompts, cut = fit_prompts(prompts, min(known) if known else None, settings.max_tokens)
    note = (f"prompts: {settings.prompts} windows ({settings.min_prompt_len}-{settings.max_prompt_len} tokens, "
            f"seed {settings.seed}) of {source_file.name}" + (f"; {cut} cut to fit the servers' length" if cut else ""))
    return prompts, [note]


def run_engine_equivalence(candidate: ServerHandle, incumbent: ServerHandle, *, cache_dir: str | Path,
                           default_prompt_file: str | Path | None, refresh: bool = False,
                           settings: EngineEquivalenceSettings | None = None) -> EngineEquivalenceRun:
    """Compare `candidate` with `incumbent` on the planned prompts within the budget (see the module doc)."""
    started = time.perf_counter()
    settings = settings or EngineEquivalenceSettings.from_target(candidate.target)
    prompts, notes = engine_prompts(candidate, incumbent, settings, default_prompt_file)

    def side(handle: ServerHandle, want: int) -> SideResult:
        identity = side_identity(handle.target, engine_version(handle.base_url))
        return cached_side(handle.target.name, handle.base_url, handle.model, identity, prompts, want=want,
                           max_tokens=settings.max_tokens, top_k=settings.top_k, cache_dir=cache_dir,
                           budget_s=settings.budget_s, concurrency=settings.concurrency, refresh=refresh)

    inc = side(incumbent, len(prompts))
    cand = side(candidate, len(inc.continuations))
    notes += [inc.line(), cand.line()]
    report = compare_engines(candidate.target.name, incumbent.target.name, [(p.id, p.token_ids) for p in prompts],
                             inc.continuations, cand.continuations, max_tokens=settings.max_tokens,
                             threshold=settings.divergence_threshold, confidence=settings.confidence,
                             prompts_planned=len(prompts), notes=notes)
    try:
        decode = decoder(candidate.target.model) if candidate.target.model and Path(candidate.target.model).is_dir() else None
    except Exception:  # noqa: BLE001  (no tokenizer: the report shows token ids)
        decode = None
    return EngineEquivalenceRun(report, inc, cand, time.perf_counter() - started, decode)
