"""The start-up probe: a handful of tiny control-plane requests that find out what a server accepts.

One-token completions outside any measured window (capabilities.py holds what they find); a URL that
is not an OpenAI server, or one that does not serve the configured model, is refused here with one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import httpx

from .capabilities import READINESS_ROUTES, Capabilities, CapabilityError

PROBE_IDS = [10, 11, 12]  # token ids that exist in every real vocabulary (specials sit at 0..9)
TIMEOUT_S = 30.0


@dataclass
class _Answer:
    status: int | None  # None: no HTTP answer (connection error)
    body: Any  # parsed JSON, or the text
    text: str
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return self.status == 200 and isinstance(self.body, dict)

    def short(self) -> str:
        if self.status is None:
            return self.text
        if self.status == 200 and not isinstance(self.body, dict):
            return f"HTTP 200 but not a JSON object ({self.headers.get('content-type', 'no content-type')})"
        return f"HTTP {self.status}" + (f": {error_message(self)}" if self.status != 200 else "")


def error_message(answer: _Answer) -> str:
    """The server's own words for an error, whatever its error schema (OpenAI, FastAPI, plain text)."""
    body = answer.body
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return " ".join(str(err).split())[:200]
    return " ".join(answer.text.split())[:200] or "(empty body)"


class _Client:
    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        self.base_url, self.headers = base_url.rstrip("/"), dict(headers)

    def call(self, method: str, path: str, body: dict | None = None) -> _Answer:
        try:
            r = httpx.request(method, self.base_url + path, json=body, headers=self.headers, timeout=TIMEOUT_S)
        except (httpx.HTTPError, OSError) as exc:
            return _Answer(None, None, type(exc).__name__, {})
        try:
            parsed = r.json()
        except ValueError:
            parsed = r.text
        return _Answer(r.status_code, parsed, r.text, r.headers)

    def stream(self, path: str, body: dict) -> tuple[_Answer, list[Any], bool]:
        """POST a streaming request: (answer head, parsed events, whether [DONE] came)."""
        events: list[Any] = []
        done = False
        try:
            with httpx.stream("POST", self.base_url + path, json=body, headers=self.headers, timeout=TIMEOUT_S) as r:
                if r.status_code != 200:
                    r.read()
                    return _Answer(r.status_code, _json_or_text(r.text), r.text, r.headers), [], False
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        continue
                    events.append(_json_or_text(data))
                return _Answer(200, {}, "", r.headers), events, done
        except (httpx.HTTPError, OSError) as exc:
            return _Answer(None, None, type(exc).__name__, {}), events, done


