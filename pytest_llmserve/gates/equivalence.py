"""One equivalence gate run for a target: prompts -> cached HF reference -> server greedy -> report."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..checks.calibration import calibrate
from ..checks.equivalence import Continuation, EquivalenceReport, compare_all
from ..checks.near_tie import EquivalenceSettings, ToleranceModel
from ..checks.precision_parts import precision_parts
from ..settings.config import Target
from ..reference.hf import (ReferenceError, ReferenceResult, cached_reference, decoder, fit_prompts, load_prompts,
                        n_layers)
from ..evidence.server_logprobs import fetch_greedy
from ..servers.base import ServerHandle
from ..servers.registry import backend_for


@dataclass(frozen=True)
class EquivalenceRun:
    """The report plus how it was made (reference source, timings) and a decoder for rendering."""

    report: EquivalenceReport
    reference: ReferenceResult
    candidates: tuple[Continuation, ...]
    calibration: ReferenceResult | None
    server_s: float
    total_s: float
    decode: Callable[[Sequence[int]], str] | None

    def render(self) -> str:
        return self.report.render(self.decode)

    def data(self) -> dict:
        """Numbers for ResultEntry.data / the JSON report."""
        cal = self.calibration
        return {**self.report.to_dict(), "reference_from_cache": self.reference.from_cache,
                "calibration_from_cache": cal.from_cache if cal else None,
                "calibration_s": round(cal.wall_s, 3) if cal else None,
                "reference_forward_passes": self.reference.forward_passes,
                "reference_s": round(self.reference.wall_s, 3), "server_s": round(self.server_s, 3),
                "total_s": round(self.total_s, 3), "reference_file": str(self.reference.path)}


def run_equivalence(server: ServerHandle, *, cache_dir: str | Path, default_prompts: str | Path | None = None,
                    refresh: bool = False, target: Target | None = None, settings: EquivalenceSettings | None = None,
                    limit: int | None = None, device: str = "auto", concurrency: int | None = None) -> EquivalenceRun:
    """Compare `server` with the Hugging Face reference of `target.model` (default: the server's own target)."""
    started = time.perf_counter()
    target = target or server.target
    settings = settings or EquivalenceSettings.from_target(target)
    device = settings.device or device
    if not target.model or not Path(target.model).exists():
        raise ReferenceError(f"target {target.name!r}: `model` must be the local checkpoint directory the "
                             f"reference loads (got {target.model!r})")
    prompt_file = _prompt_file(target, settings, default_prompts)
    prompts = load_prompts(prompt_file, target.model)[:limit]
    prompts, cut = fit_prompts(prompts, max_model_len(target), settings.max_tokens)
    reference = cached_reference(target.model, prompts, max_tokens=settings.max_tokens, top_k=settings.top_k,
                                 cache_dir=cache_dir, refresh=refresh, device=device)
    t0 = time.perf_counter()
    candidates = fetch_greedy(server.base_url, server.model, [p.token_ids for p in prompts],
                              max_tokens=settings.max_tokens, top_k=settings.top_k,
                              **({"concurrency": concurrency} if concurrency else {}))  # type: ignore[arg-type]  # an int, to the int parameter
    server_s = time.perf_counter() - t0
    log_text = backend_for(server.target.kind).precision_log(server)
    parts = precision_parts(target, log_text)
    layers = n_layers(target.model)
    notes = [f"prompts: {prompt_file}" + (f" ({cut} cut to fit the server's maximum length)" if cut else ""),
             f"reference: {'cached' if reference.from_cache else 'computed'} {reference.path.name}"]
    calibration, calibration_run = None, None
    tolerance = ToleranceModel(parts.coarsest(), layers, settings.tolerance_scale, settings.tolerance_nats)
    if settings.calibration:
        cal_dtype = parts.calibration_dtype()
        if cal_dtype is None:  # float32 compute: the reference is its own calibration (the floors decide)
            cal_conts, label = reference.continuations, "HF float32 (= reference)"
        else:
            calibration_run = cached_reference(target.model, prompts, max_tokens=settings.max_tokens,
                                               top_k=settings.top_k, cache_dir=cache_dir, refresh=refresh,
                                               device=device, dtype=cal_dtype)
            cal_conts = calibration_run.continuations
            label = f"HF {cal_dtype} ({calibration_run.key.device})"
            notes.append(f"calibration: {'cached' if calibration_run.from_cache else 'computed'} "
                         f"{calibration_run.path.name}")
        calibration = calibrate(reference.continuations, candidates, cal_conts, label=label,
                                margin=settings.calibration_margin, swing_margin=settings.swing_margin,
                                alpha=settings.alpha, uncovered=parts.uncovered(), exact=cal_dtype is None)
        if settings.tolerance_nats is None and calibration.swing_units > 0:
            tolerance = ToleranceModel(parts.coarsest(), layers, settings.tolerance_scale, None,
                                       calibrated_units=calibration.swing_units, uncovered=parts.uncovered())
    report = compare_all(target.name, [(p.id, p.token_ids) for p in prompts], reference.continuations, candidates,
                         tolerance, top_k=settings.top_k, max_tokens=settings.max_tokens,
                         min_exact_match_rate=settings.exact_match_floor, notes=notes, calibration=calibration,
                         precision_lines=parts.lines())
    try:
        decode = decoder(target.model)
    except Exception:  # noqa: BLE001  (no tokenizer: the report shows token ids instead)
        decode = None
    return EquivalenceRun(report, reference, tuple(candidates), calibration_run, server_s,
                          time.perf_counter() - started, decode)


def _prompt_file(target: Target, settings: EquivalenceSettings, default: str | Path | None) -> Path:
    if settings.prompts:
        path = Path(settings.prompts).expanduser()
        if not path.is_absolute() and not target.source.startswith("<"):
            path = Path(target.source).parent / path
        return path
    if default is None:
        raise ReferenceError(f"target {target.name!r}: no prompt set; set options.equivalence.prompts to a JSONL file")
    return Path(default)


def max_model_len(target: Target) -> int | None:
    """The server's length limit: vLLM --max-model-len, the engine's max_seq_len, or max_position_embeddings."""
    args = list(target.args)
    for i, arg in enumerate(args):
        if arg == "--max-model-len" and i + 1 < len(args):
            return int(args[i + 1])
        if arg.startswith("--max-model-len="):
            return int(arg.split("=", 1)[1])
    engine = _engine_config(target)
    if engine is not None:
        build = engine.get("build_config") or engine.get("builder_config") or {}
        value = build.get("max_seq_len") or build.get("max_position_embeddings")
        return int(value) if value else None
    if target.model and (Path(target.model) / "config.json").is_file():
        try:
            value = json.loads((Path(target.model) / "config.json").read_text("utf-8")).get("max_position_embeddings")
        except (OSError, ValueError):
            return None
        return int(value) if value else None
    return None


def _engine_config(target: Target) -> dict | None:
    """A TensorRT-LLM engine's config.json (engine `dir`, else the model dir if it is an engine), or None."""
    for folder in (target.engine.get("dir"), target.model):
        path = Path(str(folder)) / "config.json" if folder else None
        if path is None or not path.is_file():
            continue
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and ("pretrained_config" in data or "builder_config" in data):
            return data
    return None
