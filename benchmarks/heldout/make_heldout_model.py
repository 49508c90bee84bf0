#!/usr/bin/env python3
"""Build the held-out model for equivalence-gate checks: a 6-layer tiny Llama trained on licence prose.

The repo's fixture model (fixtures/tiny-llama: 4 layers, Python stdlib source) is the *tuning* set of
the equivalence gate; this one is the *checking* set. It differs in depth (6 layers), width (192),
corpus (English prose: the licence texts in /usr/share/common-licenses, not code) and training budget
(weaker: more near-ties). Everything else (tokenizer recipe, training loop, determinism settings)
comes from fixtures/make_tiny_model.py, so the two differ only where stated.

Also writes prompts.jsonl (64 prompts of 24 tokens cut at even offsets of the token stream).

    flock /tmp/llmserve-heavy.lock .venv/bin/python benchmarks/heldout/make_heldout_model.py

Deterministic for a fixed corpus (its sha256 is in training_report.json), torch version and
--threads (default 1). The defaults took about 3 minutes on one shared core. The output
directory (benchmarks/heldout/model/, git-ignored) is regenerated rather than committed.
"""
from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_OUT = HERE / "model"
LICENSES = Path("/usr/share/common-licenses")
CORPUS_FILES = ("Apache-2.0", "BSD", "Artistic", "MPL-2.0", "CC0-1.0", "LGPL-3")
ARCH = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=6, num_attention_heads=3,
            num_key_value_heads=3, head_dim=64)
N_PROMPTS, PROMPT_TOKENS = 64, 24


def _fixture_builder():
    """fixtures/make_tiny_model.py as a module (tokenizer, training loop, config)."""
    spec = importlib.util.spec_from_file_location("make_tiny_model", ROOT / "fixtures" / "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def build_corpus(root: Path = LICENSES) -> list[tuple[str, str]]:
    """[(name, text)] of the licence files; a missing file is an error naming it."""
    docs = []
    for name in CORPUS_FILES:
        path = root / name
        if not path.is_file():
            raise SystemExit(f"{path} is missing: the held-out corpus needs these files ({', '.join(CORPUS_FILES)})")
        docs.append((name, path.read_text("utf-8", errors="replace").replace("\r\n", "\n")))
    return docs


def write_prompts(tok, stream: list[int], out: Path, fingerprint: str) -> None:
    usable = len(stream) - PROMPT_TOKENS - 1
    with (out / "prompts.jsonl").open("w") as fh:
        for k in range(N_PROMPTS):
            off = (k * usable) // N_PROMPTS
            ids = [0] + stream[off:off + PROMPT_TOKENS - 1]
            fh.write(json.dumps({"id": f"licence#{k}", "token_ids": ids, "text": tok.decode(ids[1:]),
                                 "tokenizer": fingerprint}) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=360)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=192)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    mtm = _fixture_builder()
    mtm.MODEL_ARCH.update(ARCH)  # the recipe's config, with this model's shape
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    docs = build_corpus()
    sha = mtm.corpus_sha256(docs)
    tok = mtm.train_tokenizer(docs)
    mtm.write_tokenizer_files(tok, out)
    stream = mtm.token_stream(tok, docs)
    print(f"corpus {len(docs)} files, {len(stream)} tokens, sha256 {sha}", flush=True)
    cfg = mtm.make_config(tok.get_vocab_size())
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg).float()
    n_params = sum(p.numel() for p in model.parameters())
    losses, train_s = mtm.train(model, stream, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                                lr=args.lr, seed=args.seed)
    model.eval()
    loss = mtm.corpus_loss(model, stream, args.seq_len)
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out, safe_serialization=True)
    cfg_path = out / "config.json"
    cfg_json = json.loads(cfg_path.read_text())
    cfg_json["torch_dtype"] = cfg_json["dtype"] = "bfloat16"
    cfg_path.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
    GenerationConfig(bos_token_id=0, eos_token_id=1, pad_token_id=3).save_pretrained(out)
    fingerprint = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    write_prompts(tok, stream, out, fingerprint)
    report = {
        "corpus": {"source": str(LICENSES), "files": list(CORPUS_FILES), "tokens": len(stream), "sha256": sha},
        "model": {"params": n_params, "stored_dtype": "bfloat16", **mtm.MODEL_ARCH},
        "training": {"steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "lr": args.lr,
                     "seed": args.seed, "threads": args.threads, "final_loss_mean20": sum(losses[-20:]) / 20,
                     "train_s": round(train_s, 1)},
        "corpus_loss_nats_fp32": loss,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
