"""Text prompts of an exact token length, made with the model's own tokenizer (for servers that refuse token ids).

Words are drawn from the vocabulary's own single-token words (" alpha" is one token, and a
space-splitting pre-tokenizer never merges across words), so a prompt of N words encodes to N
tokens; every prompt is checked by encoding it, and the server's `usage.prompt_tokens` is checked
against the count with the tokenizer's special tokens (or chat template) after the run.
Built before the run; the hot path sends pre-encoded bodies as for token-id prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

_MAX_WORDS = 2000  # candidate words kept (the most frequent, lowest ids, in BPE vocabularies)


class TokenizerUnavailable(Exception):
    """The tokenizer could not be loaded (transformers missing, no tokenizer files)."""


@dataclass(frozen=True)
class WordTokens:
    """A tokenizer's single-token words and how it counts a prompt (specials, chat template)."""

    tokenizer: Any
    words: tuple[str, ...]

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def served_count(self, text: str, chat: bool) -> int | None:
        """Tokens the server should report as usage.prompt_tokens (None: cannot tell, e.g. no chat template)."""
        tok = self.tokenizer
        if not chat:
            return len(tok(text, add_special_tokens=True)["input_ids"])
        if not getattr(tok, "chat_template", None):
            return None
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)


@lru_cache(maxsize=4)
def word_tokens(path: str) -> WordTokens:
    """Load the tokenizer at `path` (local files only) and find its single-token words."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise TokenizerUnavailable(f"transformers is not installed ({exc}); pip install transformers") from None
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loading failure means: no tokenizer here
        raise TokenizerUnavailable(f"no tokenizer at {path}: {type(exc).__name__}: {exc}") from None
    words = []
    for token_id in sorted(tok.get_vocab().values()):
        text = tok.decode([token_id])  # a str for one list of ids (the stubs also allow a batch's list)
        if isinstance(text, str) and len(text) > 2 and text[0] == " " and text[1:].isascii() and text[1:].isalpha():
            if tok(text, add_special_tokens=False)["input_ids"] == [token_id]:
                words.append(text)
                if len(words) >= _MAX_WORDS:
                    break
    if len(words) < 16:
        raise TokenizerUnavailable(f"the tokenizer at {path} has too few single-token words ({len(words)})")
    return WordTokens(tok, tuple(words))


def exact_text_prompt(words: WordTokens, length: int, seed: int, index: int) -> str:
    """Prompt `index` of a run: `length` tokens of words, drawn as synthetic token-id prompts are."""
    rng = np.random.default_rng([seed, index])
    picks = rng.integers(0, len(words.words), size=length + 8)
    chosen = [words.words[i] for i in picks[:length]]
    text = "".join(chosen)
    n = words.count(text)
    spare = iter(picks[length:])
    while n != length:  # a tokenizer that merged or split across words: trim or extend until exact
        if n > length:
            chosen.pop()
        else:
            nxt = next(spare, None)
            if nxt is None:
                raise TokenizerUnavailable(f"cannot build a {length}-token prompt with this tokenizer")
            chosen.append(words.words[nxt])
        text = "".join(chosen)
        n = words.count(text)
        if not chosen:
            raise TokenizerUnavailable(f"cannot build a {length}-token prompt with this tokenizer")
    return text


def ids_as_text(words: WordTokens, ids: Sequence[int]) -> str:
    """Token-id prompt `ids` as text, one single-token word per id (the id picks the word): equal id prefixes
    give equal text prefixes, so a workload's shared prefixes stay shared; about len(ids) tokens (a tokenizer
    that merges across words may differ, and the server's usage.prompt_tokens is checked against the text)."""
    return "".join(words.words[int(i) % len(words.words)] for i in ids)
