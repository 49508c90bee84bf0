"""Named workload profiles (chat, rag, long-context, batch, multi-turn) turned into LoadSpecs before the run.

Each profile has seeded length distributions (a normal around the mean, clipped to [lo, hi]) at the
nominal sizes users run (chat 4K in / 256 out, RAG 16K shared prefix / 512 out, long context 96K /
4K, ...). When the server's max_model_len cannot hold the longest request a profile can draw, every
length is scaled by the same factor so that it can, and `Workload.describe()` says so with the
lengths used. Prompts are token-id lists built here, not on the hot path: the shared RAG prefix is
the same ids in every request, and a multi-turn prompt repeats its session's previous prompt. A
multi-turn prompt is built with a stand-in reply; at run time the client sends the server's real
reply in its place (sessions.py), turn after turn of each session.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .prompts import _ID_HIGH, _ID_LOW
from .sessions import Sessions
from .spec import LoadSpec


@dataclass(frozen=True)
class Lengths:
    """Token lengths: normal(mean, cv * mean), rounded, clipped to [lo, hi]; seeded by the caller's rng."""

    mean: int
    lo: int
    hi: int
    cv: float = 0.25

    def scaled(self, factor: float) -> Lengths:
        if factor >= 1:
            return self
        lo = max(1, math.floor(self.lo * factor))
        hi = max(lo, math.floor(self.hi * factor))
        return Lengths(min(hi, max(lo, round(self.mean * factor))), lo, hi, self.cv)

    def draw(self, rng: np.random.Generator, n: int) -> list[int]:
        values = np.rint(rng.normal(self.mean, self.cv * self.mean, size=n))
        return np.clip(values, self.lo, self.hi).astype(int).tolist()

    def text(self) -> str:
        return f"~{self.mean} ({self.lo}..{self.hi})"


@dataclass(frozen=True)
class Profile:
    """A named workload: prompt/output lengths, sharing, and the load shape it runs at."""

    name: str
    summary: str
    input: Lengths  # tokens per prompt after any shared prefix (multi-turn: each turn's new user message)
    output: Lengths
    concurrency: int
    requests: int
    shared_prefix: int = 0  # tokens every prompt starts with (rag)
    turns: int = 1  # >1: sessions of this many turns; concurrency = sessions in flight
    first_turn: Lengths | None = None  # multi-turn: the first prompt (system + first question)
    stream: bool = True  # False: non-streaming requests (batch); judged by throughput and E2E

    def longest(self) -> int:
        """The longest prompt + output this profile can draw (what must fit max_model_len)."""
        if self.turns > 1:
            first = self.first_turn or self.input
            return first.hi + (self.turns - 1) * (self.output.hi + self.input.hi) + self.output.hi
        return self.shared_prefix + self.input.hi + self.output.hi

    def scaled(self, factor: float) -> Profile:
        if factor >= 1:
            return self
        return dataclasses.replace(
            self, input=self.input.scaled(factor), output=self.output.scaled(factor),
            shared_prefix=max(1, math.floor(self.shared_prefix * factor)) if self.shared_prefix else 0,
            first_turn=self.first_turn.scaled(factor) if self.first_turn else None)


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("chat", "chat: ~4K-token prompts, ~256 tokens out, 16 streams",
            input=Lengths(4096, 1024, 8192), output=Lengths(256, 64, 512), concurrency=16, requests=64),
    Profile("rag", "RAG: one 16K-token shared prefix (the documents) + a question, ~512 out, 8 streams",
            input=Lengths(256, 64, 512), output=Lengths(512, 256, 768), concurrency=8, requests=32,
            shared_prefix=16384),
    Profile("long-context", "long context: ~96K-token prompts, ~4K out, 2 streams",
            input=Lengths(98304, 81920, 114688, 0.1), output=Lengths(4096, 2048, 6144), concurrency=2, requests=8),
    Profile("batch", "offline batch: ~1K in / ~1K out, 64 non-streaming requests in flight, judged by throughput",
            input=Lengths(1024, 256, 2048), output=Lengths(1024, 512, 1536), concurrency=64, requests=128,
            stream=False),
    Profile("multi-turn", "multi-turn: 8 sessions x 4 turns, each prompt = the session's history + a new message",
            input=Lengths(256, 64, 512), output=Lengths(256, 64, 512), concurrency=8, requests=32, turns=4,
            first_turn=Lengths(1024, 512, 2048)),
)}


@dataclass(frozen=True)
class Workload:
    """A profile resolved for one server: the LoadSpec to run and how it was sized."""

    profile: Profile  # as run (scaled)
    nominal: Profile
    scale: float  # 1.0, or the factor applied to fit max_model_len
    max_model_len: int | None
    spec: LoadSpec

    def describe(self) -> str:
        p, s = self.profile, self.spec
        assert s.prompts is not None  # a workload's spec carries its prompts
        mean_in = sum(len(x) for x in s.prompts) / len(s.prompts)
        parts = [f"workload {p.name}: {self.nominal.summary}"]
        shape = (f"prefix {p.shared_prefix} shared + " if p.shared_prefix else "") + f"input {p.input.text()}"
        if p.first_turn:
            shape = f"first turn {p.first_turn.text()}, then + reply + message {p.input.text()}"
        parts.append(f"ran {shape}, output {p.output.text()} tokens (prompt mean {mean_in:.0f}), "
                     f"concurrency {s.concurrency}, {s.requests} requests, seed {s.seed}")
        if self.scale < 1:
            parts.append(f"SCALED x{self.scale:.4f} to fit max_model_len {self.max_model_len} "
                         f"(nominal longest request {self.nominal.longest()} tokens)")
        return "; ".join(parts)


