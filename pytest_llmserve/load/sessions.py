"""Multi-turn sessions: each later turn sends the session's previous prompt + the server's real reply + a new message.

`Sessions` (part of a LoadSpec) says which prompt continues which; the prompts themselves are built
in advance with a stand-in reply of the length asked for, so their new message is their tail.
At run time `SessionFeed` releases a turn only when the session's previous turn has finished
(turns of one session are sequential, sessions run concurrently) and builds its body from what was
actually sent and answered: for token-id prompts the reply's token ids (vLLM streams them with
`return_token_ids`, which session requests ask for), for text prompts the reply's text. A server
that answers a token-id prompt with text only gets the stand-in ids instead (no tokenizer on the
hot path), counted in `Shard.session_standins` and said in the result. The body is spliced from
bytes rendered before the measured window; the only work in it is one JSON parse of the finished
reply's payloads and a join.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .records import RawRequest
    from .spec import LoadSpec

_MARK = "\x00llmserve-prompt\x00"


@dataclass(frozen=True)
class Sessions:
    """Which prompt continues which: per prompt position, the session's previous turn and the new message."""

    previous: tuple[int, ...]  # position of the same session's previous turn; -1 for a first turn
    message: tuple[int, ...]  # items (token ids or characters) at the end of the prompt that are the new message
    token_ids: bool = True  # token-id prompts: ask for the reply's ids (vLLM's return_token_ids request field)

    def validate(self, prompts: Sequence | None) -> None:
        if prompts is None or len(self.previous) != len(prompts) or len(self.message) != len(prompts):
            raise ValueError("sessions need explicit prompts and one previous/message entry per prompt")
        for q, (p, m) in enumerate(zip(self.previous, self.message)):
            if p >= q or p < -1:
                raise ValueError(f"sessions.previous[{q}]={p}: a turn continues an earlier prompt (or -1)")
            if p >= 0 and (type(prompts[p]) is not type(prompts[q]) or
                           len(prompts[q]) < len(prompts[p]) + m or prompts[q][: len(prompts[p])] != prompts[p]):
                raise ValueError(f"prompts[{q}] does not start with prompts[{p}], the turn it continues")
            if not 0 <= m <= len(prompts[q]):
                raise ValueError(f"sessions.message[{q}]={m} must be between 0 and the prompt's length")

    def following(self) -> list[int]:
        """Per position, the position of the session's next turn (-1: none)."""
        nxt = [-1] * len(self.previous)
        for q, p in enumerate(self.previous):
            if p >= 0:
                nxt[p] = q
        return nxt


@dataclass(frozen=True)
class Reply:
    """What one response said: its token ids (None when the server sent none) and its text."""

    ids: list[int] | None
    text: str


def reply_of(payloads: Sequence[bytes], stream: bool = True) -> Reply:
    """The generated token ids and text of a finished completions response (SSE payloads, or one JSON body)."""
    if not stream:
        objs = _parse([b"".join(payloads)])
    else:
        objs = _parse([p for p in payloads if p != b"[DONE]"])
    ids: list[int] = []
    texts: list[str] = []
    saw_ids = False
    for obj in objs:
        choices = obj.get("choices") if isinstance(obj, dict) else None
        for choice in choices or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            got = choice.get("token_ids")
            if isinstance(got, list):
                saw_ids = True
                ids.extend(t for t in got if isinstance(t, int) and not isinstance(t, bool))
            if isinstance(choice.get("text"), str):
                texts.append(choice["text"])
    text = "".join(texts)
    return Reply(ids if saw_ids or not text else None, text)


def _parse(payloads: list[bytes]) -> list[Any]:
    try:  # one parse for the whole reply
        found = json.loads(b"[" + b",".join(payloads) + b"]")
        return found if isinstance(found, list) else []
    except ValueError:
        out = []
        for p in payloads:
            try:
                out.append(json.loads(p))
            except ValueError:
                continue
        return out


class SessionFeed:
    """The measured requests of one shard in session order; `finished(raw)` releases the next turn with its body.

    Iterating yields a released later turn first, else the next session's first turn; it stops when
    neither is there now (a later turn waits for its previous one, still in flight).
    """

    def __init__(self, spec: LoadSpec, model: str, shard: int, shards: int) -> None:
        from .prompts import request_body

        sessions = spec.sessions
        assert sessions is not None and spec.prompts is not None and spec.requests is not None
        self.spec, self.n = spec, len(spec.prompts)
        self._prev, self._next, self._msg = sessions.previous, sessions.following(), sessions.message
        lo, hi = spec.warmup, spec.warmup + spec.requests
        head: dict[int, int] = {}
        heads: list[int] = []
        for i in range(lo, hi):
            p = self._pred(i)
            if p is not None and p >= lo:
                head[i] = head[p]
            else:
                head[i] = i
                heads.append(i)
        mine = {h for k, h in enumerate(heads) if k % shards == shard}
        self.mine = {i for i in range(lo, hi) if head[i] in mine}
        self._heads = iter(sorted(mine))
        self._ready: deque[int] = deque()
        self.bodies: dict[int, bytes] = {}
        self._sent: dict[int, Any] = {}  # request index -> the prompt it sent (ids as JSON text, or str)
        self._parts: dict[int, tuple[bytes, bytes]] = {}
        self._ids = not isinstance(spec.prompts[0], str)
        self.turns = 0  # later turns released with the previous turn's real reply
        self.standins = 0  # ... of which with stand-in ids (the reply had text but no token ids)
        for i in sorted(self.mine):
            head_b, _, tail_b = request_body(spec, model, i, prompt=_MARK).partition(json.dumps(_MARK).encode())
            self._parts[i] = (head_b, tail_b)
            if head[i] == i:
                prompt = spec.prompts[i % self.n]
                self._sent[i] = _ids_json(prompt) if self._ids else prompt

    def _pred(self, i: int) -> int | None:
        p = self._prev[i % self.n]
        return None if p < 0 else i - (i % self.n - p)

    def __iter__(self) -> SessionFeed:
        return self

    def __next__(self) -> int:
        if self._ready:
            return self._ready.popleft()
        for h in self._heads:
            return h
        raise StopIteration

    def finished(self, raw: RawRequest) -> None:
        """Request `raw` is over (answered or failed): build the session's next turn and release it."""
        i = raw.index
        sent = self._sent.pop(i, None)
        if sent is None:
            return
        self.bodies.pop(i, None)
        q = self._next[i % self.n]
        if q < 0:
            return
        j = i + (q - i % self.n)
        if j not in self.mine:
            return
        prompts = self.spec.prompts
        assert prompts is not None  # checked in __init__
        full, m = prompts[q], self._msg[q]
        message = full[len(full) - m:] if m else full[:0]
        reply = reply_of(raw.ev_data, self.spec.stream)
        if self._ids:
            ids = reply.ids
            if ids is None:  # text only: the stand-in ids between the previous prompt and the message
                self.standins += 1
                ids = list(full[len(prompts[self._prev[q]]): len(full) - m])
            prompt = ",".join(s for s in (sent, _ids_json(ids), _ids_json(message)) if s)
            encoded = b"[" + prompt.encode() + b"]"
        else:
            prompt = sent + reply.text + message
            encoded = json.dumps(prompt).encode()
        head_b, tail_b = self._parts[j]
        self._sent[j] = prompt
        self.bodies[j] = head_b + encoded + tail_b
        self.turns += 1
        self._ready.append(j)


def _ids_json(ids: Sequence[int]) -> str:
    return ",".join(map(str, ids))
