"""vLLM's batch ceiling and CUDA-graph capture settings, read from a target's command-line args.

vLLM's config dump does not print `max_num_seqs`, so the graph detector cannot learn the batch
ceiling from the log: `--max-num-seqs 1024` with the default capture cap of 512 runs every batch
above 512 eagerly while the log looks "on". The capture settings are read too, for logs that list
no sizes (cut short, or a version that prints only the cap):
`--cuda-graph-sizes 1 2 4` (or `1,2,4`), `--max-cudagraph-capture-size N`, and the JSON of
`--compilation-config` / `-O` (`cudagraph_capture_sizes`, `max_cudagraph_capture_size`, older
`max_capture_size`). The log, when it lists sizes, wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Sequence

from .graphs import GraphVerdict, check_max_batch, format_sizes
from .log_evidence import Evidence

SOURCE = "target.args"


@dataclass(frozen=True, slots=True)
class VllmGraphArgs:
    """What the args say; None / () where they are silent (vLLM's defaults then apply, unknown here)."""

    max_num_seqs: int | None = None
    capture_sizes: tuple[int, ...] = ()
    max_capture_size: int | None = None
    evidence: tuple[Evidence, ...] = ()

    @property
    def sizes(self) -> tuple[int, ...]:
        """The sizes vLLM captures: the explicit list, else its default pattern up to the cap."""
        if self.capture_sizes:
            cap = self.max_capture_size
            return tuple(s for s in self.capture_sizes if cap is None or s <= cap)
        if self.max_capture_size:  # vLLM's default list: 1, 2, 4, then every 8 to 256, every 16 above
            pattern = [1, 2, 4, *range(8, 256, 8), *range(256, self.max_capture_size + 1, 16)]
            return tuple(s for s in pattern if s <= self.max_capture_size)
        return ()


def _value(args: Sequence[str], i: int, flag: str) -> tuple[str | None, int]:
    """`--flag=V` or `--flag V`: the value and how many list items it took."""
    a = args[i]
    if a.startswith(flag + "="):
        return a[len(flag) + 1:], 1
    return (args[i + 1], 2) if i + 1 < len(args) else (None, 1)


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def parse_vllm_args(args: Sequence[str]) -> VllmGraphArgs:
    """Read the settings above; unknown or malformed values are ignored (vLLM itself rejects them)."""
    out = VllmGraphArgs()
    ev: list[Evidence] = []
    i = 0
    while i < len(args):
        a = str(args[i])
        if a == "--max-num-seqs" or a.startswith("--max-num-seqs="):
            v, step = _value(args, i, "--max-num-seqs")
            if (n := _int(v)) is not None:
                out = replace(out, max_num_seqs=n)
                ev.append(Evidence(SOURCE, 0, f"--max-num-seqs {n}"))
        elif a == "--max-cudagraph-capture-size" or a.startswith("--max-cudagraph-capture-size="):
            v, step = _value(args, i, "--max-cudagraph-capture-size")
            if (n := _int(v)) is not None:
                out = replace(out, max_capture_size=n)
                ev.append(Evidence(SOURCE, 0, f"--max-cudagraph-capture-size {n}"))
        elif a == "--cuda-graph-sizes" or a.startswith("--cuda-graph-sizes="):
            if "=" in a:
                values, step = a.split("=", 1)[1].replace(",", " ").split(), 1
            else:  # nargs="+": every following item that is not a flag
                j = i + 1
                while j < len(args) and not str(args[j]).startswith("-"):
                    j += 1
                values, step = " ".join(map(str, args[i + 1:j])).replace(",", " ").split(), j - i
            sizes = tuple(sorted({n for v in values if (n := _int(v)) is not None and n > 0}))
            if sizes:
                out = replace(out, capture_sizes=sizes)
                ev.append(Evidence(SOURCE, 0, f"--cuda-graph-sizes {format_sizes(sizes)}"))
        elif a in ("--compilation-config", "-O") or a.startswith(("--compilation-config=", "-O=", "-O{")):
            flag = "-O" if a.startswith("-O") else "--compilation-config"
            v, step = (a[2:], 1) if a.startswith("-O{") else _value(args, i, flag)
            out = _from_compilation_config(out, v, ev)
        else:
            step = 1
        i += step
    return replace(out, evidence=tuple(ev))


def _from_compilation_config(out: VllmGraphArgs, text: str | None, ev: list[Evidence]) -> VllmGraphArgs:
    try:
        cfg = json.loads(text or "")
    except ValueError:
        return out  # -O3 (a level) or a dotted key: nothing about sizes
    if not isinstance(cfg, dict):
        return out
    sizes = cfg.get("cudagraph_capture_sizes")
    if isinstance(sizes, list) and sizes and all(isinstance(s, int) and s > 0 for s in sizes):
        out = replace(out, capture_sizes=tuple(sorted(set(sizes))))
        ev.append(Evidence(SOURCE, 0, f"compilation_config cudagraph_capture_sizes {format_sizes(out.capture_sizes)}"))
    for key in ("max_cudagraph_capture_size", "max_capture_size"):
        if isinstance(cfg.get(key), int):
            out = replace(out, max_capture_size=cfg[key])
            ev.append(Evidence(SOURCE, 0, f"compilation_config {key} {cfg[key]}"))
            break
    return out


def apply_vllm_args(verdict: GraphVerdict, settings: VllmGraphArgs, max_batch_size: int | None) -> GraphVerdict:
    """Fill in capture sizes the log did not list, then check the batch ceiling against the sizes."""
    sizes = settings.sizes
    seqs_ev = tuple(e for e in settings.evidence if e.text.startswith("--max-num-seqs"))
    size_ev = tuple(e for e in settings.evidence if e not in seqs_ev)
    if sizes and verdict.state in ("on", "partial") and verdict.mode != "NONE":
        if not verdict.captured_batch_sizes:
            verdict = replace(verdict, captured_batch_sizes=sizes, evidence=(*verdict.evidence, *size_ev),
                              notes=(*verdict.notes, f"capture sizes {format_sizes(sizes)} from the target's args "
                                                     "(the log lists none)"))
        elif set(verdict.captured_batch_sizes) != set(sizes):
            verdict = replace(verdict, notes=(*verdict.notes, f"the args ask for sizes {format_sizes(sizes)} but the "
                                              f"log lists {format_sizes(verdict.captured_batch_sizes)}: the log wins"))
    if settings.max_num_seqs is not None and max_batch_size == settings.max_num_seqs and verdict.state in ("on", "partial"):
        verdict = replace(verdict, evidence=(*verdict.evidence, *seqs_ev))
    return check_max_batch(verdict, max_batch_size)
