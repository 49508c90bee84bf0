"""What an OpenAI-compatible server accepts, probed once at start-up, so load is shaped to fit it.

Servers behind the same URL shape accept different subsets of vLLM's extensions (token-id prompts,
`ignore_eos`, `min_tokens`, logprobs, a model list, /metrics). A handful of tiny control-plane
requests (one-token completions, outside any measured window) find out which; each fact can be
overridden per target (`capabilities = { token_id_prompts = false }`). A URL that is not an OpenAI
server, or one that does not serve the configured model, is refused here with one line, before
any load runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping


READINESS_ROUTES = ("/health", "/v1/models", "completion")
# key -> (type, what it means); config validation and the report use the same table
OVERRIDES: dict[str, tuple[type, str]] = {
    "readiness": (str, "route that says the server is ready: /health, /v1/models or completion"),
    "completions": (bool, "POST /v1/completions exists"),
    "chat": (bool, "POST /v1/chat/completions exists"),
    "token_id_prompts": (bool, "completions accept a prompt given as token ids"),
    "ignore_eos": (bool, "the ignore_eos request field is accepted"),
    "min_tokens": (bool, "the min_tokens request field is accepted"),
    "usage": (bool, "streamed responses end with usage counts"),
    "logprobs": (bool, "completions return logprobs"),
    "metrics": (bool, "GET /metrics serves Prometheus text"),
    "tokenizer": (str, "local tokenizer (model directory) used to build exact-length text prompts"),
}


class CapabilityError(Exception):
    """The server at the URL is not an OpenAI server, or does not serve the model: one line saying which."""


@dataclass(frozen=True)
class Capabilities:
    """Facts about one server's API, probed (or overridden in config); `overridden` names the latter."""

    readiness: str = "/health"
    completions: bool = True
    chat: bool = True
    token_id_prompts: bool = True
    ignore_eos: bool = True
    min_tokens: bool = True
    usage: bool = True
    logprobs: bool = True
    metrics: bool = True
    tokenizer: str | None = None
    models: tuple[str, ...] | None = None  # what GET /v1/models listed (None: it did not answer a list)
    stream_done: bool = True  # streams end with `data: [DONE]`
    server: str = ""  # the Server response header, when sent
    overridden: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the probe saw that explains a "no"

    @property
    def matched_work(self) -> str:
        """'forced' when the server can be told to decode exactly max_tokens, else 'verified'."""
        return "forced" if self.ignore_eos or self.min_tokens else "verified"

    @property
    def warm_path(self) -> str:
        """Where the load client warms each new connection: GET /v1/models, unless the probe found it broken
        (transformers serve answers it with a 500 and a traceback): then the readiness route, or /health
        (a 404 warms a connection as well)."""
        if self.models is not None:
            return "/v1/models"
        return self.readiness if self.readiness.startswith("/") else "/health"

    @property
    def endpoint(self) -> str:
        """The endpoint load goes to unless a test names one."""
        return "completions" if self.completions else "chat"

    def missing(self, name: str) -> str:
        """Why `name` is False, for skip messages: probed or overridden, and what the probe saw."""
        how = "set in the target's capabilities table" if name in self.overridden else "probed at start-up"
        seen = [n for n in self.notes if n.startswith(name + ":")]
        return f"{name} = false ({how}{'; ' + seen[0].split(':', 1)[1].strip() if seen else ''})"

    def describe(self) -> str:
        """One line for progress output and the terminal summary."""
        yes = [k for k in ("completions", "chat", "token_id_prompts", "ignore_eos", "min_tokens", "usage", "logprobs",
                           "metrics") if getattr(self, k)]
        no = [k for k in ("completions", "chat", "token_id_prompts", "ignore_eos", "min_tokens", "usage", "logprobs",
                          "metrics") if not getattr(self, k)]
        text = f"ready via {self.readiness}; has {', '.join(yes) or 'nothing'}"
        if no:
            text += f"; lacks {', '.join(no)}"
        text += f"; matched work {'forced' if self.matched_work == 'forced' else 'verified, not forced'}"
        if not self.token_id_prompts:
            text += f"; text prompts via tokenizer {self.tokenizer}" if self.tokenizer else "; text prompts (no tokenizer)"
        if not self.stream_done:
            text += "; streams end without [DONE]"
        if self.overridden:
            text += f"; overridden: {', '.join(self.overridden)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["matched_work"] = self.matched_work
        d["models"] = list(self.models) if self.models is not None else None
        d["overridden"], d["notes"] = list(self.overridden), list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Capabilities:
        """The inverse of to_dict (an xdist worker's probe, merged into the controller's report)."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in d.items() if k in known}
        for name in ("overridden", "notes"):
            fields[name] = tuple(fields.get(name, ()))
        if fields.get("models") is not None:
            fields["models"] = tuple(fields["models"])
        return cls(**fields)


def common(caps: list[Capabilities]) -> Capabilities:
    """What every one of several servers accepts (sweeps and A/B runs send all of them the same requests)."""
    first = caps[0]
    flags: dict[str, Any] = {k: all(getattr(c, k) for c in caps) for k, (kind, _) in OVERRIDES.items() if kind is bool}
    tokenizer = next((c.tokenizer for c in caps if c.tokenizer), None)
    return dataclasses.replace(first, **flags, tokenizer=tokenizer,
                               notes=tuple(n for c in caps for n in c.notes))


def validate_overrides(raw: Any) -> tuple[str | None, Any, str] | None:
    """None when `raw` is a valid capabilities table, else (key, value, problem) for config.py's error line."""
    if not isinstance(raw, Mapping):
        return None, raw, "must be a table, e.g. capabilities = { token_id_prompts = false }"
    for key, value in raw.items():
        if key not in OVERRIDES:
            return key, value, f"unknown capability; known: {', '.join(OVERRIDES)}"
        kind, _ = OVERRIDES[key]
        if kind is bool and not isinstance(value, bool):
            return key, value, "must be true or false"
        if kind is str and (not isinstance(value, str) or not value):
            return key, value, "must be a non-empty string"
        if key == "readiness" and value not in READINESS_ROUTES:
            return key, value, f"must be one of {', '.join(READINESS_ROUTES)}"
    return None


# ---------------------------------------------------------------------------- probing


def parse_override_args(items: list[str]) -> dict[str, Any]:
    """`--capability KEY=VALUE` pairs (true/false for flags) into a validated overrides table."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--capability {item!r}: use KEY=VALUE, e.g. --capability token_id_prompts=false")
        kind = OVERRIDES.get(key.strip(), (str, ""))[0]
        out[key.strip()] = {"true": True, "false": False}.get(value.strip().lower(), value.strip()) if kind is bool \
            else value.strip()
    problem = validate_overrides(out)
    if problem:
        bad_key, value, what = problem
        raise ValueError(f"--capability {bad_key}={value!r}: {what}")
    return out
