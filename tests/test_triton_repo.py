"""Contract tests for the Triton backend: model-repository generation and the tritonserver command line.

Real: the config.pbtxt structure and placeholder names of tensorrtllm_backend's
inflight_batcher_llm templates (abridged copies written in that format, tests/data/triton),
tools/fill_template.py's substitution semantics, and tritonserver's flags as
launch_triton_server.py passes them (tests/data/engines/cli_flags.json). Nothing here starts
tritonserver; tests/gpu/ does that on a GPU runner.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_llmserve.settings.config import Target
from pytest_llmserve.engines import EngineHandle, read_engine_config
from pytest_llmserve.servers.base import ServerStartError
from pytest_llmserve.servers.triton import TritonBackend, tritonserver_argv
from pytest_llmserve.servers.triton_repo import (
    TritonRepoError,
    fill_template,
    format_substitutions,
    generate_repository,
    parse_pbtxt,
    parse_substitutions,
    placeholders,
)

DATA = Path(__file__).parent / "data"
TEMPLATES = DATA / "triton" / "inflight_batcher_llm"
ENGINE = DATA / "engines" / "llama_bf16_tp1"
TRITON_FLAGS = set(json.loads((DATA / "engines" / "cli_flags.json").read_text())["tritonserver"]["flags"])


@pytest.fixture
def tokenizer(tmp_path) -> Path:
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text("{}")
    (tok / "tokenizer.json").write_text("{}")
    return tok


def _repo(tmp_path, tokenizer, **kw):
    return generate_repository(TEMPLATES, tmp_path / "repo", engine_dir=ENGINE, tokenizer_dir=tokenizer,
                               engine=read_engine_config(ENGINE), **kw)


def test_generated_repository_is_a_decoupled_ensemble_sized_from_the_engine(tmp_path, tokenizer):
    repo = _repo(tmp_path, tokenizer, ensemble_name="tiny")
    trt = parse_pbtxt(repo.config_path("tensorrt_llm").read_text())
    assert trt["backend"] == "tensorrtllm" and trt["max_batch_size"] == 8
    assert trt["model_transaction_policy"] == {"decoupled": True}
    params = {p["key"]: p["value"]["string_value"] for p in trt["parameters"]}
    assert params["gpt_model_path"] == str(ENGINE) and params["gpt_model_type"] == "inflight_fused_batching"
    assert params["kv_cache_free_gpu_mem_fraction"] == "${kv_cache_free_gpu_mem_fraction}"  # unset: backend default
    ens = parse_pbtxt(repo.config_path("ensemble").read_text())
    assert ens["name"] == "tiny" and (tmp_path / "repo" / "tiny" / "1").is_dir()
    assert [s["model_name"] for s in ens["ensemble_scheduling"]["step"]] == ["preprocessing", "tensorrt_llm", "postprocessing"]
    assert {"text_input", "max_tokens", "min_tokens", "end_id", "stream"} <= set(repo.ensemble_inputs)
    pre = parse_pbtxt(repo.config_path("preprocessing").read_text())
    assert {p["key"]: p["value"]["string_value"] for p in pre["parameters"]}["tokenizer_dir"] == str(tokenizer)
    assert (tmp_path / "repo" / "preprocessing" / "1" / "model.py").is_file()


def test_fill_values_override_defaults_and_are_reproducible_with_fill_template(tmp_path, tokenizer):
    repo = _repo(tmp_path, tokenizer, decoupled=False,
                 overrides={"kv_cache_free_gpu_mem_fraction": 0.5, "enable_kv_cache_reuse": True})
    trt = parse_pbtxt(repo.config_path("tensorrt_llm").read_text())
    params = {p["key"]: p["value"]["string_value"] for p in trt["parameters"]}
    assert (params["kv_cache_free_gpu_mem_fraction"], params["enable_kv_cache_reuse"]) == ("0.5", "true")
    assert trt["model_transaction_policy"] == {"decoupled": False}
    command = next(c for c in repo.fill_commands if "tensorrt_llm/config.pbtxt" in c)
    subs = parse_substitutions(command.split(" ", 4)[4])
    template = (TEMPLATES / "tensorrt_llm" / "config.pbtxt").read_text()
    assert set(subs) <= placeholders(template)  # fill_template.py asserts every key exists in the file
    assert fill_template(template, subs) == repo.config_path("tensorrt_llm").read_text()


def test_placeholder_outside_a_parameter_must_be_filled(tmp_path, tokenizer):
    broken = tmp_path / "templates"
    import shutil

    shutil.copytree(TEMPLATES, broken)
    cfg = broken / "tensorrt_llm" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("TYPE_INT32\n    dims: [ -1 ]\n    allow_ragged_batch",
                                           "${input_ids_type}\n    dims: [ -1 ]\n    allow_ragged_batch", 1))
    with pytest.raises(TritonRepoError, match=r"\$\{input_ids_type\} not filled and not inside a parameters"):
        generate_repository(broken, tmp_path / "repo", engine_dir=ENGINE, tokenizer_dir=tokenizer,
                            engine=read_engine_config(ENGINE))
    repo = generate_repository(broken, tmp_path / "repo", engine_dir=ENGINE, tokenizer_dir=tokenizer,
                               engine=read_engine_config(ENGINE), overrides={"input_ids_type": "TYPE_INT32"})
    assert "${input_ids_type}" not in repo.config_path("tensorrt_llm").read_text()


def test_wrong_template_directory_and_missing_tokenizer_say_what_to_point_at(tmp_path, tokenizer):
    with pytest.raises(TritonRepoError, match="all_models/inflight_batcher_llm"):
        generate_repository(tmp_path, tmp_path / "repo", engine_dir=ENGINE, tokenizer_dir=tokenizer,
                            engine=read_engine_config(ENGINE))
    with pytest.raises(TritonRepoError, match="no tokenizer files"):
        generate_repository(TEMPLATES, tmp_path / "repo", engine_dir=ENGINE, tokenizer_dir=tmp_path,
                            engine=read_engine_config(ENGINE))


def test_fill_template_keeps_unknown_placeholders_and_applies_its_defaults():
    text = "a: ${x}\nq: ${max_queue_size}\nd: ${max_queue_delay_microseconds}\nkeep: ${other}\n$$"
    assert fill_template(text, {"x": 1}) == "a: 1\nq: 0\nd: 0\nkeep: ${other}\n$"


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=12), min_size=1, max_size=5))
def test_substitution_argument_round_trips_with_escaping(subs):
    assert parse_substitutions(format_substitutions(subs)) == subs


def test_tritonserver_command_uses_launch_script_flags():
    argv = tritonserver_argv(["tritonserver"], Path("/repo"), 8000, 8001, 8002, shm_prefix="llmserve8000_")
    assert argv[:2] == ["tritonserver", "--model-repository=/repo"]
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"} <= set(argv)
    assert {a.split("=", 1)[0] for a in argv[1:]} <= TRITON_FLAGS
    assert "--backend-config=python,shm-region-prefix-name=llmserve8000_" in argv


def test_multi_gpu_engine_runs_one_mpi_rank_per_gpu_with_only_rank0_loading_everything():
    argv = tritonserver_argv(["tritonserver"], Path("/r"), 1, 2, 3, world_size=2)
    assert argv[:2] == ["mpirun", "--allow-run-as-root"]
    ranks = " ".join(argv[2:]).split(" : ")
    assert len(ranks) == 2 and "--load-model=tensorrt_llm" not in ranks[0]
    assert "--model-control-mode=explicit" in ranks[1] and "--load-model=tensorrt_llm" in ranks[1]


def test_triton_plan_generates_the_repository_and_three_distinct_ports(tmp_path, tokenizer):
    target = Target(name="tiny-triton", kind="triton", model=str(tokenizer), engine={"max_batch_size": 8},
                    options={"templates": str(TEMPLATES), "fill": {"kv_cache_free_gpu_mem_fraction": 0.7}})
    seen = []

    def engine_fn(spec):
        seen.append(spec)
        return EngineHandle(path=ENGINE, config=read_engine_config(ENGINE), fingerprint="f", built=False)

    plan = TritonBackend(engine_fn=engine_fn).plan(target, 18000, tmp_path)
    ep = plan.endpoints
    ports = {18000, int(ep.grpc_url.rsplit(":", 1)[1]), int(ep.metrics_url.split(":")[2].split("/")[0])}
    assert len(ports) == 3 and ep.model == "tiny-triton" and plan.metrics_url == ep.metrics_url
    assert seen[0].backend == "tensorrt" and seen[0].max_batch_size == 8
    assert (tmp_path / "model_repository" / "tiny-triton" / "config.pbtxt").is_file()
    assert [p.name for p in plan.probes] == ["GET /v2/health/ready + /v2/models/tiny-triton/ready"]
    assert any("kv_cache_free_gpu_mem_fraction:0.7" in text for text in plan.files.values())


def test_suite_options_are_not_triton_options_and_an_unknown_key_still_is_refused(tmp_path, tokenizer):
    engine = lambda s: EngineHandle(ENGINE, read_engine_config(ENGINE), None, False)  # noqa: E731
    suites = {"accuracy_reference": "bf16", "equivalence": {"top_k": 5}, "precision": {"dtype": "bfloat16"}}
    target = Target(name="tiny-triton", kind="triton", model=str(tokenizer), engine={"max_batch_size": 8},
                    options={"templates": str(TEMPLATES), **suites})
    TritonBackend(engine_fn=engine).plan(target, 18100, tmp_path / "a")  # README's own example starts
    typo = Target(name="t2", kind="triton", model=str(tokenizer), options={"templates": str(TEMPLATES), "decoupeld": 1})
    with pytest.raises(ServerStartError, match=r"unknown triton options \['decoupeld'\]"):
        TritonBackend(engine_fn=engine).plan(typo, 18200, tmp_path / "b")


def test_triton_plan_without_templates_says_where_to_get_them(tmp_path, tokenizer, monkeypatch):
    monkeypatch.delenv("LLMSERVE_TRITON_TEMPLATES", raising=False)
    target = Target(name="t", kind="triton", model=str(tokenizer))
    backend = TritonBackend(engine_fn=lambda s: EngineHandle(ENGINE, read_engine_config(ENGINE), None, False))
    with pytest.raises(ServerStartError, match="inflight_batcher_llm"):
        backend.plan(target, 1, tmp_path)


def test_triton_bind_failures_are_port_collisions():
    backend = TritonBackend()
    assert backend.is_port_collision("E1122 failed to start GRPC service: Socket '0.0.0.0:8001' already in use")
    assert backend.is_port_collision("failed to start HTTP service: Unavailable - Socket '0.0.0.0:8000' already in use")
    assert not backend.is_port_collision("failed to load 'tensorrt_llm' version 1: Internal: unexpected error")