def _json_or_text(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _model_refused(answer: _Answer, model: str) -> bool:
    """A 4xx whose message is about the model (vLLM 404 'The model `x` does not exist', transformers 400 'pinned to')."""
    if answer.status is None or not 400 <= answer.status < 500:
        return False
    msg = error_message(answer).lower()
    quoted = any(f"{q}{model.lower()}{q}" in msg for q in ("'", "`", '"'))
    return quoted or "model" in msg and any(w in msg for w in ("not exist", "not found", "pinned", "unknown model",
                                                               "not serve", "invalid model"))


_SAMPLE_LINE = re.compile(r"^[A-Za-z_:][\w:]*(\{[^}]*\})?\s+[-+]?(\d|\.\d|[Nn]a[Nn]|[Ii]nf)")


def is_prometheus_text(text: str) -> bool:
    """Whether a body is Prometheus exposition text: a `# TYPE` line or at least one `name{labels} value` sample
    (trtllm-serve's /prometheus/metrics sends samples without TYPE lines; its /metrics is JSON)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return bool(lines) and (any(line.startswith("# TYPE ") for line in lines)
                            or any(_SAMPLE_LINE.match(line) for line in lines if not line.startswith("#")))


def _who(target: str) -> str:
    return f"target {target!r}" if target else "the run"


def model_refused(target: str, model: str, base_url: str, answer: _Answer) -> CapabilityError:
    return CapabilityError(f"{_who(target)} expects model {model!r} but the server at {base_url} refuses it "
                           f"({answer.short()}); set served_model_name (or model for kind 'openai') to the name it "
                           "serves")


def probe_capabilities(base_url: str, model: str, *, readiness: str = "/health", overrides: Mapping[str, Any] = {},
                       headers: Mapping[str, str] = {}, tokenizer_candidates: tuple[str, ...] = (),
                       metrics_path: str = "/metrics",
                       target: str = "") -> Capabilities:
    """Ask the (ready) server what it accepts; raise CapabilityError when it is not an OpenAI server for `model`."""
    c = _Client(base_url, headers)
    notes: list[str] = []
    facts: dict[str, Any] = {"readiness": readiness}
    models_answer = c.call("GET", "/v1/models")
    models = None
    if models_answer.ok and isinstance(models_answer.body.get("data"), list):
        models = tuple(str(m.get("id")) for m in models_answer.body["data"] if isinstance(m, dict))
        if model not in models:
            raise CapabilityError(f"{_who(target)} expects model {model!r} but the server at {base_url} serves "
                                  f"{list(models)}; set served_model_name (or model for kind 'openai')")
        roots = [str(m.get("root")) for m in models_answer.body["data"] if isinstance(m, dict) and m.get("id") == model
                 and m.get("root")]
        tokenizer_candidates = (*tokenizer_candidates, *roots)
    else:
        notes.append(f"models: GET /v1/models answered {models_answer.short()}")

    def one(path: str, **fields: Any) -> _Answer:
        body = {"model": model, "max_tokens": 1, "temperature": 0, **fields}
        return c.call("POST", path, body)

    text = "Hello"
    comp = one("/v1/completions", prompt=PROBE_IDS) if overrides.get("token_id_prompts", True) else None
    if comp is not None and comp.ok:
        facts["completions"] = facts["token_id_prompts"] = True
    else:
        plain = one("/v1/completions", prompt=text)
        facts["completions"] = plain.ok
        facts["token_id_prompts"] = False
        if comp is not None and plain.ok:
            notes.append(f"token_id_prompts: a prompt of token ids got {comp.short()}")
        if not plain.ok:
            notes.append(f"completions: POST /v1/completions answered {plain.short()}")
        comp = plain
    chat = one("/v1/chat/completions", messages=[{"role": "user", "content": text}])
    facts["chat"] = chat.ok
    if not chat.ok:
        notes.append(f"chat: POST /v1/chat/completions answered {chat.short()}")
    for answer in (comp, chat):
        if _model_refused(answer, model):
            raise model_refused(target, model, base_url, answer)
    if not facts["completions"] and not facts["chat"]:
        seen = "; ".join([f"GET /v1/models {models_answer.short()}", f"POST /v1/completions {comp.short()}",
                          f"POST /v1/chat/completions {chat.short()}"])
        raise CapabilityError(f"{_who(target)}: the server at {base_url} is not an OpenAI-compatible server for "
                              f"model {model!r} "
                              f"({seen}); check the URL (scheme, host, port, no path after it) and the model name")
    path = "/v1/completions" if facts["completions"] else "/v1/chat/completions"
    form: dict[str, Any] = ({"prompt": PROBE_IDS if facts["token_id_prompts"] else text} if facts["completions"]
                            else {"messages": [{"role": "user", "content": text}]})
    for field, value in (("ignore_eos", True), ("min_tokens", 1)):
        if field in overrides:
            continue
        answer = one(path, **form, **{field: value})
        facts[field] = answer.ok
        if not answer.ok:
            notes.append(f"{field}: the field got {answer.short()}")
    if "usage" not in overrides:
        head, events, done = c.stream(path, {"model": model, "max_tokens": 1, "temperature": 0, "stream": True,
                                             "stream_options": {"include_usage": True}, **form})
        facts["usage"] = any(isinstance(e, dict) and isinstance(e.get("usage"), dict) for e in events)
        facts["stream_done"] = done
        if not facts["usage"]:
            notes.append(f"usage: a streamed request ({head.short()}) ended without usage counts")
    if "logprobs" not in overrides and facts["completions"]:
        answer = one("/v1/completions", prompt=form.get("prompt", text), logprobs=2)
        choice = (answer.body.get("choices") or [{}])[0] if answer.ok else {}
        facts["logprobs"] = isinstance(choice, dict) and bool(choice.get("logprobs"))
        if not facts["logprobs"]:
            notes.append("logprobs: " + (f"a request with logprobs=2 got {answer.short()}" if not answer.ok
                                         else "a request with logprobs=2 came back without logprobs"))
    elif "logprobs" not in overrides:
        facts["logprobs"] = False
        notes.append("logprobs: no completions endpoint to ask")
    if "metrics" not in overrides:
        answer = c.call("GET", metrics_path)  # the backend's metrics route (trtllm-serve: /prometheus/metrics)
        facts["metrics"] = answer.status == 200 and is_prometheus_text(answer.text)
        if not facts["metrics"]:
            notes.append(f"metrics: GET {metrics_path} answered "
                         f"{answer.short() if answer.status != 200 else 'no Prometheus text'}")
    facts.update({k: v for k, v in overrides.items() if k != "tokenizer"})
    tokenizer = overrides.get("tokenizer") or find_tokenizer(tokenizer_candidates)
    return Capabilities(**facts, tokenizer=tokenizer, models=models, server=str(comp.headers.get("server", "")),
                        overridden=tuple(sorted(overrides)), notes=tuple(notes))


def probe_url(base_url: str, model: str, *, overrides: Mapping[str, Any] = {}, headers: Mapping[str, str] = {},
              tokenizer_candidates: tuple[str, ...] = ()) -> Capabilities:
    """For command lines: one readiness check (the server should be up), then the full probe; CapabilityError
    (one line) when it is down, not an OpenAI server or does not serve `model`."""
    route, why = ready_check(model, overrides.get("readiness"), headers)(base_url.rstrip("/"))
    if route is None:
        raise CapabilityError(f"the server at {base_url} is not ready ({why})")
    return probe_capabilities(base_url.rstrip("/"), model, readiness=route, overrides=overrides, headers=headers,
                              tokenizer_candidates=(*tokenizer_candidates, model))


def find_tokenizer(candidates: tuple[str, ...]) -> str | None:
    """The first candidate that is a local directory holding a tokenizer (model paths, vLLM's model `root`)."""
    for cand in candidates:
        path = Path(cand).expanduser()
        if path.is_dir() and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                  "tokenizer.model")):
            return str(path.resolve())
    return None


