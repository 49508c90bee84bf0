"""LoadSpec validation, prompt construction and prompt files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmserve.load import LoadSpec, load_prompts
from pytest_llmserve.load.prompts import BodyPool, request_body, synthetic_prompt


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"endpoint": "embeddings"}, "endpoint='embeddings'"),
    ({"arrival": "bursty"}, "arrival='bursty'"),
    ({"concurrency": None}, "set concurrency=N"),
    ({"concurrency": 0}, "concurrency=0"),
    ({"concurrency": True}, "concurrency=True"),
    ({"rate": 0.0}, "rate=0.0"),
    ({"rate": float("inf")}, "rate=inf"),
    ({"requests": None}, "set exactly one"),
    ({"requests": 10, "duration_s": 5.0}, "set exactly one"),
    ({"requests": 0}, "requests=0"),
    ({"requests": None, "duration_s": -1.0}, "duration_s=-1.0"),
    ({"warmup": -1}, "warmup=-1"),
    ({"input_len": 0}, "input_len=0"),
    ({"output_len": 2.5}, "output_len=2.5"),
    ({"request_timeout_s": 0}, "request_timeout_s=0"),
    ({"vocab_size": 5}, "vocab_size=5"),
    ({"prompts": ()}, "non-empty tuple"),
    ({"prompts": ["a"]}, "non-empty tuple"),
    ({"prompts": ((1, 2),), "endpoint": "chat"}, "chat endpoint needs text"),
    ({"prompts": ((),)}, r"prompts\[0\]"),
    ({"extra_body": [1]}, "extra_body must be a mapping"),
])
def test_bad_specs_are_rejected_with_the_field_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LoadSpec(**kwargs).validate()


@pytest.mark.parametrize("kwargs", [
    {}, {"rate": 5.0, "concurrency": None}, {"rate": 5.0, "concurrency": 2},
    {"requests": None, "duration_s": 1.5}, {"endpoint": "chat", "prompts": ("hi",)}, {"prompts": ("x", (1, 2))},
])
def test_good_specs_validate(kwargs: dict) -> None:
    LoadSpec(**kwargs).validate()


def test_synthetic_completion_prompts_are_exact_length_token_ids_in_a_safe_range() -> None:
    spec = LoadSpec(input_len=300, vocab_size=64)
    p = synthetic_prompt(spec, 0)
    assert isinstance(p, list) and len(p) == 300
    assert min(p) >= 10 and max(p) < 63
    assert synthetic_prompt(spec, 1) != p and synthetic_prompt(spec, 0) == p  # distinct per request, seeded
    assert max(synthetic_prompt(LoadSpec(input_len=500), 0)) < 1000


def test_request_body_asks_for_matched_streaming_work() -> None:
    body = json.loads(request_body(LoadSpec(output_len=7, extra_body={"temperature": 0}), "m", 0))
    assert body["max_tokens"] == body["min_tokens"] == 7 and body["ignore_eos"] is True
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0 and body["model"] == "m" and len(body["prompt"]) == 64
    chat = json.loads(request_body(LoadSpec(endpoint="chat", ignore_eos=False, input_len=5), "m", 0))
    assert "ignore_eos" not in chat and "min_tokens" not in chat
    assert chat["messages"][0]["role"] == "user" and len(chat["messages"][0]["content"].split()) == 5


def test_explicit_prompts_are_cycled() -> None:
    pool = BodyPool(LoadSpec(prompts=("a", (5, 6))), "m", needed=10)
    prompts = [json.loads(pool[i])["prompt"] for i in range(4)]
    assert prompts == ["a", [5, 6], "a", [5, 6]]


def test_prompts_file_reads_text_and_token_ids(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hello"}\n\n{"prompt": [1, 2, 3]}\n')
    assert load_prompts(f) == ("hello", (1, 2, 3))


@pytest.mark.parametrize(("text", "match"), [
    ("not json\n", r"p.jsonl:1: not JSON"),
    ('{"text": "x"}\n', r"p.jsonl:1: \"prompt\" must be"),
    ('{"prompt": [1, -2]}\n', "must be a non-empty string or a list of token ids"),
    ("\n", "no prompts"),
])
def test_bad_prompts_files_name_the_line(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_prompts(f)


def test_missing_prompts_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope.jsonl"):
        load_prompts(tmp_path / "nope.jsonl")
