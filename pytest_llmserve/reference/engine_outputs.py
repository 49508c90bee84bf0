"""One engine's greedy outputs on a prompt set, cached per side, extended within a wall budget.

Cache: ``<baselines_dir>/<hardware>/engine_outputs/<target name>-<key digest>.json``. The key is the
side's identity -- kind, model (a directory by its name), a content fingerprint of the model and engine
directories (names, sizes, bytes; files over 2 MiB by their first and last MiB, so a multi-GB engine is
not read whole and a rebuilt one misses), args, dtype, env, launcher,
URL (external servers), the served name and the version the server reports at ``GET /version`` --
plus the digest of the *whole* planned prompt set and the decoding parameters (greedy, ignore_eos,
max_tokens, top_k). A file holds the answers to a prefix of the prompts; a later run with the same
key reuses it and sends only the prompts after it, so the incumbent's side is paid for once and grows
across runs while a new candidate build (a new key) is re-run. Reads and the extension happen under
the file's lock; the write is an atomic rename. ``refresh`` (--update-baselines) discards the file.

An external server (kind ``openai``) without ``GET /version`` is keyed by its URL and model only: a
redeploy behind the same URL is not noticed; use --update-baselines then.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import httpx

from ..store.atomic import atomic_write_text
from ..checks.equivalence import Continuation
from ..settings.config import Target
from ..store.locks import lock_for
from .hf import Prompt, key_digest, prompts_sha256
from ..evidence.server_logprobs import DEFAULT_CONCURRENCY, completion_body, fetch_greedy_until

SCHEMA = 1
LOGPROB_DIGITS = 4
FINGERPRINT_FILES = 10_000  # a directory with more files is fingerprinted by its first 10,000 (sorted)
SAMPLE_BYTES = 1 << 20


def dir_fingerprint(folder: str | Path | None) -> str | None:
    """sha256 over every file under `folder` (relative name, size, content; files over 2 MiB by their first and
    last MiB): content-based, so another checkout of the same files matches; None when it is not a directory."""
    if not folder or not Path(str(folder)).is_dir():
        return None
    root = Path(str(folder))
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file())[:FINGERPRINT_FILES]:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root)}\0{size}\0".encode())
        with path.open("rb") as fh:
            if size <= 2 * SAMPLE_BYTES:
                digest.update(fh.read())
            else:
                digest.update(fh.read(SAMPLE_BYTES))
                fh.seek(size - SAMPLE_BYTES)
                digest.update(fh.read(SAMPLE_BYTES))
    return digest.hexdigest()


def engine_version(base_url: str, timeout_s: float = 5.0) -> str | None:
    """What `GET /version` says (vLLM: {"version": "0.x"}), or None when the server has no such route."""
    try:
        resp = httpx.get(f"{base_url.rstrip('/')}/version", timeout=timeout_s)
        data = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return str(data.get("version")) if isinstance(data, dict) and data.get("version") else None


def side_identity(target: Target, version: str | None) -> dict[str, Any]:
    """What a side's outputs depend on, besides prompts and decoding (its name and pinning do not count)."""
    model = Path(target.model).name if target.model and Path(target.model).is_dir() else target.model
    return {"kind": target.kind, "model": model, "model_files": dir_fingerprint(target.model),
            "engine": {k: str(v) for k, v in sorted(target.engine.items())},
            "engine_files": dir_fingerprint(target.engine.get("dir")), "args": list(target.args),
            "dtype": target.dtype, "env": dict(sorted(target.env.items())), "launcher": list(target.launcher),
            "url": None if target.is_managed else target.url,
            "served_model_name": None if target.is_managed else target.model_name, "version": version}


@dataclass(frozen=True)
class SideKey:
    """Everything one side's cached outputs depend on: identity, the whole planned prompt set, decoding."""

    identity: dict[str, Any]
    prompts_sha256: str
    decoding: dict[str, Any]  # server_logprobs.completion_body's fixed fields plus max_tokens and top_k
    schema: int = SCHEMA


def side_key(identity: dict[str, Any], prompts: Sequence[Prompt], max_tokens: int, top_k: int) -> SideKey:
    body = completion_body("", [], max_tokens, top_k)
    return SideKey(identity, prompts_sha256(prompts), {k: v for k, v in body.items() if k not in ("model", "prompt")})


@dataclass(frozen=True, slots=True)
class SideResult:
    """One side's continuations for a prefix of the prompts, and how they were obtained."""

    name: str
    continuations: tuple[Continuation, ...]
    path: Path
    reused: int  # prompts answered from the cache
    sent: int  # prompts sent to the server in this run
    send_s: float
    budget_spent: bool  # the wall budget stopped sending before the wanted prompts were all answered

    def line(self) -> str:
        rate = f", {60 * self.sent / self.send_s:.0f} prompts/min" if self.sent and self.send_s > 0 else ""
        stop = "; budget spent" if self.budget_spent else ""
        return (f"{self.name}: {self.reused} prompts from cache, {self.sent} sent in {self.send_s:.1f} s{rate}{stop} "
                f"({self.path.name})")


def cached_side(name: str, base_url: str, model: str, identity: dict[str, Any], prompts: Sequence[Prompt], *,
                want: int, max_tokens: int, top_k: int, cache_dir: str | Path, budget_s: float | None,
                concurrency: int = DEFAULT_CONCURRENCY, refresh: bool = False) -> SideResult:
    """Continuations for prompts[:want]: the cached prefix, extended by sending the rest until `budget_s`."""
    key = side_key(identity, prompts, max_tokens, top_k)
    path = Path(cache_dir) / f"{_safe(name)}-{key_digest(key)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock_for(path):
        stored = [] if refresh else list(read_side(path, key))
        missing = prompts[len(stored):want]
        t0 = time.perf_counter()
        deadline = time.monotonic() + budget_s if budget_s is not None else None
        new = fetch_greedy_until(base_url, model, [p.token_ids for p in missing], max_tokens=max_tokens, top_k=top_k,
                                 deadline=deadline, concurrency=concurrency) if missing else []
        send_s = time.perf_counter() - t0
        if new:
            write_side(path, key, prompts, stored + new)
    conts = tuple(stored + new)[:want]
    return SideResult(name, conts, path, min(len(stored), want), len(new), send_s, len(conts) < want)


def read_side(path: Path, key: SideKey) -> tuple[Continuation, ...]:
    """The stored prefix for `key` (empty when absent, unreadable or made for another key)."""
    try:
        data = json.loads(path.read_text("utf-8"))
        if data.get("key") != json.loads(json.dumps(asdict(key))):
            return ()
        return tuple(Continuation(tuple(p["tokens"]), tuple({int(t): float(v) for t, v in step} for step in p["top"]))
                     for p in data["prompts"])
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def write_side(path: Path, key: SideKey, prompts: Sequence[Prompt], conts: Sequence[Continuation]) -> None:
    data = {"schema": SCHEMA, "key": asdict(key), "planned": len(prompts),
            "prompts": [{"id": p.id, "tokens": list(c.tokens),
                         "top": [[[t, round(v, LOGPROB_DIGITS)] for t, v in step.items()] for step in c.top_logprobs]}
                        for p, c in zip(prompts, conts)]}
    atomic_write_text(path, json.dumps(data, separators=(",", ":")) + "\n")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "target"
