"""The Hugging Face reference: greedy fp32 continuations, prompt sets, the keyed on-disk cache, perturbed copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from pytest_llmserve.reference import hf as ref  # noqa: E402
from pytest_llmserve.reference.hf import Prompt, ReferenceError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "fixtures" / "tiny-llama"
PROMPT_SET = ROOT / "fixtures" / "prompts" / "stdlib-64.jsonl"
TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n" * 20


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory) -> Path:
    """A 2-layer random Llama (~100 k params) with a byte-level BPE tokenizer: fast enough to run per test."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("micro-llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits than the default init, so greedy steps are not all near-ties
        model.lm_head.weight.mul_(40)
    model.to(torch.bfloat16).save_pretrained(out)
    return out


@pytest.fixture
def prompts(micro_model) -> tuple[Prompt, ...]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(micro_model / "tokenizer.json"))
    ids = tok.encode(TEXT).ids
    return tuple(Prompt(f"p{i}", tuple([0] + ids[i * 7:i * 7 + n])) for i, n in enumerate((3, 17, 40, 9, 60)))


def _run(model, prompts, cache_dir, **kw):
    kw.setdefault("max_tokens", 6)
    kw.setdefault("top_k", 4)
    return ref.cached_reference(model, prompts, cache_dir=cache_dir, device="cpu", batch_size=2, **kw)


def test_second_run_reads_the_cache_and_does_no_forward_pass(micro_model, prompts, tmp_path, monkeypatch):
    first = _run(micro_model, prompts, tmp_path)
    assert not first.from_cache and first.forward_passes == 3 * 6  # 3 batches of 2 x 6 steps
    before = ref.forward_passes()

    def no_model(*args, **kwargs):
        raise AssertionError("the cached run loaded the model")

    monkeypatch.setattr(ref, "hf_greedy", no_model)
    second = _run(micro_model, prompts, tmp_path)
    assert second.from_cache and second.forward_passes == 0 and ref.forward_passes() == before
    assert second.continuations == first.continuations
    assert second.path == first.path and first.path.parent == tmp_path


def test_refresh_recomputes_and_rewrites_the_same_file(micro_model, prompts, tmp_path):
    first = _run(micro_model, prompts, tmp_path)
    again = _run(micro_model, prompts, tmp_path, refresh=True)
    assert not again.from_cache and again.forward_passes > 0
    assert again.path == first.path and again.continuations == first.continuations
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_key_changes_with_prompts_and_generation_parameters(micro_model, prompts, tmp_path):
    base = _run(micro_model, prompts, tmp_path)
    paths = {base.path,
             _run(micro_model, prompts[:4], tmp_path).path,
             _run(micro_model, prompts, tmp_path, max_tokens=5).path,
             _run(micro_model, prompts, tmp_path, top_k=3).path}
    assert len(paths) == 4
    stored = json.loads(base.path.read_text())
    assert stored["key"]["transformers"] and stored["key"]["torch"] and stored["key"]["device"] == "cpu"
    assert stored["key"]["dtype"] == "float32" and stored["key"]["weights_sha256"] == ref.weights_sha256(micro_model)


def test_a_corrupt_cache_file_is_recomputed(micro_model, prompts, tmp_path):
    first = _run(micro_model, prompts, tmp_path)
    first.path.write_text('{"schema": 1, "key": ')
    again = _run(micro_model, prompts, tmp_path)
    assert not again.from_cache and again.continuations == first.continuations
    assert json.loads(first.path.read_text())["key"]["prompts_sha256"] == ref.prompts_sha256(prompts)


def test_reference_records_chosen_token_in_top_k_and_logit_scale(micro_model, prompts, tmp_path):
    result = _run(micro_model, prompts, tmp_path)
    for cont in result.continuations:
        assert len(cont.tokens) == 6 and len(cont.logit_scale) == 6
        for token, top, scale in zip(cont.tokens, cont.top_logprobs, cont.logit_scale):
            assert len(top) == 4 and max(top, key=top.get) == token and scale > 0
            assert all(v <= 0 for v in top.values())


def test_batched_left_padded_reference_equals_one_prompt_at_a_time(micro_model, prompts):
    single = ref.hf_greedy(micro_model, [p.token_ids for p in prompts], max_tokens=6, top_k=4, batch_size=1)
    batched = ref.hf_greedy(micro_model, [p.token_ids for p in prompts], max_tokens=6, top_k=4, batch_size=5)
    for a, b in zip(single, batched):
        assert a.tokens == b.tokens
        for x, y in zip(a.top_logprobs, b.top_logprobs):
            assert x.keys() == y.keys() and max(abs(x[k] - y[k]) for k in x) < 1e-4


