"""Accuracy tasks scored through the serving API, so the engine under test is what is measured.

Two task kinds, both read from prompt log-probabilities (`prompt_logprobs` of vLLM's
/v1/completions; prompts are sent as token ids, so no tokenizer on either side can change them):

- ``next_token``: teacher forcing on held-out text. Every position from `score_from` on is one
  item: correct when the actual token has rank 1 (it is the strict argmax; a tie counts as wrong),
  and its log-likelihood (the token's logprob, nats).
- ``multiple_choice``: each choice's continuation is scored by the sum of its tokens' logprobs
  after the shared context; predicted = the argmax choice; correct when it is the strict argmax and
  the gold one. An item's choices go in one batched request (`prompt` = a list of token-id lists).

Task file schema (JSONL, one item per line, one kind per file; the file stem names the task)::

    {"kind": "next_token", "id": "textwrap#3", "token_ids": [0, 415, 22, ...],
     "text": "<the decoded window>", "score_from": 1}
    {"kind": "multiple_choice", "id": "heapq#12", "context_ids": [0, 77, ...], "context": "...",
     "choices": [{"token_ids": [...], "text": "..."}, ...], "gold": 2}

`token_ids` must come from the served model's tokenizer (include its BOS yourself if it expects
one); `text` fields are for people reading a failure and are never sent. `score_from` (default 1)
is the first scored position; position 0 has nothing to condition on. Continuation and context
ids are concatenated as they are, so split one tokenized sequence rather than tokenizing the
parts apart. An optional `manifest.json` next to the files may map a file name to
`{"tokenizer_sha256": ...}`; `check_tokenizer` then refuses a model whose tokenizer.json differs.
Build task files with `fixtures/make_tasks.py --model <model dir> --out-dir <dir>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import httpx
import numpy as np

KINDS = ("next_token", "multiple_choice")
MANIFEST = "manifest.json"
DEFAULT_CONCURRENCY = 4
DEFAULT_TIMEOUT_S = 120.0


class TaskFileError(ValueError):
    """A task file that cannot be used; the message names file, line and what to fix."""


class ScoringError(RuntimeError):
    """The server answered in a way the scores cannot be computed from."""


@dataclass(frozen=True, slots=True)
class NextTokenItem:
    id: str
    token_ids: tuple[int, ...]
    text: str
    score_from: int = 1


@dataclass(frozen=True, slots=True)
class ChoiceItem:
    id: str
    context_ids: tuple[int, ...]
    context: str
    choices: tuple[tuple[int, ...], ...]
    choice_texts: tuple[str, ...]
    gold: int


@dataclass(frozen=True, slots=True)
class Task:
    """One task file: its items, where it came from and (if known) the tokenizer it was built with."""

    name: str
    kind: str
    items: tuple[NextTokenItem | ChoiceItem, ...]
    source: str
    sha256: str
    tokenizer_sha256: str | None = None

    @property
    def n_scored(self) -> int:
        """How many scored items (token positions for next_token) the task yields."""
        if self.kind == "next_token":
            return sum(len(i.token_ids) - i.score_from for i in self.items if isinstance(i, NextTokenItem))  # all are
        return len(self.items)


def _ids(value: Any, where: str, min_len: int = 1) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) < min_len or not all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value
    ):
        raise TaskFileError(f"{where}: must be a list of at least {min_len} non-negative token ids")
    return tuple(value)


def _parse_item(raw: Any, kind: str, where: str) -> NextTokenItem | ChoiceItem:
    if not isinstance(raw, dict):
        raise TaskFileError(f"{where}: each line must be a JSON object")
    item_id = raw.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise TaskFileError(f"{where}: `id` must be a non-empty string")
    if kind == "next_token":
        ids = _ids(raw.get("token_ids"), f"{where}: `token_ids`", 2)
        score_from = raw.get("score_from", 1)
        if not isinstance(score_from, int) or not 1 <= score_from < len(ids):
            raise TaskFileError(f"{where}: `score_from`={score_from!r} must lie in [1, {len(ids) - 1}]")
        return NextTokenItem(item_id, ids, str(raw.get("text", "")), score_from)
    context = _ids(raw.get("context_ids"), f"{where}: `context_ids`")
    choices = raw.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, dict) for c in choices):
        raise TaskFileError(f"{where}: `choices` must be a list of at least 2 {{\"token_ids\", \"text\"}} objects")
    gold = raw.get("gold")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise TaskFileError(f"{where}: `gold`={gold!r} must index `choices` (0..{len(choices) - 1})")
    return ChoiceItem(
        item_id, context, str(raw.get("context", "")),
        tuple(_ids(c.get("token_ids"), f"{where}: choices[{k}].token_ids") for k, c in enumerate(choices)),
        tuple(str(c.get("text", "")) for c in choices), gold,
    )


def load_task(path: str | Path) -> Task:
    """Read and validate one JSONL task file (see the module docstring for the schema)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TaskFileError(f"{path}: cannot read task file ({exc.strerror})") from None
    items: list[NextTokenItem | ChoiceItem] = []
    kind: str | None = None
    seen: set[str] = set()
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise TaskFileError(f"{where}: not valid JSON ({exc})") from None
        line_kind = raw.get("kind") if isinstance(raw, dict) else None
        if line_kind not in KINDS:
            raise TaskFileError(f"{where}: `kind`={line_kind!r} must be one of {', '.join(KINDS)}")
        if kind is not None and line_kind != kind:
            raise TaskFileError(f"{where}: kind {line_kind!r} differs from earlier lines' {kind!r}: one kind per file")
        kind = line_kind
        item = _parse_item(raw, line_kind, where)
        if item.id in seen:
            raise TaskFileError(f"{where}: duplicate item id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if kind is None:
        raise TaskFileError(f"{path}: no items; a task file holds one JSON object per line")
    manifest = path.parent / MANIFEST
    tok_sha = None
    if manifest.is_file():
        entry = json.loads(manifest.read_text("utf-8")).get("files", {}).get(path.name, {})
        tok_sha = entry.get("tokenizer_sha256")
    return Task(path.stem, kind, tuple(items), str(path), hashlib.sha256(data).hexdigest(), tok_sha)


def check_tokenizer(task: Task, model_dir: str | Path | None) -> None:
    """Refuse a task built with another tokenizer than the model directory's tokenizer.json."""
    if task.tokenizer_sha256 is None or model_dir is None:
        return
    tok = Path(model_dir) / "tokenizer.json"
    if not tok.is_file():
        return
    actual = hashlib.sha256(tok.read_bytes()).hexdigest()
    if actual != task.tokenizer_sha256:
        raise TaskFileError(
            f"task {task.source} was tokenized with another tokenizer than {tok} (sha256 {actual[:12]} vs "
            f"{task.tokenizer_sha256[:12]}); its token ids mean other text for this model. Build tasks for it: "
            f"python fixtures/make_tasks.py --model {model_dir} --out-dir <dir>, then set options.accuracy_tasks"
        )


@dataclass(frozen=True, slots=True)
class ItemScore:
    """One scored item: 0/1 correctness, log-likelihood (nats) and what was predicted vs expected."""

    id: str
    correct: float
    loglik: float
    predicted: int  # token id (next_token) or choice index (multiple_choice)
    expected: int


@dataclass(frozen=True, slots=True)
class TaskScores:
    """Every item of one task scored by one server, in task order."""

    task: str
    kind: str
    target: str
    items: tuple[ItemScore, ...]

    @property
    def n(self) -> int:
        return len(self.items)

    def correct(self) -> np.ndarray:
        return np.fromiter((i.correct for i in self.items), float, self.n)

    def loglik(self) -> np.ndarray:
        return np.fromiter((i.loglik for i in self.items), float, self.n)

    def summary(self) -> dict[str, float]:
        """accuracy, mean log-likelihood, n (and perplexity for next_token)."""
        mean_ll = float(self.loglik().mean())
        out = {"accuracy": float(self.correct().mean()), "mean_loglik": mean_ll, "n": float(self.n)}
        if self.kind == "next_token":
            out["perplexity"] = math.exp(-mean_ll)
        return out


def paired_arrays(baseline: TaskScores, candidate: TaskScores, field: str = "correct") -> tuple[np.ndarray, np.ndarray]:
    """The two score arrays item by item; refuses scores of different items or orders."""
    if [i.id for i in baseline.items] != [i.id for i in candidate.items]:
        raise ValueError(f"{baseline.task}: the two targets scored different items; score both on the same task file")
    return getattr(baseline, field)(), getattr(candidate, field)()


def position_logprobs(prompt_logprobs: Sequence[Any], token_ids: Sequence[int], start: int) -> list[tuple[float, int, int]]:
    """(logprob, rank, argmax token id) of each prompt token from `start` on.

    vLLM returns, per prompt position, None (position 0) or {"<token id>": {"logprob", "rank",
    "decoded_token"}} holding the actual token and the top-k (k = prompt_logprobs) tokens.
    """
    if len(prompt_logprobs) != len(token_ids):
        raise ScoringError(f"prompt_logprobs has {len(prompt_logprobs)} positions for a {len(token_ids)}-token prompt")
    out = []
    for pos in range(start, len(token_ids)):
        entry = prompt_logprobs[pos]
        actual = entry.get(str(token_ids[pos])) if isinstance(entry, dict) else None
        if not isinstance(actual, dict) or "logprob" not in actual or actual.get("rank") is None:
            raise ScoringError(f"position {pos}: no logprob/rank for the prompt token {token_ids[pos]} in {entry!r}")
        top = next((int(k) for k, v in entry.items() if isinstance(v, dict) and v.get("rank") == 1), -1)
        out.append((float(actual["logprob"]), int(actual["rank"]), top))
    return out


@dataclass(frozen=True)
class _Client:
    http: httpx.AsyncClient
    base_url: str
    model: str
    gate: asyncio.Semaphore

    async def prompt_logprobs(self, prompts: Sequence[Sequence[int]], what: str) -> list[list[Any]]:
        """prompt_logprobs of several prompts sent as one batched request (a list of token-id lists)."""
        body = {"model": self.model, "prompt": [list(p) for p in prompts], "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": 1}
        async with self.gate:
            try:
                resp = await self.http.post(f"{self.base_url}/v1/completions", json=body)
            except httpx.HTTPError as exc:
                raise ScoringError(f"{what}: POST {self.base_url}/v1/completions failed: {exc!r}") from None
        if resp.status_code != 200:
            raise ScoringError(f"{what}: {self.base_url}/v1/completions answered {resp.status_code}: {resp.text[:400]}")
        choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
        if [c["index"] for c in choices] != list(range(len(prompts))):
            raise ScoringError(f"{what}: sent {len(prompts)} prompts, got choices {[c['index'] for c in choices]}")
        out = []
        for choice, ids in zip(choices, prompts):
            plp = choice.get("prompt_logprobs")
            if plp is None:
                raise ScoringError(
                    f"{what}: the response has no `prompt_logprobs`; these tasks need a server that returns prompt "
                    "log-probabilities (vLLM /v1/completions with `prompt_logprobs`)"
                )
            echoed = choice.get("prompt_token_ids")
            if echoed is not None and list(echoed) != list(ids):
                raise ScoringError(f"{what}: the server changed the prompt token ids (sent {len(ids)}, got {len(echoed)})")
            out.append(plp)
        return out


async def _score_next_token(client: _Client, item: NextTokenItem) -> list[ItemScore]:
    (plp,) = await client.prompt_logprobs([item.token_ids], item.id)
    rows = position_logprobs(plp, item.token_ids, item.score_from)
    return [
        ItemScore(f"{item.id}@{pos}", float(rank == 1), lp, top, item.token_ids[pos])
        for pos, (lp, rank, top) in enumerate(rows, item.score_from)
    ]


async def _score_choice(client: _Client, item: ChoiceItem) -> list[ItemScore]:
    start = len(item.context_ids)
    prompts = [item.context_ids + cont for cont in item.choices]
    plps = await client.prompt_logprobs(prompts, item.id)  # all choices in one request: one round trip per item
    sums = [sum(lp for lp, _, _ in position_logprobs(plp, ids, start)) for plp, ids in zip(plps, prompts)]
    best = int(np.argmax(sums))
    ties = sum(s == sums[best] for s in sums) > 1  # a tie at the top is no win for the gold choice
    return [ItemScore(item.id, float(best == item.gold and not ties), sums[item.gold], best, item.gold)]


async def score_task_async(base_url: str, model: str, task: Task, *, target: str = "",
                           concurrency: int = DEFAULT_CONCURRENCY, timeout_s: float = DEFAULT_TIMEOUT_S,
                           transport: httpx.AsyncBaseTransport | None = None) -> TaskScores:
    """Score every item of `task` on the server at `base_url` (a few requests in flight).

    `transport` replaces the network (tests use httpx.MockTransport).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency!r} must be >= 1")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, transport=transport) as http:
        client = _Client(http, base_url.rstrip("/"), model, asyncio.Semaphore(concurrency))
        scorer = _score_next_token if task.kind == "next_token" else _score_choice
        per_item = await asyncio.gather(*(scorer(client, item) for item in task.items))  # type: ignore[arg-type]
    return TaskScores(task.name, task.kind, target, tuple(s for scores in per_item for s in scores))


def score_task(base_url: str, model: str, task: Task, **kwargs: Any) -> TaskScores:
    """Blocking form of score_task_async."""
    return asyncio.run(score_task_async(base_url, model, task, **kwargs))
