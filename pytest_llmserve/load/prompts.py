"""Prompts and request bodies: synthetic token-id prompts of exact length, prompt files, JSON bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .spec import LoadSpec

# Token ids 10..1000 exist in every real vocabulary and avoid the special tokens most models put at 0..9.
_ID_LOW, _ID_HIGH = 10, 1000
# Distinct bodies kept in memory; beyond this, prompts are reused in a cycle (duration runs, huge counts).
_MAX_DISTINCT = 4096
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
          "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango")


def synthetic_prompt(spec: LoadSpec, index: int) -> str | list[int]:
    """Prompt `index` of a run: token ids for completions (exact length, no tokenizer), words for chat."""
    rng = np.random.default_rng([spec.seed, index])
    if spec.endpoint == "completions":
        high = _ID_HIGH if spec.vocab_size is None else max(_ID_LOW + 1, min(_ID_HIGH, spec.vocab_size - 1))
        return rng.integers(_ID_LOW, high, size=spec.input_len).tolist()
    # Chat needs text; one common English word is about one token in most tokenizers (approximate:
    # the server's usage.prompt_tokens tells the truth, including the chat template's tokens).
    picks = rng.integers(0, len(_WORDS), size=spec.input_len)
    return " ".join(_WORDS[i] for i in picks)


def prompt_for(spec: LoadSpec, index: int) -> str | list[int]:
    """The prompt request `index` sends: explicit prompts cycled, else a synthetic one."""
    if spec.prompts is not None:
        p = spec.prompts[index % len(spec.prompts)]
        return p if isinstance(p, str) else list(p)
    return synthetic_prompt(spec, index)


def request_body(spec: LoadSpec, model: str, index: int, prompt: str | list[int] | None = None) -> bytes:
    """JSON body of request `index` (with `prompt` instead of its own, if given): streaming with usage,
    matched work when `ignore_eos`; multi-turn sessions of token ids ask for the reply's ids."""
    if prompt is None:
        prompt = prompt_for(spec, index)
    body: dict[str, Any] = {"model": model}
    if spec.endpoint == "completions":
        body["prompt"] = prompt
    else:
        body["messages"] = [{"role": "user", "content": prompt}]
    output_len = spec.output_len_for(index)
    body["max_tokens"] = output_len
    if spec.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = output_len
    body["stream"] = spec.stream
    if spec.sessions is not None and spec.sessions.token_ids and not isinstance((spec.prompts or ("",))[0], str):
        body["return_token_ids"] = True  # vLLM: each chunk carries its token ids, fed back as the next turn's
    if spec.stream:
        body["stream_options"] = {"include_usage": True}
    if spec.extra_body:
        body.update(spec.extra_body)
    return json.dumps(body, separators=(",", ":")).encode()


class BodyPool:
    """Request bodies encoded before the timed window; index i gets body i mod the pool size."""

    def __init__(self, spec: LoadSpec, model: str, needed: int) -> None:
        n = max(1, min(needed, _MAX_DISTINCT))
        if spec.prompts is not None and len(spec.prompts) < n:
            n = len(spec.prompts)
        if spec.output_lens is not None and len(spec.output_lens) < n:  # body i asks output_lens[i % n]
            n = len(spec.output_lens)
        self._bodies = [request_body(spec, model, i) for i in range(n)]

    def __getitem__(self, index: int) -> bytes:
        return self._bodies[index % len(self._bodies)]

    def __len__(self) -> int:
        return len(self._bodies)


def load_prompts(path: str | Path) -> tuple:
    """Read a JSONL prompts file: one `{"prompt": "text" | [token ids]}` per line; blank lines skipped."""
    out: list[str | tuple[int, ...]] = []
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"prompts file {p}: {exc.strerror or exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}:{n}: not JSON ({exc.msg}); each line must be {{\"prompt\": ...}}") from exc
        prompt = obj.get("prompt") if isinstance(obj, dict) else None
        if isinstance(prompt, str) and prompt:
            out.append(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                         for t in prompt):
            out.append(tuple(prompt))
        else:
            raise ValueError(f"{p}:{n}: \"prompt\" must be a non-empty string or a list of token ids")
    if not out:
        raise ValueError(f"{p}: no prompts (expected JSON lines like {{\"prompt\": \"Hello\"}})")
    return tuple(out)
