"""Config parsing: valid targets load; every invalid one names file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_llmserve.settings.config import ConfigError, Tolerance, find_config_file, load_config, parse_config


def _write(tmp_path: Path, text: str, name: str = "llmserve.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_targets_load_with_defaults_and_resolved_model_path(tmp_path):
    (tmp_path / "model").mkdir()
    path = _write(tmp_path, """
[[targets]]
name = "a"
kind = "vllm"
model = "./model"
args = ["--max-model-len", "512"]
slo = { ttft_p95_ms = 100 }

[[targets]]
name = "ext"
kind = "openai"
url = "http://127.0.0.1:9/"
model = "served-name"
""")
    cfg = load_config(path)
    a, ext = cfg.targets
    assert a.model == str((tmp_path / "model").resolve())
    assert a.args == ("--max-model-len", "512") and a.slo == {"ttft_p95_ms": 100.0}
    assert a.model_name == "a" and a.is_managed
    assert ext.url == "http://127.0.0.1:9" and ext.model_name == "served-name" and not ext.is_managed


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[[targets]]\nname = "a"\nkind = "vllm"\nmodel = "/x"\nflavour = 1\n', "targets[0].flavour = 1: unknown key"),
        ('[[targets]]\nname = "a"\nkind = "vllm"\nmodel = "/nonexistent/model"\n', "targets[0].model = '/nonexistent/model': path does not exist"),
        ('[[targets]]\nname = "a"\nkind = "vlm"\nmodel = "/"\n', "targets[0].kind = 'vlm': must be one of vllm, openai, trtllm-serve, triton"),
        ('[[targets]]\nname = "a"\nkind = "vllm"\nmodel = "/"\nargs = "--x"\n', "targets[0].args = '--x': must be of type list"),
        ('[[targets]]\nname = "a"\nkind = "vllm"\nmodel = "/"\n[[targets]]\nname = "a"\nkind = "vllm"\nmodel = "/"\n', "targets[1].name = 'a': duplicates an earlier target name"),
        ('[[targets]]\nname = "a"\nkind = "openai"\n', "targets[0].url = (missing): is required for kind 'openai'"),
        ('[[targets]]\nname = "a"\nkind = "vllm"\nmodel = "/"\nslo = { ttft_p95 = 1 }\n', "targets[0].slo.ttft_p95 = 1: unknown SLO key"),
        ('[[targets]]\nname = "a"\nkind = "vllm"\nmodel = "/"\nconcurrency = [0]\n', "targets[0].concurrency = [0]: must be a non-empty list"),
        ('[[targets]]\nname = "a"\nkind = "vllm"\nmodel = "/"\nstartup_timeout_s = "soon"\n', "startup_timeout_s = 'soon': must be of type int or float"),
        ('baselines_dir = 3\n', "baselines_dir = 3: must be of type str"),
        ('targets = [\n', "not valid TOML"),
    ],
)
def test_invalid_config_names_file_key_and_value(tmp_path, body, expected):
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message
    assert "\n" not in message


def test_pyproject_section_is_found_and_keys_are_prefixed(tmp_path):
    path = _write(tmp_path, '[tool.llmserve]\nhardware = 7\n', "pyproject.toml")
    assert find_config_file(tmp_path) == path
    with pytest.raises(ConfigError, match=r"tool\.llmserve\.hardware = 7"):
        load_config(path)


def test_tool_llmserve_table_in_llmserve_toml_says_to_write_keys_at_top_level(tmp_path):
    path = _write(tmp_path, '[[tool.llmserve.targets]]\nname = "a"\nkind = "openai"\nurl = "http://127.0.0.1:9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: [tool.llmserve]")
    assert "in llmserve.toml write the keys at top level" in str(info.value)


def test_pyproject_without_section_is_no_config(tmp_path):
    _write(tmp_path, '[project]\nname = "x"\n', "pyproject.toml")
    assert find_config_file(tmp_path) is None


def test_unknown_target_lists_known_names():
    cfg = parse_config({"targets": [{"name": "a", "kind": "openai", "url": "http://h"}]}, source="<t>")
    with pytest.raises(ConfigError, match=r"unknown target 'b' \(known: a"):
        cfg.target("b")


@given(
    baseline=st.floats(0.001, 1e6),
    rel=st.floats(0, 2),
    absolute=st.floats(0, 100),
    higher=st.booleans(),
)
def test_tolerance_accepts_the_baseline_itself_and_is_direction_aware(baseline, rel, absolute, higher):
    tol = Tolerance(rel=rel, abs=absolute)
    assert tol.allows(baseline, baseline, higher)
    slack = baseline * rel + absolute
    worse = baseline - 2 * slack - 1 if higher else baseline + 2 * slack + 1
    better = baseline + 2 * slack + 1 if higher else baseline - 2 * slack - 1
    assert not tol.allows(worse, baseline, higher)
    assert tol.allows(better, baseline, higher)
