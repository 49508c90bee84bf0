"""Bad input to the capability probe: one clear line each, before any load runs (scripted stand-in servers).

Stand-ins: a server that is not an OpenAI server (404 on every route; HTML 200 on every route), one
answering every route with 500, one pinned to another model that lists none (like transformers
serve), and one without ignore_eos/min_tokens whose responses stop early (matched work: verified,
not forced, so the run is invalid). Also: the overrides table, and the probe against the truth server.
"""

from __future__ import annotations

import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from pytest_llmserve.cli import main as cli_main
from pytest_llmserve.settings.config import Target
from pytest_llmserve.load import LoadSpec, run_load
from pytest_llmserve.load.fit import fit_load
from pytest_llmserve.servers.base import ServerStartError
from pytest_llmserve.servers.capabilities import Capabilities
from pytest_llmserve.servers.capability_probe import probe_url
from pytest_llmserve.servers.lifecycle import start_server
from pytest_llmserve.testing import Script, TruthServer

Answer = Callable[[str, str, dict], tuple[int, str, bytes]]  # (method, path, body) -> status, content type, body


class _StandIn:
    """A tiny scripted HTTP server: `answer(method, path, body)` decides every response."""

    def __init__(self, answer: Answer) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, method: str) -> None:
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw.startswith(b"{") else {}
                status, ctype, payload = answer(method, self.path, body)
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802
                self._reply("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._reply("POST")

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _StandIn:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _json(status: int, obj: object) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(obj).encode()


def _start(url: str, model: str = "m", timeout: float = 1.0) -> str:
    with pytest.raises(ServerStartError) as info:
        start_server(Target(name="ext", kind="openai", url=url, model=model, startup_timeout_s=timeout),
                     Path(tempfile.mkdtemp()))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_server_answering_404_everywhere_is_not_an_openai_server_at_once():
    with _StandIn(lambda m, p, b: _json(404, {"detail": "Not Found"})) as srv:
        message = _start(srv.url, timeout=60)  # refused at once, not after the 60 s start-up timeout
    assert message.startswith(f"target 'ext': the server at {srv.url} is not an OpenAI-compatible server: GET /health: "
                              "HTTP 404")
    assert "check the URL" in message


def test_a_web_server_answering_html_everywhere_is_not_an_openai_server():
    with _StandIn(lambda m, p, b: (200, "text/html", b"<html>hello</html>")) as srv:
        message = _start(srv.url)
    assert f"target 'ext': the server at {srv.url} is not an OpenAI-compatible server for model 'm'" in message
    assert "POST /v1/completions HTTP 200 but not a JSON object (text/html)" in message and "check the URL" in message


def test_a_server_answering_500_everywhere_is_never_ready_and_says_what_each_route_answered():
    with _StandIn(lambda m, p, b: _json(500, {"error": {"message": "boom"}})) as srv:
        message = _start(srv.url)
    assert message == ("server for target 'ext' was not ready after 1 s (startup_timeout_s; last probe: GET /health: "
                       "HTTP 500: boom; GET /v1/models: HTTP 500: boom; POST /v1/completions: HTTP 500: boom)")


def _pinned(method: str, path: str, body: dict) -> tuple[int, str, bytes]:
    """Like transformers serve: /health ok, /v1/models 500, completions refuse any other model with 400."""
    if path == "/health":
        return _json(200, {"status": "ok"})
    if path == "/v1/models":
        return 500, "text/plain", b"Internal Server Error"
    if body.get("model") != "served":
        return _json(400, {"detail": f"Server is pinned to 'served'; requested '{body.get('model')}'."})
    return _json(200, {"choices": [{"text": "x", "finish_reason": "length"}], "usage": {"completion_tokens": 1}})


def test_a_model_the_server_does_not_serve_is_named_with_the_servers_own_words():
    with _StandIn(_pinned) as srv:
        message = _start(srv.url, model="other")
        code_line = _cli_error(["load", "--url", srv.url, "--model", "other", "--output-len", "2"])
    assert message == (f"target 'ext' expects model 'other' but the server at {srv.url} refuses it (HTTP 400: Server "
                       "is pinned to 'served'; requested 'other'.); set served_model_name (or model for kind 'openai') "
                       "to the name it serves")
    assert code_line.startswith(f"llmserve load: the run expects model 'other' but the server at {srv.url} refuses it "
                                "(HTTP 400: Server is pinned to 'served'")


def _cli_error(argv: list[str]) -> str:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli_main(argv) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_the_cli_refuses_a_url_that_is_not_an_openai_server_before_any_load():
    with _StandIn(lambda m, p, b: _json(404, {"detail": "Not Found"})) as srv:
        line = _cli_error(["load", "--url", srv.url, "--model", "m", "--output-len", "2"])
    assert line.startswith(f"llmserve load: the run: the server at {srv.url} is not an OpenAI-compatible server")


def test_the_truth_server_offers_everything_and_overrides_replace_probed_facts():
    with TruthServer(Script(ttft_ms=1, itl_ms=1)) as srv:
        caps = probe_url(srv.url, "truth-model")
        forced = probe_url(srv.url, "truth-model", overrides={"token_id_prompts": False, "ignore_eos": False,
                                                               "min_tokens": False})
    assert (caps.token_id_prompts, caps.ignore_eos, caps.usage, caps.stream_done, caps.matched_work) == (
        True, True, True, True, "forced")
    assert caps.metrics is False and caps.models == ("truth-model",)
    assert (forced.token_id_prompts, forced.matched_work) == (False, "verified")
    assert forced.overridden == ("ignore_eos", "min_tokens", "token_id_prompts")
    assert "overridden: ignore_eos, min_tokens, token_id_prompts" in forced.describe()


def test_without_ignore_eos_a_response_that_stops_early_makes_the_run_invalid_saying_verified_not_forced():
    caps = Capabilities(ignore_eos=False, min_tokens=False, token_id_prompts=True)
    with TruthServer(Script(ttft_ms=1, itl_ms=1, tokens=3)) as srv:  # every response stops after 3 tokens
        fitted = fit_load(LoadSpec(concurrency=1, requests=2, warmup=0, output_len=5), caps)
        assert not fitted.spec.ignore_eos and "ignore_eos" not in (fitted.spec.extra_body or {})
        result = fitted.check(run_load(srv.url, "truth-model", fitted.spec))
    assert not result.valid
    assert any("did not decode exactly output_len=5 tokens" in r and "matched work: verified, not forced" in r
               for r in result.invalid_reasons)
    assert result.work["matched_work"] == "verified" and result.to_dict()["work"]["endpoint"] == "completions"


def test_an_explicit_endpoint_the_server_lacks_fails_with_the_probes_reason():
    caps = Capabilities(chat=False, notes=("chat: POST /v1/chat/completions answered HTTP 404: Not Found",))
    with pytest.raises(ValueError, match=r"endpoint='chat': the server has no chat endpoint \(chat = false \(probed "
                                         r"at start-up; POST /v1/chat/completions answered HTTP 404: Not Found\)\)"):
        fit_load(LoadSpec(endpoint="chat"), caps, explicit={"endpoint"})
    assert fit_load(LoadSpec(), Capabilities(completions=False)).spec.endpoint == "chat"


def test_only_min_tokens_accepted_forces_the_work_with_it_alone():
    fitted = fit_load(LoadSpec(output_len=7), Capabilities(ignore_eos=False))
    assert fitted.matched_work == "forced" and fitted.forced_fields == ("min_tokens",)
    assert fitted.spec.extra_body == {"min_tokens": 7} and not fitted.spec.ignore_eos


@pytest.mark.parametrize(("text", "expected"), [
    ("# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0.0\n", True),
    ('trtllm_kv_cache_utilization{model_name="x"} 0.0\n', True),   # trtllm-serve /prometheus/metrics: no TYPE lines
    ('[{"iter": 1, "numActiveRequests": 0}]', False),             # trtllm-serve /metrics: iteration stats as JSON
    ("<html><body>Not Found</body></html>", False),
    ("", False),
])
def test_prometheus_text_is_told_from_json_and_html(text, expected):
    from pytest_llmserve.servers.capability_probe import is_prometheus_text

    assert is_prometheus_text(text) is expected


def test_connections_warm_on_v1_models_unless_the_probe_found_it_broken():
    from pytest_llmserve.servers.capabilities import Capabilities

    assert Capabilities(models=("m",)).warm_path == "/v1/models"
    assert Capabilities(models=None, readiness="/health").warm_path == "/health"
    assert Capabilities(models=None, readiness="completion").warm_path == "/health"
