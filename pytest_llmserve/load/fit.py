"""Fit a load run to what the server accepts (its probed capabilities): endpoint, prompt form, matched work.

Chosen once, before the run: the spec handed to the client is an ordinary LoadSpec (text prompts
built in advance, the extension fields the server accepts), so the hot path is unchanged. What
could not be forced is verified afterwards: with neither `ignore_eos` nor `min_tokens`, every
response must still decode exactly `output_len` tokens ("matched work: verified, not forced"), and
text prompts must have the token count the server reports in `usage.prompt_tokens`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Collection

from .prompts import synthetic_prompt
from .result import RunResult
from .spec import LoadSpec
from .text_prompts import TokenizerUnavailable, exact_text_prompt, ids_as_text, word_tokens

if TYPE_CHECKING:
    from ..servers.capabilities import Capabilities

_MAX_PROMPTS = 4096  # BodyPool keeps at most this many distinct bodies


@dataclass(frozen=True)
class FittedLoad:
    """The spec to send and how the work is matched; `check` adds what only the responses can tell."""

    spec: LoadSpec
    matched_work: str  # "forced" | "verified" (not forced) | "off" (ignore_eos=False asked for)
    prompt_form: str
    expected_prompt_tokens: tuple[int | None, ...] | None = None
    notes: tuple[str, ...] = ()
    forced_fields: tuple[str, ...] = field(default=("ignore_eos", "min_tokens"))

    def describe(self) -> str:
        """e.g. 'work: completions, token-id prompts, matched work: forced (ignore_eos, min_tokens)'."""
        how = {"forced": f"forced ({', '.join(self.forced_fields)})", "verified": "verified, not forced",
               "off": "off (ignore_eos=False: EOS not ignored, lengths up to max_tokens)"}[self.matched_work]
        return f"work: {self.spec.endpoint}, {self.prompt_form}, matched work: {how}"

    def work(self) -> dict[str, object]:
        return {"endpoint": self.spec.endpoint, "prompt_form": self.prompt_form, "matched_work": self.matched_work,
                "forced_fields": list(self.forced_fields), "statement": self.describe(), "notes": list(self.notes)}

    def check(self, result: RunResult) -> RunResult:
        """Mark the run invalid where the work was not what was asked for; record how it was matched."""
        ok = [r for r in result.records if not r.warmup and r.ok]
        asked = self.spec.output_len_for  # each request's own max_tokens (a workload's lengths vary per request)
        what = "the output_lens each asked for" if self.spec.output_lens else f"output_len={self.spec.output_len}"
        if self.matched_work != "off" and not self.spec.ignore_eos:  # the summary checks only ignore_eos runs
            short = [r for r in ok if r.output_tokens != asked(r.index)]
            if short:
                examples = "; ".join(f"request {r.index}: {r.output_tokens} of {asked(r.index)} tokens, "
                                     f"finish_reason={r.finish_reason}" for r in short[:3])
                why = ("the server accepts neither ignore_eos nor min_tokens, so each response must reach it by itself"
                       if self.matched_work == "verified" else f"forced with {', '.join(self.forced_fields)} only")
                result.invalid_reasons.append(
                    f"{len(short)} of {len(ok)} responses did not decode exactly {what} tokens ({examples}): "
                    f"matched work: {self.describe().split('matched work: ')[1]} ({why}); a response that stopped "
                    "early (EOS) makes the work unmatched: use prompts/a model that do not stop early within "
                    "output_len, or a server that honours ignore_eos")
                result.summary.token_mismatches = len(short)
                result.summary.mismatch_examples = examples.split("; ")
        expected = self.expected_prompt_tokens
        if expected:
            wrong = [(r, expected[r.index % len(expected)]) for r in ok
                     if r.prompt_tokens is not None and expected[r.index % len(expected)] not in (None, r.prompt_tokens)]
            if wrong:
                r, want = wrong[0]
                result.invalid_reasons.append(
                    f"{len(wrong)} of {len(ok)} responses report usage.prompt_tokens unlike the text prompt built with "
                    f"the tokenizer (request {r.index}: server {r.prompt_tokens}, tokenizer {want}): the prompts are "
                    f"not input_len={self.spec.input_len} tokens for this server; set capabilities.tokenizer to the "
                    "served model's tokenizer")
        result.valid = not result.invalid_reasons
        result.work = self.work()
        return result


def fit_load(spec: LoadSpec, caps: Capabilities | None, explicit: Collection[str] = ()) -> FittedLoad:
    """The spec that `caps` accepts; `explicit` names fields the caller chose (those are never changed).

    Raises ValueError (one line) when an explicit choice is one the server does not accept.
    """
    spec.validate()
    if caps is None:  # not probed (e.g. a Triton target): as asked
        return FittedLoad(spec, "forced" if spec.ignore_eos else "off", _given_form(spec))
    notes: list[str] = []
    endpoint = spec.endpoint
    if not getattr(caps, endpoint) and "endpoint" in explicit:
        raise ValueError(f"endpoint={endpoint!r}: the server has no {endpoint} endpoint ({caps.missing(endpoint)})")
    if not getattr(caps, endpoint):
        endpoint = caps.endpoint
    spec = dataclasses.replace(spec, endpoint=endpoint)
    expected = None
    if spec.prompts is not None:
        ids = any(not isinstance(p, str) for p in spec.prompts)
        if ids and (endpoint == "chat" or not caps.token_id_prompts):
            if "prompts" in explicit or not caps.tokenizer:
                raise ValueError(f"prompts are token ids, but the server does not take token-id prompts on {endpoint} "
                                 f"({caps.missing('token_id_prompts')}); give text prompts")
            spec, expected, form = _generated_ids_as_text(spec, caps, notes)  # a workload's or trace's own prompts
        else:
            form = _given_form(spec)
    elif endpoint == "completions" and caps.token_id_prompts:
        form = "token-id prompts"
    else:
        spec, expected, form = _text_prompts(spec, caps, notes)
    fields: tuple[str, ...] = ()
    if not spec.ignore_eos:
        matched = "off"
    elif caps.ignore_eos and caps.min_tokens:
        matched, fields = "forced", ("ignore_eos", "min_tokens")
    elif caps.ignore_eos or caps.min_tokens:  # either alone makes the server decode max_tokens; send only that one
        matched = "forced"
        fields = ("ignore_eos",) if caps.ignore_eos else ("min_tokens",)
        extra = {**(spec.extra_body or {}), **({"ignore_eos": True} if caps.ignore_eos else {"min_tokens": spec.output_len})}
        spec = dataclasses.replace(spec, ignore_eos=False, extra_body=extra)
    else:
        matched = "verified"
        spec = dataclasses.replace(spec, ignore_eos=False)
    if not caps.usage:
        notes.append("the server sends no usage counts: output tokens are counted from streamed chunks")
    if spec.sessions is not None and spec.sessions.token_ids and not (caps.ignore_eos or caps.min_tokens):
        spec = dataclasses.replace(spec, sessions=dataclasses.replace(spec.sessions, token_ids=False))
        notes.append("multi-turn: the server refuses vLLM's extension fields, so return_token_ids is not asked for; "
                     "later turns carry stand-in token ids of the reply's length")
    return FittedLoad(spec, matched, form, expected, tuple(notes), fields)


def _generated_ids_as_text(spec: LoadSpec, caps: Capabilities, notes: list[str]) -> tuple[LoadSpec, tuple, str]:
    """A workload's (or trace's) token-id prompts as text for a server that takes strings only: each id becomes
    one of the tokenizer's single-token words, so lengths, shared prefixes and multi-turn continuations keep
    their shape; usage.prompt_tokens is checked against each text's own count."""
    try:
        words = word_tokens(str(caps.tokenizer))
    except TokenizerUnavailable as exc:
        raise ValueError(f"prompts are token ids and the server takes strings only; {exc}") from None
    assert spec.prompts is not None  # only called for given token-id prompts
    texts = tuple(ids_as_text(words, p) for p in spec.prompts)
    chat = spec.endpoint == "chat"
    sessions, expected = spec.sessions, tuple(words.served_count(t, chat) for t in texts)
    if sessions is not None:  # later turns carry the server's real reply: their length is not known in advance
        lengths = [len(ids_as_text(words, p[len(p) - m:])) if m else 0 for p, m in zip(spec.prompts, sessions.message)]
        sessions = dataclasses.replace(sessions, message=tuple(lengths), token_ids=False)
        expected = tuple(e if prev < 0 else None for e, prev in zip(expected, sessions.previous))
    notes.append("the workload's token-id prompts were sent as text (one single-token word per id): the server "
                 "takes string prompts only")
    return (dataclasses.replace(spec, prompts=texts, sessions=sessions), expected,
            f"{len(texts)} workload prompts as text (tokenizer {caps.tokenizer})")