def test_reference_matches_an_independent_full_recompute(micro_model, prompts):
    """The cached-KV greedy loop agrees with recomputing the whole sequence at every step."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32).eval()
    cont = ref.hf_greedy(micro_model, [prompts[2].token_ids], max_tokens=6, top_k=4)[0]
    ids = list(prompts[2].token_ids)
    with torch.no_grad():
        for token, top in zip(cont.tokens, cont.top_logprobs):
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
            assert int(lp.argmax()) == token
            assert all(abs(float(lp[t]) - v) < 1e-4 for t, v in top.items())
            ids.append(token)


def test_weights_hash_changes_when_one_layer_is_perturbed(micro_model, tmp_path):
    from safetensors.torch import load_file

    dst = ref.make_perturbed_model(micro_model, tmp_path / "perturbed", layer=1, scale=0.5, seed=3)
    assert ref.weights_sha256(dst) != ref.weights_sha256(micro_model)
    assert (dst / "tokenizer.json").read_bytes() == (micro_model / "tokenizer.json").read_bytes()
    a, b = load_file(str(micro_model / "model.safetensors")), load_file(str(dst / "model.safetensors"))
    changed = sorted(k for k in a if not a[k].equal(b[k]))
    assert changed and all(".layers.1." in k for k in changed)
    assert all(b[k].dtype == a[k].dtype for k in a)
    with pytest.raises(ReferenceError, match="pick a layer in range"):
        ref.make_perturbed_model(micro_model, tmp_path / "bad", layer=9, scale=0.5)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompt_ids_are_used_when_the_tokenizer_matches_and_text_is_retokenized_when_not(micro_model, tmp_path):
    fp = ref.tokenizer_fingerprint(micro_model)
    rows = [{"id": "same", "token_ids": [0, 5, 6], "text": "ignored", "tokenizer": fp},
            {"id": "other", "token_ids": [0, 999, 998], "text": "def add", "tokenizer": "f" * 64},
            {"text": "class Point"}]
    loaded = ref.load_prompts(_write_jsonl(tmp_path / "p.jsonl", rows), micro_model)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model)
    assert loaded[0] == Prompt("same", (0, 5, 6), "ignored")
    assert loaded[1].token_ids == tuple(tok("def add")["input_ids"])
    assert loaded[2].id == "3" and loaded[2].token_ids == tuple(tok("class Point")["input_ids"])


def test_prompt_file_errors_name_the_line_and_the_fix(micro_model, tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"token_ids": [0, 1]}, {"token_ids": [0, 2], "tokenizer": "x"}])
    with pytest.raises(ReferenceError, match=r"bad.jsonl:2: .*add the text or regenerate"):
        ref.load_prompts(bad, micro_model)
    with pytest.raises(ReferenceError, match="does not exist; set options.equivalence.prompts"):
        ref.load_prompts(tmp_path / "missing.jsonl", micro_model)


def test_prompts_longer_than_the_server_allows_are_cut_and_counted():
    prompts = (Prompt("a", tuple(range(10))), Prompt("b", tuple(range(100))))
    fitted, cut = ref.fit_prompts(prompts, max_model_len=64, max_tokens=16)
    assert cut == 1 and fitted[0] == prompts[0] and fitted[1].token_ids == tuple(range(48))
    assert ref.fit_prompts(prompts, None, 16) == (prompts, 0)
    with pytest.raises(ReferenceError, match="leaves no room"):
        ref.fit_prompts(prompts, 16, 16)


@pytest.mark.skipif(not (TINY / "model.safetensors").exists() or not PROMPT_SET.exists(),
                    reason="fixtures/tiny-llama or fixtures/prompts/stdlib-64.jsonl not built yet")
def test_shipped_prompt_set_matches_the_tiny_model_tokenizer_and_length_limit():
    prompts = ref.load_prompts(PROMPT_SET, TINY)
    rows = [json.loads(line) for line in PROMPT_SET.read_text().splitlines()]
    fp = ref.tokenizer_fingerprint(TINY)
    assert len(prompts) == 64 and len({p.id for p in prompts}) == 64
    assert all(r["tokenizer"] == fp and r["text"] for r in rows)
    lengths = [len(p.token_ids) for p in prompts]
    assert min(lengths) <= 8 and max(lengths) == 960 and sum(n >= 900 for n in lengths) >= 8
    assert all(p.token_ids[0] == 0 for p in prompts)


def test_cache_file_is_readable_by_others_and_leaves_no_temp_or_lock_files(micro_model, prompts, tmp_path):
    result = _run(micro_model, prompts, tmp_path)
    assert result.path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json"]


def test_reference_in_its_own_process_matches_the_in_process_one(micro_model, prompts, tmp_path):
    inline = _run(micro_model, prompts, tmp_path / "a", max_tokens=4, top_k=3)
    isolated = _run(micro_model, prompts, tmp_path / "b", max_tokens=4, top_k=3, isolate=True)
    assert not isolated.from_cache and isolated.forward_passes > 0
    assert [c.tokens for c in isolated.continuations] == [c.tokens for c in inline.continuations]
    assert all(a.top_logprobs == b.top_logprobs for a, b in zip(inline.continuations, isolated.continuations))


def _as_other_device(result, device: str, shift: float = 0.0) -> None:
    """Rewrite a cached reference as if it had been computed on `device` (logprobs shifted by `shift`)."""
    data = json.loads(result.path.read_text())
    data["key"]["device"] = device
    for p in data["prompts"]:
        p["top"] = [[[t, v + shift] for t, v in step] for step in p["top"]]
    result.path.unlink()
    (result.path.parent / f"other-{device.replace(':', '_')}.json").write_text(json.dumps(data))


def test_fp32_reference_of_another_device_is_reused_when_a_spot_check_agrees(micro_model, prompts, tmp_path):
    cache = tmp_path / "cache"
    _as_other_device(_run(micro_model, prompts, cache, max_tokens=4, top_k=3), "cuda:Fake GPU")
    reused = _run(micro_model, prompts, cache, max_tokens=4, top_k=3)
    made_by = json.loads(reused.path.read_text())["made_by"]
    assert reused.from_cache and made_by["reused_from"]["device"] == "cuda:Fake GPU"
    assert made_by["reused_from"]["spot_prompts"] == min(len(prompts), 4)
    # a stored reference that disagrees (logprobs off by 0.01) is not reused: the full reference is computed
    cache2 = tmp_path / "cache2"
    _as_other_device(_run(micro_model, prompts, cache2, max_tokens=4, top_k=3), "cuda:Fake GPU", shift=0.01)
    fresh = _run(micro_model, prompts, cache2, max_tokens=4, top_k=3)
    assert not fresh.from_cache and "reused_from" not in json.loads(fresh.path.read_text())["made_by"]
