"""precision.py: what precision a target runs, from vLLM logs, TensorRT-LLM engines and ModelOpt configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_llmserve.settings.config import Target
from pytest_llmserve.evidence.precision import (
    PrecisionInfo,
    PrecisionUnknown,
    from_engine_config,
    from_model_dir,
    from_vllm_log,
    normalize_algo,
    normalize_dtype,
    precision_of,
)

LOGS = Path(__file__).parent / "data" / "logs"
REAL_CPU_LOG = LOGS / "vllm_cpu_0.32.0.log"  # a real CPU vLLM 0.32.0 start-up log (kv_cache_dtype=auto)


def _real_dump_line() -> str:
    return next(line for line in REAL_CPU_LOG.read_text().splitlines() if "Initializing a V1 LLM engine" in line)


def _with(line: str, **fields: str) -> str:
    """The real dump line with some `field=value` pairs substituted (as the GPU transcripts are built)."""
    for name, value in fields.items():
        line, count = re.subn(rf"(?<![\w.]){name}=[\w.\-]+", f"{name}={value}", line)
        assert count == 1, name
    return line


def test_real_cpu_vllm_log_reads_bfloat16_without_quantization():
    info = from_vllm_log(REAL_CPU_LOG.read_text())
    assert (info.dtype, info.quant_algo, info.kv_cache_quant_algo) == ("bfloat16", None, None)
    assert info.source == "vllm-log"
    assert "v0.32.0" in info.evidence and "kv_cache_dtype=auto" in info.evidence
    assert info.key() == "bfloat16|none|none"


def test_fp8_kv_cache_in_the_dump_becomes_the_kv_quant_algo():
    info = from_vllm_log(_with(_real_dump_line(), kv_cache_dtype="fp8"))
    assert info.kv_cache_quant_algo == "fp8" and info.key() == "bfloat16|none|fp8"


@given(
    dtype=st.sampled_from(["torch.bfloat16", "torch.float16", "torch.float32"]),
    quant=st.sampled_from(["None", "fp8", "awq", "gptq_marlin", "compressed-tensors"]),
    kv=st.sampled_from(["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16"]),
)
def test_each_field_is_read_from_its_own_key_whatever_the_values(dtype, quant, kv):
    info = from_vllm_log("noise dtype=float64\n" + _with(_real_dump_line(), dtype=dtype, quantization=quant, kv_cache_dtype=kv))
    assert info.dtype == dtype.removeprefix("torch.")
    assert info.quant_algo == (None if quant == "None" else quant)
    assert info.kv_cache_quant_algo == {"auto": None, "bfloat16": None, "fp8_e4m3": "fp8"}.get(kv, kv)


def test_the_last_engine_dump_wins_when_a_log_holds_several():
    line = _real_dump_line()
    info = from_vllm_log(line + "\n" + _with(line, kv_cache_dtype="fp8_e5m2") + "\n")
    assert info.kv_cache_quant_algo == "fp8_e5m2"


def test_log_without_a_config_dump_says_what_to_check():
    with pytest.raises(PrecisionUnknown, match="VLLM_LOGGING_LEVEL"):
        from_vllm_log("INFO starting server\n")


def test_modelopt_checkpoint_in_vllm_names_its_algorithm(tmp_path):
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8"}}))
    info = from_vllm_log(_with(_real_dump_line(), quantization="modelopt_fp4"), tmp_path)
    assert info.quant_algo == "nvfp4" and "hf_quant_config.json quant_algo=NVFP4" in info.evidence


def test_trtllm_engine_config_reads_pretrained_config_quantization():
    info = from_engine_config(json.loads((LOGS / "trt_engine_config.json").read_text()))
    assert info == PrecisionInfo("bfloat16", "fp8", "fp8", "trtllm-engine", info.evidence)
    assert "quant_algo=FP8" in info.evidence


FLAGS = {"int4": 1, "int8w": 2, "act": 4, "per_group": 32, "int8_kv": 64, "fp8_kv": 128, "fp8_qdq": 256}


@given(st.sets(st.sampled_from(sorted(FLAGS))))
def test_pre_09_quant_mode_bits_decode_to_algorithms(flags):
    mode = sum(FLAGS[f] for f in flags)
    info = from_engine_config({"builder_config": {"precision": "float16", "quant_mode": mode}})
    assert info.source == "trtllm-engine-pre0.9" and info.dtype == "float16"
    expected_kv = "fp8" if "fp8_kv" in flags else ("int8" if "int8_kv" in flags else None)
    assert info.kv_cache_quant_algo == expected_kv
    if "fp8_qdq" in flags:
        assert info.quant_algo == "fp8"
    elif not flags & {"int4", "int8w"}:
        assert info.quant_algo is None
    else:
        assert info.quant_algo is not None and info.quant_algo.startswith("w")


def test_engine_dir_wins_over_modelopt_file_and_hf_dir_falls_back_to_modelopt(tmp_path):
    engine, ckpt = tmp_path / "engine", tmp_path / "ckpt"
    engine.mkdir(), ckpt.mkdir()
    (engine / "config.json").write_text(json.dumps({"pretrained_config": {"dtype": "float16", "quantization": {}}}))
    (engine / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "FP8"}}))
    assert from_model_dir(engine).key() == "float16|none|none"
    (ckpt / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16"}))
    (ckpt / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": None}}))
    info = from_model_dir(ckpt)
    assert (info.key(), info.source) == ("bfloat16|fp8|none", "modelopt")


def test_unreadable_target_names_the_declaration_to_add(tmp_path):
    target = Target(name="ext", kind="openai", url="http://x", model="m")
    with pytest.raises(PrecisionUnknown, match=r"options = \{ precision = "):
        precision_of(target, "")
    declared = Target(name="ext", kind="openai", url="http://x", model="m",
                      options={"precision": {"dtype": "bf16", "kv_cache_quant_algo": "FP8"}})
    info = precision_of(declared, "")
    assert (info.key(), info.source) == ("bfloat16|none|fp8", "declared")


def test_vllm_target_prefers_its_log_over_a_declaration():
    target = Target(name="v", kind="vllm", model="/nonexistent", options={"precision": {"dtype": "float32"}})
    info = precision_of(target, _with(_real_dump_line(), kv_cache_dtype="fp8"))
    assert info.source == "vllm-log" and info.key() == "bfloat16|none|fp8"


@pytest.mark.parametrize("raw, expected", [("BF16", "bfloat16"), ("torch.float16", "float16"), ("half", "float16"),
                                           ("float32", "float32"), ("FP8", "fp8")])
def test_dtype_names_normalise(raw, expected):
    assert normalize_dtype(raw) == expected


@pytest.mark.parametrize("raw, expected", [(None, None), ("None", None), ("auto", None), ("FP8", "fp8"),
                                           ("fp8_e4m3", "fp8"), ("W4A16_AWQ", "w4a16_awq")])
def test_quantization_names_normalise_and_no_quantization_is_none(raw, expected):
    assert normalize_algo(raw) == expected
