"""CUDA-graph detectors: verdicts and quoted evidence from real and format-string transcripts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pytest_llmserve.checks.graph_requirement import CudaGraphRequirement, assert_cuda_graphs, parse_batch_sizes
from pytest_llmserve.checks.graphs import GraphVerdict, format_sizes
from pytest_llmserve.checks.log_evidence import locate_key, pbtxt_parameters, read_log
from pytest_llmserve.checks.triton_evidence import detect_triton
from pytest_llmserve.checks.trtllm_evidence import detect_trtllm
from pytest_llmserve.checks.vllm_evidence import detect_vllm
from pytest_llmserve.settings.config import Target
from pytest_llmserve.servers.base import ServerHandle
from pytest_llmserve.servers.registry import backend_for

DATA = Path(__file__).parent / "data" / "logs"
CPU_LOG = DATA / "vllm_cpu_0.32.0.log"


def line_no_of(path: Path, needle: str) -> int:
    """1-based line of the first occurrence, counted on raw bytes as an editor would."""
    for i, raw in enumerate(path.read_bytes().split(b"\n")):
        if needle.encode() in raw:
            return i + 1
    raise AssertionError(f"{needle!r} not in {path}")


def vllm(name: str, **kw) -> GraphVerdict:
    return detect_vllm(read_log(DATA / name), source=name, **kw)


def trtllm(name: str, **kw) -> GraphVerdict:
    text = (DATA / f"{name}.yaml").read_text()
    return detect_trtllm(
        yaml.safe_load(text),
        read_log(DATA / f"{name}.log"),
        options_text=text,
        options_source=f"{name}.yaml",
        log_source=f"{name}.log",
        **kw,
    )


# ------------------------------------------------------------------------ the real CPU vLLM log
def test_real_cpu_vllm_log_reports_graphs_off_quoting_the_cudagraph_mode_line():
    v = vllm("vllm_cpu_0.32.0.log")
    dump_line = line_no_of(CPU_LOG, "Initializing a V1 LLM engine (v0.32.0)")
    assert v.state == "off" and v.mode == "NONE" and v.captured_batch_sizes == ()
    mode_ev = [e for e in v.evidence if "'cudagraph_mode': <CUDAGraphMode.NONE: 0>" in e.text]
    assert mode_ev and mode_ev[0].line_no == dump_line and mode_ev[0].source == "vllm_cpu_0.32.0.log"
    assert any("enforce_eager=False" in e.text and e.line_no == dump_line for e in v.evidence)
    assert any("device_config=cpu" in n for n in v.notes)


def test_gpu_requirement_against_the_cpu_log_fails_and_quotes_the_evidence_line():
    v = vllm("vllm_cpu_0.32.0.log")
    dump_line = line_no_of(CPU_LOG, "Initializing a V1 LLM engine")
    with pytest.raises(AssertionError) as err:
        assert_cuda_graphs(v, require="on", batch_sizes="1..64")
    msg = str(err.value)
    assert "required 'on', found 'off'" in msg
    assert f"vllm_cpu_0.32.0.log:{dump_line}:" in msg and "<CUDAGraphMode.NONE: 0>" in msg
    assert "batch sizes without a captured graph: [1..64]" in msg
    assert_cuda_graphs(v, require="off")  # the same evidence satisfies an eager-only target


def test_read_log_keeps_editor_line_numbers_where_read_text_shifts_them():
    kv = "KV cache size:"
    raw_line = line_no_of(CPU_LOG, kv)
    kept = [i + 1 for i, line in enumerate(read_log(CPU_LOG).split("\n")) if kv in line]
    shifted = [i + 1 for i, line in enumerate(CPU_LOG.read_text().split("\n")) if kv in line]
    assert kept == [raw_line]
    assert shifted != kept  # tqdm's \r redraws (the shard loading bar) become extra lines


# --------------------------------------------------------------------- vLLM GPU transcripts
@pytest.mark.parametrize(
    "name, state, mode",
    [
        ("vllm_gpu_on.log", "on", "FULL_AND_PIECEWISE"),
        ("vllm_gpu_piecewise.log", "partial", "PIECEWISE"),
        ("vllm_gpu_downgraded.log", "downgraded", "PIECEWISE"),
        ("vllm_gpu_eager.log", "off", "NONE"),
    ],
)
def test_vllm_transcripts_give_their_verdict(name, state, mode):
    v = vllm(name)
    assert (v.state, v.mode) == (state, mode)
    assert all(e.source == name and e.line_no > 0 for e in v.evidence)


def test_vllm_on_reads_capture_bars_sizes_and_replay_table():
    v = vllm("vllm_gpu_on.log")
    assert len(v.captured_batch_sizes) == 51 and max(v.captured_batch_sizes) == 512 and v.padded
    assert dict(v.replay_counts) == {"FULL": 1840 + 95, "PIECEWISE": 12, "NONE": 2}
    bars = [e for e in v.evidence if e.text.startswith("Capturing CUDA graphs")]
    assert [b.text.split(":")[0] for b in bars] == [
        "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE)",
        "Capturing CUDA graphs (decode, FULL)",
    ]
    assert all("100%" in b.text for b in bars)  # the last tqdm redraw, not the 0% one
    assert v.covers(300) and not v.covers(513)


def test_vllm_batch_above_the_largest_capture_size_makes_graphs_partial():
    v = vllm("vllm_gpu_on.log", max_batch_size=600)
    assert v.state == "partial"
    assert any("max batch size 600" in n for n in v.notes)


def test_vllm_downgrade_quotes_the_warning_line():
    name = "vllm_gpu_downgraded.log"
    v = vllm(name)
    warn = [e for e in v.evidence if "setting cudagraph_mode=PIECEWISE" in e.text]
    assert warn and warn[0].line_no == line_no_of(DATA / name, "setting cudagraph_mode=PIECEWISE")
    with pytest.raises(AssertionError, match="found 'downgraded'"):
        assert_cuda_graphs(v)
    assert_cuda_graphs(v, require="any")


def test_vllm_replays_only_eager_steps_is_not_on():
    text = read_log(DATA / "vllm_gpu_on.log")
    eager_only = re.sub(r"\| (FULL|PIECEWISE) +\|", "| NONE         |", text)
    v = detect_vllm(eager_only)
    assert v.state == "partial" and set(dict(v.replay_counts)) == {"NONE"}


def test_vllm_mode_requested_but_no_capture_logged_is_unknown():
    text = read_log(DATA / "vllm_gpu_on.log").split("Capturing CUDA graphs")[0]
    assert detect_vllm(text).state == "unknown"


def test_a_log_that_is_not_vllm_is_unknown_not_off():
    v = detect_vllm("hello\nworld\n")
    assert v.state == "unknown" and v.evidence == ()


# ------------------------------------------------------------------------------ version drift
DUMP_JSON_STYLE = (
    "INFO 03-02 10:00:00 [core.py:69] Initializing a V1 LLM engine (v0.10.1.1) with config: model='m', "
    'enforce_eager = False, device_config=cuda, compilation_config={"level":3,"cudagraph_mode":[2,1],'
    '"use_cudagraph":true,"cudagraph_capture_sizes":[512,504,8,4,2,1],"max_capture_size":512}'
)


@pytest.mark.parametrize(
    "lines, state, mode",
    [
        (
            [
                DUMP_JSON_STYLE,
                "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|█| 67/67 [00:05<00:00]",
                "Capturing CUDA graphs (decode, FULL): 100%|█| 35/35 [00:03<00:00]",
                "INFO [gpu_model_runner.py:3480] Graph capturing finished in 8 secs, took 0.31 GiB",
            ],
            "on",
            "FULL_AND_PIECEWISE",
        ),
        # V2 model runner wording, ANSI colour, CRLF endings
        (
            [
                "\x1b[32mINFO\x1b[0m Initializing a V1 LLM engine (v0.40.1rc2) with config: enforce_eager=False, "
                "compilation_config={'cudagraph_mode': <CUDAGraphMode.FULL_AND_PIECEWISE: (2, 1)>, 'cudagraph_capture_sizes': [1, 2, 4]}\r",
                "(EngineCore_DP0 pid=7) Capturing CUDA graphs (mixed, PIECEWISE): 100%|██| 3/3\r",
                "(EngineCore_DP0 pid=7) Capturing CUDA graphs (decode, FULL): 100%|██| 3/3\r",
                "\x1b[32mINFO\x1b[0m Graph capturing finished in 2 secs, took 0.05 GiB\r",
            ],
            "on",
            "FULL_AND_PIECEWISE",
        ),
        # older eager warning wording
        (
            [
                "Initializing a V1 LLM engine (v0.9.0) with config: enforce_eager=True",
                "WARNING [config.py:4] Enforce eager set, overriding optimization level to -O0",
            ],
            "off",
            "NONE",
        ),
        # a downgrade worded as an override
        (
            [
                "Initializing a V1 LLM engine (v0.33.0) with config: enforce_eager=False, compilation_config={'cudagraph_mode': <CUDAGraphMode.FULL_AND_PIECEWISE: (2, 1)>}",
                "WARNING [vllm.py:1884] Pooling models do not support full cudagraphs. Overriding cudagraph_mode to PIECEWISE.",
                "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|█| 5/5",
            ],
            "downgraded",
            "PIECEWISE",
        ),
    ],
)
def test_vllm_patterns_tolerate_version_drift(lines, state, mode):
    v = detect_vllm("\n".join(lines))
    assert (v.state, v.mode) == (state, mode)


def test_vllm_json_style_dump_yields_capture_sizes():
    v = detect_vllm(DUMP_JSON_STYLE + "\nGraph capturing finished in 8 secs")
    assert v.captured_batch_sizes == (1, 2, 4, 8, 504, 512)


@pytest.mark.parametrize("full, state, mode", [("true", "on", "FULL"), ("false", "partial", "PIECEWISE")])
def test_vllm_0_10_full_cuda_graph_flag_is_read_as_full_graphs(full, state, mode):
    # vLLM <= 0.10 has no cudagraph_mode: use_cudagraph + full_cuda_graph say piecewise or full
    dump = ("INFO 07-01 10:00:00 [core.py:69] Initializing a V1 LLM engine (v0.10.0) with config: model='m', "
            "enforce_eager=False, device_config=cuda, compilation_config={\"level\":3,\"use_cudagraph\":true,"
            f"\"full_cuda_graph\":{full},\"cudagraph_capture_sizes\":[8,4,2,1],\"max_capture_size\":8}}")
    v = detect_vllm(dump + "\nINFO [gpu_model_runner.py:2000] Graph capturing finished in 3 secs, took 0.2 GiB")
    assert (v.state, v.mode) == (state, mode)
    assert any("full_cuda_graph" in e.text for e in v.evidence)


# ------------------------------------------------------------------------------- trtllm-serve
def test_trtllm_on_transcript_uses_the_final_warmup_round():
    v = trtllm("trtllm_on")
    assert v.state == "on" and v.padded
    assert v.captured_batch_sizes == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)
    creates = [e for e in v.evidence if "Creating CUDA graph instances for 11 batch sizes." in e.text]
    assert len(creates) == 1  # the warmup ran twice; only the last round counts
    all_creates = [
        i + 1 for i, ln in enumerate(read_log(DATA / "trtllm_on.log").split("\n")) if "Creating CUDA graph" in ln
    ]
    assert len(all_creates) == 2 and creates[0].line_no == all_creates[-1]
    warmups = [e for e in v.evidence if "CUDA graph warmup" in e.text]
    assert len(warmups) == 11 and all(e.line_no > all_creates[-1] for e in warmups)
    assert any(e.source == "trtllm_on.yaml" and e.line_no == 2 for e in v.evidence)


def test_trtllm_null_config_is_off_quoting_the_yaml_line():
    v = trtllm("trtllm_off")
    assert v.state == "off"
    assert v.evidence[0].text == "cuda_graph_config: null" and v.evidence[0].line_no == 2


def test_trtllm_max_batch_size_missing_from_graph_sizes_is_partial():
    v = trtllm("trtllm_maxbatch_missing")
    assert v.state == "partial" and v.captured_batch_sizes == (1, 2, 4, 8, 16, 32) and not v.padded
    assert any("max batch size 64" in n for n in v.notes)
    assert v.uncovered(range(1, 9)) == (3, 5, 6, 7)  # without padding only the listed sizes run on graphs
    with pytest.raises(AssertionError) as err:
        assert_cuda_graphs(v, require="any", batch_sizes="1..64")
    assert "33..64" in str(err.value) and "trtllm_maxbatch_missing.log:" in str(err.value)


def test_trtllm_padding_covers_sizes_between_captured_ones():
    v = trtllm("trtllm_on")
    assert v.covers(37) and not v.covers(65)
    assert_cuda_graphs(v, batch_sizes="1..64")


@pytest.mark.parametrize(
    "wording",
    [
        "Run generation only CUDA graph warmup for batch size={bs}",
        "Run generation only CUDA graph warmup for batch size={bs}, draft_len=0",
        "Run generation-only CUDA graph warmup for batch size={bs}, draft_len=0, max_seq_len=131072",
        "Run generation-only CUDA graph warmup for batch size = {bs}, draft_len = 3",
    ],
)
def test_trtllm_warmup_wording_drift_is_tolerated(wording):
    log = "\n".join(
        ["[TRT-LLM] [I] Creating CUDA graph instances for 3 batch sizes."]
        + [f"[11/25/2026-09:21:51] [TRT-LLM] [RANK 0] [I] {wording.format(bs=bs)}" for bs in (4, 2, 1)]
    )
    v = detect_trtllm({}, log)
    assert v.state == "on" and v.captured_batch_sizes == (1, 2, 4)


@given(
    st.lists(st.integers(1, 4096), min_size=1, max_size=20, unique=True),
    st.sampled_from(["", "[TRT-LLM] [I] ", "[RANK 3] [I] ", "\x1b[1m[W]\x1b[0m  "]),
)
def test_trtllm_warmup_sizes_survive_any_prefix(sizes, prefix):
    log = f"{prefix}Creating CUDA graph instances for {len(sizes)} batch sizes.\n" + "\n".join(
        f"{prefix}Run generation-only CUDA graph warmup for batch size={s}, draft_len=0" for s in sizes
    )
    assert detect_trtllm(None, log).captured_batch_sizes == tuple(sorted(sizes))


def test_trtllm_default_on_but_never_created_is_downgraded():
    log = read_log(DATA / "trtllm_off.log")
    v = detect_trtllm({}, log)  # no cuda_graph_config: on by default, yet the log shows no graphs
    assert v.state == "downgraded"
    assert "enables CUDA graphs by default" in v.evidence[0].text


def test_trtllm_without_a_log_is_unknown_unless_configured_off():
    assert detect_trtllm({"cuda_graph_config": {"enable_padding": True}}).state == "unknown"
    assert detect_trtllm({"cuda_graph_config": None}).state == "off"
    assert detect_trtllm({"cuda_graph_config": False}).state == "off"  # TOML cannot say null
    assert detect_trtllm({"use_cuda_graph": False}).state == "off"  # pre-1.0 option name


def test_trtllm_tensorrt_backend_reads_the_runtime_perf_knob():
    on = detect_trtllm(
        {"extended_runtime_perf_knob_config": {"cuda_graph_mode": True, "cuda_graph_cache_size": 32}},
        backend="tensorrt",
    )
    assert on.state == "on" and on.on_demand and on.covers(57)
    tiny = detect_trtllm({"extended_runtime_perf_knob_config": {"cuda_graph_mode": True}}, backend="tensorrt")
    assert tiny.state == "partial"
    assert detect_trtllm({}, backend="tensorrt").state == "off"


# ------------------------------------------------------------------------------------- Triton
def test_triton_transcripts_give_their_verdict():
    on = detect_triton((DATA / "triton_on" / "config.pbtxt").read_text(), read_log(DATA / "triton_on.log"))
    off = detect_triton(
        (DATA / "triton_off" / "config.pbtxt").read_text(),
        read_log(DATA / "triton_off.log"),
        log_source="triton_off.log",
    )
    assert on.state == "on" and on.on_demand
    assert off.state == "off"
    line = line_no_of(DATA / "triton_off.log", "cuda_graph_mode is not specified")
    assert any(e.source == "triton_off.log" and e.line_no == line for e in off.evidence)


def test_triton_parameter_line_numbers_match_the_file():
    path = DATA / "triton_on" / "config.pbtxt"
    params = pbtxt_parameters(path.read_text())
    assert params["cuda_graph_mode"] == ("true", line_no_of(path, 'key: "cuda_graph_mode"'))


PBTXT = """backend: "tensorrtllm"
parameters { key: "cuda_graph_mode" value { string_value: "VALUE" } }
# parameters: { key: "cuda_graph_mode" value: { string_value: "true" } }  (a comment must not count)
parameters: {
  key: "cuda_graph_cache_size"  # how many graphs to keep
  value: { string_value: "48" }
}
"""


@pytest.mark.parametrize(
    "value, state",
    [
        ("true", "on"),
        ("TRUE", "on"),
        ("1", "on"),
        ("false", "off"),
        ("${cuda_graph_mode}", "off"),
        ("enabled", "downgraded"),
    ],
)
def test_triton_bool_parsing_matches_the_backend(value, state):
    assert detect_triton(PBTXT.replace("VALUE", value)).state == state


def test_triton_config_true_but_log_says_unspecified_is_downgraded():
    log = "[TensorRT-LLM][WARNING] cuda_graph_mode is not specified, will be set to false\n"
    v = detect_triton(PBTXT.replace("VALUE", "true"), log)
    assert v.state == "downgraded" and v.evidence[-1].line_no == 1


# --------------------------------------------------------------------------- requirement
def test_requirement_from_config_parses_ranges_and_lists():
    req = CudaGraphRequirement.from_config({"require": "on", "batch_sizes": "1..64"})
    assert req.batch_sizes == tuple(range(1, 65))
    assert CudaGraphRequirement.from_config({"batch_sizes": [1, 2, "4..6", 128]}).batch_sizes == (1, 2, 4, 5, 6, 128)
    assert CudaGraphRequirement.from_config(None) == CudaGraphRequirement("on", ())


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"require": "maybe"}, "'maybe' is not one of"),
        ({"batch_sizes": "64..1"}, "positive and ascending"),
        ({"batch_sizes": "1..n"}, "not an int or a range"),
        ({"batch_sizes": [True]}, "not an int or a range"),
        ({"batch_sizes": []}, "names no batch size"),
        ({"batch_sizes": 1.5}, "not a batch-size spec"),
        ({"sizes": "1..4"}, "unknown key(s) sizes"),
        ({"require": "off", "batch_sizes": "1..4"}, "makes no sense"),
    ],
)
def test_requirement_errors_name_the_key_and_the_fix(raw, words):
    with pytest.raises(ValueError) as err:
        CudaGraphRequirement.from_config(raw, where="targets[0].cuda_graphs")
    assert words in str(err.value) and "targets[0].cuda_graphs" in str(err.value)


@given(st.lists(st.integers(1, 300), min_size=1, max_size=40))
def test_format_sizes_round_trips_through_parse_batch_sizes(sizes):
    assert parse_batch_sizes(format_sizes(sizes)[1:-1]) == tuple(sorted(set(sizes)))


def graphs_of(kind: str, log: Path | None = None) -> GraphVerdict:
    """The CUDA-graph verdict the kind's backend reads for a server (no workdir files)."""
    target = Target("t", kind, url="http://127.0.0.1:1" if kind == "openai" else None, model="m")
    return backend_for(kind).optimisations(ServerHandle(target, "http://127.0.0.1:1", "m", log_path=log)).graphs