def _given_form(spec: LoadSpec) -> str:
    if spec.prompts is None:
        return "token-id prompts" if spec.endpoint == "completions" else "word prompts (approximate length)"
    return f"{len(spec.prompts)} given prompts"


def _text_prompts(spec: LoadSpec, caps: Capabilities, notes: list[str]) -> tuple[LoadSpec, tuple | None, str]:
    n = min(_MAX_PROMPTS, spec.warmup + spec.requests) if spec.requests is not None else _MAX_PROMPTS
    chat = spec.endpoint == "chat"
    if caps.tokenizer:
        try:
            words = word_tokens(caps.tokenizer)
            texts = tuple(exact_text_prompt(words, spec.input_len, spec.seed, i) for i in range(n))
            expected = tuple(words.served_count(t, chat) for t in texts)
            return (dataclasses.replace(spec, prompts=texts), expected,
                    f"text prompts of exactly {spec.input_len} tokens (tokenizer {caps.tokenizer})")
        except TokenizerUnavailable as exc:
            notes.append(f"text prompts: {exc}")
    word_spec = dataclasses.replace(spec, endpoint="chat")  # synthetic_prompt's word form
    word_texts = tuple(synthetic_prompt(word_spec, i) for i in range(n))
    notes.append("no local tokenizer for the model (set capabilities.tokenizer to its directory): prompts are "
                 "words, about one token each; usage.prompt_tokens tells their real length")
    return dataclasses.replace(spec, prompts=word_texts), None, "word prompts (approximate length, no tokenizer)"
