"""The Hugging Face reference: greedy continuations in fp32, prompt sets, and an on-disk cache.

The reference runs the checkpoint with transformers in float32 (weights upcast, TF32 off on GPU)
through its own greedy loop rather than `generate()`, so no generation_config default (repetition
penalty, EOS masking by min length) can change a token; EOS is kept, like the server's
`ignore_eos`. Prompts are token ids, identical to what the server receives.

Cache: ``<baselines_dir>/reference/<model dir name>-<key>.json``, where the key hashes the model
weights and config, the prompt token ids, max_tokens, top_k, transformers and torch versions,
device and dtype. The file is a pure function of its key, so a team may commit it (CI then runs
no Hugging Face forward pass at all) or leave it untracked; a miss computes and writes it,
``--update-baselines`` recomputes it. Writes go through a file lock and an atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..store.atomic import atomic_write_text
from ..checks.equivalence import Continuation
from ..store.locks import lock_for

SCHEMA = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DEFAULT_BATCH_SIZE = 16  # per-step Python overhead dominates small models; 32 was 2x faster than 8 here
LOGPROB_DIGITS = 5  # 1e-5 nats: far below any tolerance, keeps the cache file small


class ReferenceError(Exception):
    """The reference cannot be produced (missing model files, bad prompt set); the message says what to do."""


# ----------------------------------------------------------------------------- forward-pass counter
class _ForwardCounter:
    """Counts Hugging Face forward calls in this process, so tests can prove a cached run did none."""

    def __init__(self) -> None:
        self.count = 0

    def hook(self, module: Any, args: Any) -> None:
        self.count += 1


FORWARD_PASSES = _ForwardCounter()


def forward_passes() -> int:
    """Reference forward passes run in this process so far."""
    return FORWARD_PASSES.count


# ----------------------------------------------------------------------------- prompt sets
@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt: its id, the token ids both sides receive, and the text it came from."""

    id: str
    token_ids: tuple[int, ...]
    text: str = ""


def tokenizer_fingerprint(model_dir: str | Path) -> str | None:
    """sha256 of the model's tokenizer.json (None if it has none): which token ids a prompt file holds."""
    path = Path(model_dir) / "tokenizer.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def load_prompts(path: str | Path, model_dir: str | Path | None = None) -> tuple[Prompt, ...]:
    """Read a JSONL prompt set: `{"id", "text", "token_ids", "tokenizer"}` per line (ids or text required).

    Stored token ids are used when the line names no tokenizer or the model's tokenizer.json has
    the same sha256; otherwise the text is tokenized with the model's tokenizer.
    """
    path = Path(path)
    if not path.is_file():
        raise ReferenceError(f"prompt set {path} does not exist; set options.equivalence.prompts to a JSONL file")
    fingerprint = tokenizer_fingerprint(model_dir) if model_dir else None
    tokenizer = None
    prompts: list[Prompt] = []
    for n, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ReferenceError(f"{path}:{n}: not JSON ({exc})") from None
        text, ids = row.get("text", ""), row.get("token_ids")
        usable = ids is not None and (row.get("tokenizer") in (None, fingerprint) or model_dir is None)
        if not usable:
            if not text:
                raise ReferenceError(f"{path}:{n}: token_ids were made by another tokenizer and there is no "
                                     "`text` to re-tokenize; add the text or regenerate the prompt set")
            if tokenizer is None:
                tokenizer = _tokenizer(model_dir)
            ids = tokenizer(text)["input_ids"]
        if not ids or not all(isinstance(t, int) and t >= 0 for t in ids):
            raise ReferenceError(f"{path}:{n}: token_ids must be a non-empty list of non-negative integers")
        prompts.append(Prompt(str(row.get("id", n)), tuple(ids), text))
    if not prompts:
        raise ReferenceError(f"{path}: no prompts")
    return tuple(prompts)


def fit_prompts(prompts: Sequence[Prompt], max_model_len: int | None, max_tokens: int) -> tuple[tuple[Prompt, ...], int]:
    """Cut prompts so prompt + max_tokens fits the server's length; returns (prompts, how many were cut)."""
    if max_model_len is None:
        return tuple(prompts), 0
    room = max_model_len - max_tokens
    if room < 1:
        raise ReferenceError(f"max_tokens {max_tokens} leaves no room for a prompt in max length {max_model_len}")
    fitted = tuple(p if len(p.token_ids) <= room else Prompt(p.id, p.token_ids[:room], "") for p in prompts)
    return fitted, sum(len(p.token_ids) > room for p in prompts)