def workload(name: str, *, max_model_len: int | None = None, seed: int = 0, vocab_size: int | None = None,
             **overrides: Any) -> Workload:
    """The LoadSpec of profile `name` for a server with `max_model_len` (None: nominal lengths).

    `overrides` are LoadSpec fields (concurrency, requests, warmup, request_timeout_s, ...); lengths and
    prompts come from the profile.
    """
    if name not in PROFILES:
        raise ValueError(f"workload={name!r}: use one of {', '.join(PROFILES)}")
    for key in ("prompts", "output_lens", "input_len", "output_len", "endpoint"):
        if key in overrides:
            raise ValueError(f"workload={name!r} sets {key} itself; leave {key} out (or run without a workload)")
    nominal = PROFILES[name]
    if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 8):
        raise ValueError(f"max_model_len={max_model_len!r} must be an integer >= 8 (tokens)")
    scale = 1.0
    if max_model_len is not None and nominal.longest() > max_model_len:
        scale = max_model_len / nominal.longest()
    profile = nominal.scaled(scale)
    requests = overrides.pop("requests", profile.requests)
    warmup = overrides.pop("warmup", min(profile.concurrency, 4))
    concurrency = overrides.pop("concurrency", profile.concurrency)
    n = warmup + (requests if requests is not None else 4 * profile.requests)
    prompts, outputs, sessions = _build(profile, n, warmup, seed, vocab_size)
    spec = LoadSpec(
        endpoint="completions", concurrency=concurrency, requests=requests, warmup=warmup,
        input_len=max(1, round(sum(map(len, prompts)) / len(prompts))),
        output_len=max(1, round(sum(outputs) / len(outputs))), prompts=tuple(prompts), output_lens=tuple(outputs),
        seed=seed, vocab_size=vocab_size, stream=overrides.pop("stream", profile.stream), sessions=sessions,
        **overrides)
    spec.validate()
    return Workload(profile=profile, nominal=nominal, scale=scale, max_model_len=max_model_len, spec=spec)


def _rng(seed: int, name: str, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), *more])


def _ids(rng: np.random.Generator, n: int, vocab_size: int | None) -> list[int]:
    high = _ID_HIGH if vocab_size is None else max(_ID_LOW + 1, min(_ID_HIGH, vocab_size - 1))
    return rng.integers(_ID_LOW, high, size=n).tolist()


def _build(p: Profile, n: int, warmup: int, seed: int,
           vocab_size: int | None) -> tuple[list[tuple[int, ...]], list[int], Sessions | None]:
    """n prompts (token ids), output lengths and sessions (multi-turn); the first `warmup` are the warm-up requests."""
    if p.turns > 1:
        return _sessions(p, n, warmup, seed, vocab_size)
    rng = _rng(seed, p.name)
    inputs, outputs = p.input.draw(rng, n), p.output.draw(rng, n)
    prefix = _ids(_rng(seed, p.name, 1), p.shared_prefix, vocab_size) if p.shared_prefix else []
    prompts = [tuple(prefix + _ids(_rng(seed, p.name, 2, i), inputs[i], vocab_size)) for i in range(n)]
    return prompts, outputs, None


def _sessions(p: Profile, n: int, warmup: int, seed: int,
              vocab_size: int | None) -> tuple[list[tuple[int, ...]], list[int], Sessions]:
    """Turn-major order: turn 0 of every session, then turn 1, ...; warm-up requests are first turns of
    their own sessions. A later turn's prompt = the previous prompt + a stand-in for the reply (same
    length as the reply asked for; the client sends the server's real reply in its place) + a new message."""
    sessions = p.concurrency
    first = p.first_turn or p.input
    prompts: list[tuple[int, ...]] = []
    outputs: list[int] = []
    previous: list[int] = [-1] * warmup
    message: list[int] = [0] * warmup
    for w in range(warmup):
        rng = _rng(seed, p.name, 9, w)
        prompts.append(tuple(_ids(rng, first.draw(rng, 1)[0], vocab_size)))
        outputs.append(p.output.draw(rng, 1)[0])
    history: dict[int, list[int]] = {}
    last_out: dict[int, int] = {}
    last_at: dict[int, int] = {}  # session -> position of its latest turn
    turn = 0
    while len(prompts) < n:
        for s in range(sessions):
            if len(prompts) >= n:
                break
            k = turn % p.turns  # beyond turns x sessions requests, sessions start over
            rng = _rng(seed, p.name, turn, s)
            if k == 0:
                history[s] = _ids(rng, first.draw(rng, 1)[0], vocab_size)
                previous.append(-1)
                message.append(0)
            else:
                reply = _ids(rng, last_out[s], vocab_size)
                new = _ids(rng, p.input.draw(rng, 1)[0], vocab_size)
                history[s] = history[s] + reply + new
                previous.append(last_at[s])
                message.append(len(new))
            last_at[s] = len(prompts)
            prompts.append(tuple(history[s]))
            last_out[s] = p.output.draw(rng, 1)[0]
            outputs.append(last_out[s])
        turn += 1
    return prompts, outputs, Sessions(tuple(previous), tuple(message))
