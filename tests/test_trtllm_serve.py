"""Contract tests for the trtllm-serve backend (TensorRT-LLM cannot run here).

Real: the command line is checked against trtllm-serve's click options (tests/data/engines/
cli_flags.json, read from tensorrt_llm/commands/serve.py), the options file is read back with
PyYAML's safe_load exactly as trtllm-serve reads it, and the served-name, readiness and
port-collision rules follow openai_server.py / serve.py. Stand-in: a small HTTP server script
playing trtllm-serve (same argv, same routes and bind-error message), started by the real
lifecycle code so probes, model-name check and the port-retry loop run for real.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.settings.config import Target
from pytest_llmserve.engines import EngineHandle, read_engine_config
from pytest_llmserve.servers.base import ServerStartError
from pytest_llmserve.servers.lifecycle import start_server
from pytest_llmserve.servers.trtllm import OPTIONS_FILE, TrtllmServeBackend, to_yaml

DATA = Path(__file__).parent / "data" / "engines"
SERVE_FLAGS = set(json.loads((DATA / "cli_flags.json").read_text())["trtllm-serve"]["flags"])

STANDIN = textwrap.dedent('''
    import json, os, sys, time, yaml
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path
    argv = sys.argv[1:]
    model = argv[0]
    flags = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1, 2) if argv[i].startswith("--")}
    host, port = flags["--host"], int(flags["--port"])
    opts = yaml.safe_load(open(flags["--extra_llm_api_options"])) if "--extra_llm_api_options" in flags else {}
    record = Path(os.environ["STANDIN_RECORD"])
    record.write_text(json.dumps({"argv": argv, "options": opts}))
    once = os.environ.get("STANDIN_BIND_FAIL_ONCE")
    if once and not Path(once).exists():
        Path(once).write_text("x")
        print(f"RuntimeError: Failed to bind socket to {host}:{port}: [Errno 98] Address already in use", flush=True)
        sys.exit(1)
    served = Path(model).name if Path(model).is_dir() else model
    started = time.monotonic()
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def send(self, code, body=b"", ctype="application/json"):
            self.send_response(code); self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def do_GET(self):
            loading = time.monotonic() - started < 0.3
            if self.path == "/health":
                self.send(503 if loading else 200)
            elif self.path == "/health_generate":
                with open(record.with_suffix(".probes"), "a") as fh: fh.write("health_generate\\n")
                self.send(200, b"Generation health check OK", "text/plain")
            elif self.path == "/v1/models":
                self.send(200, json.dumps({"object": "list", "data": [{"id": served, "object": "model"}]}).encode())
            elif self.path == "/metrics":
                self.send(200, json.dumps([{"iter": 1, "numActiveRequests": 0, "numQueuedRequests": 0,
                          "kvCacheStats": {"usedNumBlocks": 0, "maxNumBlocks": 100}}]).encode())
            elif self.path == "/prometheus/metrics" and opts.get("return_perf_metrics"):
                self.send(200, b"trtllm_kv_cache_utilization{model_name=\\"x\\"} 0.0\\n", "text/plain")
            else:
                self.send(404)
        def do_POST(self):  # one token, as trtllm-serve answers the start-up capability probe
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
            chat = self.path == "/v1/chat/completions"
            choice = {"index": 0, "finish_reason": "length",
                      **({"message": {"role": "assistant", "content": " a"}} if chat else {"text": " a"})}
            if self.path not in ("/v1/completions", "/v1/chat/completions") or body.get("stream"):
                return self.send(404)
            self.send(200, json.dumps({"id": "x", "model": served, "choices": [choice],
                                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode())
    print(f"INFO:     Uvicorn running on http://{host}:{port}", flush=True)
    ThreadingHTTPServer((host, port), H).serve_forever()
''')


def _hf_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (root / "tokenizer_config.json").write_text("{}")
    return root


def _target(model: Path, **kw) -> Target:
    return Target(name=kw.pop("name", "tiny-trt"), kind="trtllm-serve", model=str(model), **kw)


def _engine(path: Path = DATA / "llama_bf16_tp1"):
    def fn(spec):
        return EngineHandle(path=spec.dir or path, config=read_engine_config(spec.dir or path), fingerprint="f", built=False)
    return fn


def test_pytorch_plan_uses_only_real_flags_and_serves_under_the_target_name(tmp_path):
    model = _hf_dir(tmp_path / "hf-model")
    target = _target(model, engine={"tp": 2, "max_batch_size": 64, "max_seq_len": 2048,
                                    "kv_cache_free_gpu_memory_fraction": 0.8}, dtype="bfloat16")
    plan = TrtllmServeBackend().plan(target, 8123, tmp_path)
    argv = plan.argv
    assert argv[0] == "trtllm-serve" and set(a for a in argv if a.startswith("--")) <= SERVE_FLAGS
    served = Path(argv[1])
    assert served.name == "tiny-trt" and served.resolve() == model.resolve()
    assert argv[argv.index("--backend") + 1] == "pytorch" and argv[argv.index("--port") + 1] == "8123"
    assert (argv[argv.index("--tp_size") + 1], argv[argv.index("--max_batch_size") + 1]) == ("2", "64")
    assert argv[argv.index("--kv_cache_free_gpu_memory_fraction") + 1] == "0.8"
    assert [p.name for p in plan.probes] == ["GET /health", "GET /health_generate"]
    assert plan.metrics_url == "http://127.0.0.1:8123/metrics"  # JSON iteration stats without perf metrics


def test_options_become_the_yaml_file_trtllm_serve_reads_back_identically(tmp_path):
    model = _hf_dir(tmp_path / "m")
    options = {"cuda_graph_config": {"enable_padding": True, "batch_sizes": [1, 2, 4, 8]},
               "kv_cache_config": {"free_gpu_memory_fraction": 1e-05, "enable_block_reuse": False},
               "return_perf_metrics": True, "enable_iter_perf_stats": True}
    plan = TrtllmServeBackend().plan(_target(model, options=options, dtype="bfloat16"), 9000, tmp_path)
    path = Path(plan.argv[plan.argv.index("--extra_llm_api_options") + 1])
    assert path == tmp_path / OPTIONS_FILE
    assert yaml.safe_load(plan.files[path]) == {**options, "dtype": "bfloat16"}
    assert plan.metrics_url.endswith("/prometheus/metrics")


def test_the_suites_option_keys_never_reach_the_yaml(tmp_path):
    suites = {"accuracy_reference": "bf16", "accuracy_tasks": ["t.jsonl"], "equivalence": {"top_k": 5},
              "precision": {"dtype": "bfloat16"}, "promotion_incumbent": "old", "equivalence_reference": "vllm"}
    options = {"cuda_graph_config": {"batch_sizes": [1, 2]}, **suites}
    plan = TrtllmServeBackend().plan(_target(_hf_dir(tmp_path / "m"), options=options), 9000, tmp_path)
    assert yaml.safe_load(next(iter(plan.files.values()))) == {"cuda_graph_config": {"batch_sizes": [1, 2]}}


def test_every_options_key_a_suite_reads_is_declared_a_suite_key():
    """Scan the plugin outside servers/ for literal option keys, so a new suite key cannot leak to a backend."""
    import re

    from pytest_llmserve.settings.option_tables import SUITE_OPTION_KEYS

    root = Path(__file__).resolve().parents[1] / "pytest_llmserve"
    found: set[str] = set()
    patterns = [r'options\.get\("([a-z_]+)"', r'_(?:option|number)\(\w+, "([a-z_]+)"',
                r'partner_target_name\(\w+, "([a-z_]+)"', r'^(?:REFERENCE_)?OPTION = "([a-z_]+)"']
    for path in root.rglob("*.py"):
        if "servers" in path.parts:
            continue
        text = path.read_text()
        for pat in patterns:
            found |= set(re.findall(pat, text, flags=re.M))
    assert {"accuracy_reference", "promotion_incumbent", "equivalence", "engine_equivalence"} <= found
    assert found <= SUITE_OPTION_KEYS, sorted(found - SUITE_OPTION_KEYS)


def test_the_string_null_disables_cuda_graphs(tmp_path):
    plan = TrtllmServeBackend().plan(_target(_hf_dir(tmp_path / "m"), options={"cuda_graph_config": "null"}), 1, tmp_path)
    assert yaml.safe_load(next(iter(plan.files.values()))) == {"cuda_graph_config": None}


def test_tensorrt_backend_serves_the_engine_with_the_checkpoint_tokenizer(tmp_path):
    model = _hf_dir(tmp_path / "hf")
    seen = []

    def engine_fn(spec):
        seen.append(spec)
        return _engine(DATA / "llama_fp8_tp2")(spec)

    target = _target(model, engine={"backend": "trt", "tp": 2, "dtype": "fp8", "max_batch_size": 64})
    plan = TrtllmServeBackend(engine_fn=engine_fn).plan(target, 8000, tmp_path)
    argv = plan.argv
    assert argv[argv.index("--backend") + 1] == "tensorrt" and argv[argv.index("--tokenizer") + 1] == str(model)
    assert Path(argv[1]).resolve() == (DATA / "llama_fp8_tp2").resolve()
    assert seen[0].quant_algo == "FP8" and seen[0].checkpoint == model
    assert set(a for a in argv if a.startswith("--")) <= SERVE_FLAGS


def test_args_may_not_override_what_the_plugin_owns(tmp_path):
    target = _target(_hf_dir(tmp_path / "m"), args=("--port", "1"))
    with pytest.raises(ServerStartError, match="must not set --port"):
        TrtllmServeBackend().plan(target, 8000, tmp_path)


def test_hub_model_needs_served_model_name_because_trtllm_serve_has_none(tmp_path):
    with pytest.raises(ServerStartError, match="set served_model_name = 'org/model'"):
        TrtllmServeBackend().plan(_target(Path("org/model")), 8000, tmp_path)
    plan = TrtllmServeBackend().plan(_target(Path("org/model"), served_model_name="org/model"), 8000, tmp_path)
    assert plan.argv[1] == "org/model"


def test_fp8_request_with_pytorch_backend_checks_the_checkpoint(tmp_path):
    target = _target(_hf_dir(tmp_path / "m"), engine={"dtype": "fp8"})
    with pytest.raises(ServerStartError, match="checkpoint declares None"):
        TrtllmServeBackend().plan(target, 8000, tmp_path)


def test_bind_failure_message_is_a_port_collision():
    backend = TrtllmServeBackend()
    assert backend.is_port_collision("RuntimeError: Failed to bind socket to localhost:8000: [Errno 98] Address already in use")
    assert not backend.is_port_collision("RuntimeError: CUDA out of memory")


_scalars = st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.text(max_size=20) | st.floats(allow_nan=False)
_keys = st.text(min_size=1, max_size=12)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
                       max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_yaml_writer_round_trips_through_pyyaml_safe_load(data):
    loaded = yaml.safe_load(to_yaml(data)) if data else {}
    assert _same(loaded or {}, data)


def _same(a, b) -> bool:
    if isinstance(b, float) and isinstance(a, float):
        return a == b or (math.isinf(a) and math.isinf(b) and (a > 0) == (b > 0))
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in b)
    if isinstance(b, list):
        return isinstance(a, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_lifecycle_starts_a_stand_in_trtllm_serve_and_retries_a_taken_port(tmp_path, monkeypatch):
    script = tmp_path / "standin_trtllm_serve.py"
    script.write_text(STANDIN)
    record = tmp_path / "record.json"
    monkeypatch.setenv("STANDIN_RECORD", str(record))
    monkeypatch.setenv("STANDIN_BIND_FAIL_ONCE", str(tmp_path / "failed-once"))
    model = _hf_dir(tmp_path / "hf-model")
    target = _target(model, launcher=(sys.executable, str(script)), startup_timeout_s=30,
                     options={"return_perf_metrics": True})
    handle = start_server(target, tmp_path / "logs")
    try:
        assert handle.alive() and handle.metrics_url.endswith("/prometheus/metrics")
        seen = json.loads(record.read_text())
        assert Path(seen["argv"][0]).name == "tiny-trt" and seen["options"] == {"return_perf_metrics": True}
        assert record.with_suffix(".probes").read_text().count("health_generate") >= 1
        logs = sorted((tmp_path / "logs").glob("tiny-trt-*.log"))
        assert len(logs) == 2 and any("Failed to bind socket" in p.read_text() for p in logs)
    finally:
        assert handle.process.terminate_tree() == []