def prompts_sha256(prompts: Sequence[Prompt]) -> str:
    """Hash of the prompt ids and token ids (what the reference depends on; text is not)."""
    blob = json.dumps([[p.id, list(p.token_ids)] for p in prompts], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _tokenizer(model_dir: str | Path | None) -> Any:
    if model_dir is None:
        raise ReferenceError("prompts need tokenizing but no model directory was given")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def decoder(model_dir: str | Path):
    """A `decode(token_ids) -> str` for reports (special tokens kept, so odd tokens stay visible)."""
    tokenizer = _tokenizer(model_dir)
    return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


# ----------------------------------------------------------------------------- keys
_WEIGHTS_MEMO: dict[tuple, str] = {}


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 over config.json and every weight file (name + bytes); memoized per (path, size, mtime)."""
    root = _local_dir(model_dir)
    files = sorted(p for p in root.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"))
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise ReferenceError(f"{root}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to hash")
    stamp = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp not in _WEIGHTS_MEMO:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
        _WEIGHTS_MEMO[stamp] = digest.hexdigest()
    return _WEIGHTS_MEMO[stamp]


def _local_dir(model: str | Path) -> Path:
    """The model's local directory; a hub id resolves through the local Hugging Face cache only."""
    path = Path(model)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), local_files_only=True))
    except Exception:  # noqa: BLE001
        raise ReferenceError(f"model {model!r} is not a local directory nor in the local Hugging Face cache; "
                             "download it first (huggingface-cli download) or point `model` at a directory") from None


def n_layers(model_dir: str | Path) -> int:
    """num_hidden_layers from the model's config.json (1 if absent): the depth term of the tolerance."""
    try:
        cfg = json.loads((_local_dir(model_dir) / "config.json").read_text("utf-8"))
    except (OSError, ValueError, ReferenceError):
        return 1
    cfg = cfg.get("text_config", cfg)
    return int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers") or 1)


@dataclass(frozen=True, slots=True)
class ReferenceKey:
    """Everything the reference outputs depend on."""

    weights_sha256: str
    prompts_sha256: str
    max_tokens: int
    top_k: int
    transformers: str
    torch: str
    device: str
    dtype: str = "float32"
    schema: int = SCHEMA

    def digest(self) -> str:
        return key_digest(self)


def key_digest(key: Any) -> str:
    """A short, stable file-name digest of a key dataclass (its fields as sorted JSON)."""
    return hashlib.sha256(json.dumps(asdict(key), sort_keys=True).encode()).hexdigest()[:20]