# ---------------------------------------------------------------------------- readiness
ROUTE_MISSING = {404, 405, 501}  # no such route / method: a server answering only these will never be ready


def ready_check(model: str, route: str | None, headers: Mapping[str, str] = {},
                target: str = "") -> Callable[[str], tuple[str | None, str | None]]:
    """A readiness check for a server of unknown make: returns (route that answered 200, None) or (None, why not).

    With `route` set only that route is tried; else /health, then /v1/models, then a one-token
    completion (some servers have no /health, some answer /v1/models with 500).
    """
    routes = (route,) if route else READINESS_ROUTES

    def check(base_url: str) -> tuple[str | None, str | None]:
        c = _Client(base_url, headers)
        seen = []
        for r in routes:
            if r == "completion":
                answer = c.call("POST", "/v1/completions", {"model": model, "prompt": "Hello", "max_tokens": 1})
                if _model_refused(answer, model):
                    raise model_refused(target, model, base_url, answer)
                if answer.status is not None and answer.status != 200:
                    chat = c.call("POST", "/v1/chat/completions", {"model": model, "max_tokens": 1,
                                                                 "messages": [{"role": "user", "content": "Hello"}]})
                    answer = chat if chat.status == 200 else answer
            else:
                answer = c.call("GET", r)
            if answer.status == 200:
                return r, None
            if answer.status is None:
                return None, f"{'POST /v1/completions' if r == 'completion' else 'GET ' + r}: {answer.text}"
            seen.append((r, answer))
        statuses = {a.status for _, a in seen}
        why = "; ".join(f"{'POST /v1/completions' if r == 'completion' else 'GET ' + r}: {a.short()}" for r, a in seen)
        if statuses <= ROUTE_MISSING and not route:  # a server that is up, but has none of these routes
            raise CapabilityError(f"{_who(target)}: the server at {base_url} is not an OpenAI-compatible server: "
                                  f"{why}; check the URL (scheme, host, port, no path after it)")
        return None, why

    return check
