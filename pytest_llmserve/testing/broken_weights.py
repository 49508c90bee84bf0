"""Broken copies of a checkpoint, for checking that the equivalence gate fails builds that are subtly wrong.

Each writes a full copy of the model directory (config, tokenizer) with one edit to the weights,
deterministically, so a CPU vLLM can serve it (`--model <copy>`) while the reference keeps the
clean checkpoint:

- ``noise``: Gaussian noise of `scale` x each tensor's std on the tensors of one decoder layer
  whose names contain `part` (e.g. "mlp");
- ``norm_scale``: the final RMSNorm weight times `factor` (logits `factor` x hotter);
- ``zero_head``: one attention head's columns of `o_proj` zeroed in one layer (the head is gone).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

EditFn = Callable[[dict[str, Any]], int]


class BrokenWeightsError(Exception):
    """The edit found nothing to change (wrong layer, head or name); the message says what exists."""


def _copy_with(src: str | Path, dst: str | Path, edit: EditFn, what: str) -> Path:
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    weights = sorted(src.glob("*.safetensors"))
    if not weights:
        raise BrokenWeightsError(f"{src}: no *.safetensors to edit")
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copy2(path, dst / path.name)
    touched = 0
    for path in weights:
        tensors = load_file(str(path))
        touched += edit(tensors)
        save_file(tensors, str(dst / path.name), metadata={"format": "pt"})
    if not touched:
        raise BrokenWeightsError(f"{src}: {what} matched no tensor")
    (dst / "BROKEN.json").write_text(json.dumps({"source": str(src), "edit": what}) + "\n")
    return dst


def noise_layer(src: str | Path, dst: str | Path, *, layer: int, scale: float, part: str = "", seed: int = 0,
                min_dim: int = 2) -> Path:
    """Add `scale` x std Gaussian noise to layer `layer`'s tensors whose names contain `part` (and have ≥ min_dim dims)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    prefix = f".layers.{layer}."

    def edit(tensors: dict[str, Any]) -> int:
        n = 0
        for name in sorted(tensors):
            t = tensors[name]
            if prefix in name and part in name and t.is_floating_point() and t.dim() >= min_dim:
                x = t.float()
                sd = scale * float(x.std()) if x.numel() > 1 else scale
                tensors[name] = (x + torch.randn(x.shape, generator=generator) * sd).to(t.dtype)
                n += 1
        return n

    return _copy_with(src, dst, edit, f"noise {scale:g} x std on layer {layer} tensors matching {part!r}")


def scale_final_norm(src: str | Path, dst: str | Path, *, factor: float = 1.05) -> Path:
    """Multiply the final norm's weight (`model.norm.weight`) by `factor`."""

    def edit(tensors: dict[str, Any]) -> int:
        name = next((k for k in ("model.norm.weight", "norm.weight") if k in tensors), None)
        if name is None:
            return 0
        tensors[name] = (tensors[name].float() * factor).to(tensors[name].dtype)
        return 1

    return _copy_with(src, dst, edit, f"final norm x {factor:g}")


def zero_head(src: str | Path, dst: str | Path, *, layer: int, head: int) -> Path:
    """Zero head `head`'s input columns of layer `layer`'s attention output projection."""
    cfg = json.loads((Path(src) / "config.json").read_text("utf-8"))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if not 0 <= head < cfg["num_attention_heads"]:
        raise BrokenWeightsError(f"head {head} out of range: the model has {cfg['num_attention_heads']} heads")

    def edit(tensors: dict[str, Any]) -> int:
        name = f"model.layers.{layer}.self_attn.o_proj.weight"
        if name not in tensors:
            return 0
        w = tensors[name].clone()
        w[:, head * head_dim:(head + 1) * head_dim] = 0
        tensors[name] = w
        return 1

    return _copy_with(src, dst, edit, f"head {head} of layer {layer} zeroed")


CASES: dict[str, Callable[[Path, Path], Path]] = {
    "noise 0.25 std, layer 0 MLP": lambda s, d: noise_layer(s, d, layer=0, scale=0.25, part="mlp"),
    "noise 0.25 std, layer 2 MLP": lambda s, d: noise_layer(s, d, layer=2, scale=0.25, part="mlp"),
    "final norm x 1.05": lambda s, d: scale_final_norm(s, d, factor=1.05),
    "head 0 of layer 1 zeroed": lambda s, d: zero_head(s, d, layer=1, head=0),
}