def reference_key(model_dir: str | Path, prompts: Sequence[Prompt], max_tokens: int, top_k: int, device: str,
                  dtype: str = "float32") -> ReferenceKey:
    import torch
    import transformers

    return ReferenceKey(weights_sha256(model_dir), prompts_sha256(prompts), max_tokens, top_k,
                        transformers.__version__, torch.__version__, _device_label(device), dtype)


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible to torch, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_label(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    return device


# ----------------------------------------------------------------------------- the runner
def hf_greedy(model_dir: str | Path, prompts: Sequence[Sequence[int]], *, max_tokens: int, top_k: int,
              device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE, dtype: str = "float32") -> list[Continuation]:
    """Greedy continuations with top-k logprobs (softmax in fp32) and |logit| scale, batched with left padding.

    `dtype` is the compute precision: float32 for the reference, bfloat16/float16 for the calibration.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(_local_dir(model_dir)), dtype=torch_dtype)
    # functools.wraps around transformers' `to` makes mypy see an unbound function (expects `self` first)
    model = model.to(device).eval()  # type: ignore[arg-type]
    handle = model.register_forward_pre_hook(FORWARD_PASSES.hook)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    # Longest prompts share a batch: left padding stays short (order is restored below).
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[Continuation | None] = [None] * len(prompts)
    try:
        with _fp32_matmul(device if dtype == "float32" else "cpu"), torch.inference_mode():
            for chunk in _batches(order, batch_size):
                results = _greedy_batch(model, [list(prompts[i]) for i in chunk], max_tokens, top_k, pad, device)
                for i, result in zip(chunk, results):
                    out[i] = result
    finally:
        handle.remove()
    return [c for c in out if c is not None]


def _greedy_batch(model: Any, seqs: list[list[int]], max_tokens: int, top_k: int, pad: int, device: str) -> list[Continuation]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    tokens: list[list[int]] = [[] for _ in seqs]
    tops: list[list[dict[int, float]]] = [[] for _ in seqs]
    scales: list[list[float]] = [[] for _ in seqs]
    cache = None
    for step in range(max_tokens):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logprobs, k=min(top_k, logprobs.shape[-1]), dim=-1)
        top_logits = logits.gather(-1, top.indices)
        chosen = top.indices[:, 0]  # greedy = argmax; topk's first index, so the chosen token is always in the top-k
        for row in range(len(seqs)):
            tokens[row].append(int(chosen[row]))
            tops[row].append({int(t): round(float(v), LOGPROB_DIGITS)
                              for t, v in zip(top.indices[row].tolist(), top.values[row].tolist())})
            scales[row].append(round(float(top_logits[row].abs().max()), 4))
        ids = chosen[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        positions = positions[:, -1:] + 1
    return [Continuation(tuple(t), tuple(p), tuple(s)) for t, p, s in zip(tokens, tops, scales)]


class _fp32_matmul:
    """True fp32 on GPU for the duration (TF32 would make the 'reference' a bf16-like approximation)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.saved: tuple | None = None

    def __enter__(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            import torch

            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def _batches(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), max(1, size)):
        yield list(items[start:start + size])


# ----------------------------------------------------------------------------- the cache
@dataclass(frozen=True, slots=True)
class ReferenceResult:
    """Reference continuations (prompt order) and where they came from."""

    continuations: tuple[Continuation, ...]
    key: ReferenceKey
    path: Path
    from_cache: bool
    forward_passes: int
    wall_s: float


def cached_reference(model_dir: str | Path, prompts: Sequence[Prompt], *, max_tokens: int, top_k: int,
                     cache_dir: str | Path, refresh: bool = False, device: str = "auto",
                     batch_size: int = DEFAULT_BATCH_SIZE, dtype: str = "float32",
                     isolate: bool | None = None) -> ReferenceResult:
    """The reference (or, with a lower `dtype`, the calibration) for these prompts: cached, or computed and stored.

    `isolate` runs Hugging Face in its own process (default: on CUDA devices, so its GPU memory is
    freed before the server needs it). An fp32 miss first tries a reference of another device that
    a spot check on this one agrees with (reference/worker.py).
    """
    from . import worker

    started = time.perf_counter()
    device = resolve_device(device)
    isolate = device.startswith("cuda") if isolate is None else isolate
    key = reference_key(model_dir, prompts, max_tokens, top_k, device, dtype)
    suffix = "" if dtype == "float32" else f"-{dtype}"
    path = Path(cache_dir) / f"{Path(str(model_dir)).name or 'model'}{suffix}-{key.digest()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def compute(subset: Sequence[Prompt]) -> tuple[list[Continuation], int]:
        ids = [p.token_ids for p in subset]
        if isolate:
            return worker.run_isolated(model_dir, ids, max_tokens=max_tokens, top_k=top_k, device=device,
                                       batch_size=batch_size, dtype=dtype)
        before = forward_passes()
        conts = hf_greedy(model_dir, ids, max_tokens=max_tokens, top_k=top_k, device=device,
                          batch_size=batch_size, dtype=dtype)
        return conts, forward_passes() - before

    with lock_for(path):
        if not refresh:
            stored = _read(path, key, len(prompts))
            if stored is not None:
                return ReferenceResult(stored, key, path, True, 0, time.perf_counter() - started)
            if dtype == "float32":
                reused = worker.reuse_other_device(path, key, prompts, compute)
                if reused is not None:
                    reused_conts, reused_passes = reused
                    return ReferenceResult(reused_conts, key, path, True, reused_passes, time.perf_counter() - started)
        conts, passes = compute(prompts)
        _write(path, key, prompts, conts, passes, time.perf_counter() - started)
    return ReferenceResult(tuple(conts), key, path, False, passes, time.perf_counter() - started)


def _read(path: Path, key: ReferenceKey, n_prompts: int) -> tuple[Continuation, ...] | None:
    """Stored continuations, or None when absent, unreadable or made for another key (then recomputed)."""
    try:
        data = json.loads(path.read_text("utf-8"))
        if data.get("key") != asdict(key) or len(data["prompts"]) != n_prompts:
            return None
        return tuple(
            Continuation(tuple(p["tokens"]), tuple({int(t): float(v) for t, v in step} for step in p["top"]),
                         tuple(float(s) for s in p["logit_scale"]))
            for p in data["prompts"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, key: ReferenceKey, prompts: Sequence[Prompt], conts: Sequence[Continuation],
           passes: int, wall_s: float, **made_by: Any) -> None:
    import platform

    data = {
        "schema": SCHEMA,
        "key": asdict(key),
        "made_by": {"forward_passes": passes, "wall_s": round(wall_s, 2), "python": platform.python_version(),
                    **made_by},
        "prompts": [
            {"id": p.id, "tokens": list(c.tokens), "top": [[[t, v] for t, v in step.items()] for step in c.top_logprobs],
             "logit_scale": list(c.logit_scale)}
            for p, c in zip(prompts, conts)
        ],
    }
    atomic_write_text(path, json.dumps(data, separators=(",", ":")) + "\n")


# ----------------------------------------------------------------------------- perturbed copies
def make_perturbed_model(src: str | Path, dst: str | Path, layer: int, scale: float, seed: int = 0) -> Path:
    """Copy a checkpoint with decoder layer `layer`'s weights noised by `scale` x each tensor's std (a 'broken build')."""
    from ..testing.broken_weights import BrokenWeightsError, noise_layer

    try:
        return noise_layer(src, dst, layer=layer, scale=scale, seed=seed, min_dim=1)
    except BrokenWeightsError as exc:
        raise ReferenceError(f"{exc}; pick a layer in range") from None