def test_dispatcher_covers_every_kind():
    assert graphs_of("openai").state == "unknown"
    assert graphs_of("triton").state == "unknown"
    assert graphs_of("vllm", CPU_LOG).state == "off"
    with pytest.raises(ValueError, match="no backend for kind 'sglang'"):
        backend_for("sglang")


def test_verdict_to_dict_carries_everything():
    d = vllm("vllm_gpu_on.log").to_dict()
    assert d["state"] == "on" and d["replay_counts"]["FULL"] == 1935 and d["evidence"][0]["line_no"] > 0


def test_requiring_any_graphs_rejects_a_downgrade_to_eager():
    v = detect_triton(PBTXT.replace("VALUE", "enabled"))
    assert (v.state, v.mode) == ("downgraded", "NONE")
    with pytest.raises(AssertionError, match="down to mode NONE"):
        assert_cuda_graphs(v, require="any")


def test_locate_key_follows_nested_yaml_paths():
    text = "dtype: bfloat16\nkv_cache_config:\n  # reuse\n  dtype: fp8\nother:\n  dtype: x\n"
    assert locate_key(text, "kv_cache_config.dtype") == (4, "dtype: fp8")
    assert locate_key(text, "other.dtype") == (6, "dtype: x")
    assert locate_key(text, "kv_cache_config.enable_block_reuse") == (0, "")
    assert locate_key(None, "dtype") == (0, "")
