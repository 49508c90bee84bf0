"""The H200 run of issue #20: a random 1.05 B Llama under `transformers serve`, graphs on vs off, and more.

Run from the repository root (PYTHONPATH=.); docs/h200_run.md shows the device call that ran it.
    python docs/h200_run.py model DIR [--layers 22 --hidden 2048 ...]   random checkpoint, no EOS
    python docs/h200_run.py calibrate --model DIR --json F          HF bf16 vs HF fp32, same device, by depth
    python docs/h200_run.py sweep --model DIR --out D               two servers (graphs on / off), llmserve sweep
    python docs/h200_run.py all --out D                             what the device call ran: all of the above
    python docs/h200_run.py slo --model DIR --out D [--marker workload]   pytest -m slo (or workload) suites/ against transformers serve
    python docs/h200_run.py graphs SWEEP.json                       timing-based CUDA-graph verdict, on vs off
Every subcommand takes --device (cuda; cpu for a smoke run with a tiny --layers/--hidden model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "fixtures" / "tiny-llama"
PROMPTS = ROOT / "fixtures" / "prompts" / "stdlib-64.jsonl"
HF_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
LEVELS = "1,2,4,8,16,32"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- model
def build_model(out: Path, *, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int,
                device: str, seed: int = 0) -> Path:
    """A randomly initialised Llama with the tiny model's tokenizer, bf16, no EOS: every request decodes max_tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    src = json.loads((TOKENIZER / "config.json").read_text())
    config = LlamaConfig(vocab_size=src["vocab_size"], hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, bos_token_id=src["bos_token_id"], eos_token_id=None,
                         pad_token_id=src["pad_token_id"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)
    model.generation_config.eos_token_id = None
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER / name, out / name)
    gen = out / "generation_config.json"  # no eos_token_id at all: nothing can stop a request before max_tokens
    gen.write_text(json.dumps({k: v for k, v in json.loads(gen.read_text()).items() if k != "eos_token_id"}, indent=2))
    n = sum(p.numel() for p in model.parameters())
    log(f"model: {out} ({n / 1e9:.3f} B parameters, {layers} layers, hidden {hidden})")
    del model
    return out


# ------------------------------------------------------------------------------------------ calibrate
def _truncated(model: Any, depth: int) -> Any:
    """The same model with only its first `depth` decoder layers (same weights: only depth changes)."""
    import torch

    model.model.layers = torch.nn.ModuleList(list(model.model.layers)[:depth])
    model.config.num_hidden_layers = depth
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types)[:depth]
    return model


def _greedy(model_dir: Path, ids: Sequence[Sequence[int]], dtype: str, depth: int, device: str, max_tokens: int,
            top_k: int) -> list[Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from pytest_llmserve.reference.hf import DEFAULT_BATCH_SIZE, _batches, _fp32_matmul, _greedy_batch

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).to(device).eval()
    model = _truncated(model, depth)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # as hf_greedy batches: longest together
    out: list[Any] = [None] * len(ids)
    with _fp32_matmul(device), torch.inference_mode():
        for chunk in _batches(order, DEFAULT_BATCH_SIZE):
            for i, cont in zip(chunk, _greedy_batch(model, [list(ids[i]) for i in chunk], max_tokens, top_k, pad,
                                                    device)):
                out[i] = cont
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def calibrate(model_dir: Path, depths: Sequence[int], *, device: str, max_tokens: int, top_k: int,
              limit: int | None = None) -> dict[str, Any]:
    """HF bf16 vs HF fp32 (TF32 off) on one device and one bf16 checkpoint, through the equivalence rule, by depth."""
    import torch

    from pytest_llmserve.checks.equivalence import compare_all
    from pytest_llmserve.checks.near_tie import DEFAULT_MIN_EXACT_MATCH_RATE, ToleranceModel
    from pytest_llmserve.reference.hf import decoder, load_prompts

    import transformers

    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the recorded log
    helpers = runpy.run_path(str(ROOT / "docs" / "h100_equivalence.py"))  # swing_units, quantiles
    prompts = load_prompts(PROMPTS, model_dir)[:limit]
    ids = [p.token_ids for p in prompts]
    pairs = [(p.id, p.token_ids) for p in prompts]
    decode = decoder(model_dir)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else device,
                              "torch": torch.__version__, "model": str(model_dir), "prompts": len(prompts),
                              "max_tokens": max_tokens, "top_k": top_k, "depths": {}}
    for depth in depths:
        t0 = time.perf_counter()
        ref = _greedy(model_dir, ids, "float32", depth, device, max_tokens, top_k)
        cand = _greedy(model_dir, ids, "bfloat16", depth, device, max_tokens, top_k)
        tol = ToleranceModel("bfloat16", depth)
        report = compare_all(f"hf-bf16-{depth}l", pairs, ref, cand, tol, top_k=top_k, max_tokens=max_tokens,
                             min_exact_match_rate=DEFAULT_MIN_EXACT_MATCH_RATE,
                             notes=(f"reference HF fp32 (TF32 off) on {result['device']}, same bf16 weights",))
        d = report.to_dict()
        agreed = sum(next((i for i, (a, b) in enumerate(zip(r.tokens, c.tokens)) if a != b), len(r.tokens))
                     for r, c in zip(ref, cand))
        divs = [x for x in d["divergences"] if x.get("swing") is not None]
        scales = [abs(s) for r in ref for s in r.logit_scale]
        result["depths"][str(depth)] = {
            "exact": d["exact"], "near_ties": d["near_ties"], "hard_mismatches": d["hard_mismatches"],
            "prompts": d["prompts"], "passed": d["passed"], "tolerance": d["tolerance"],
            "agreed_tokens": agreed, "tokens_compared": len(prompts) * max_tokens,
            "mean_matched_prefix": d["mean_matched_prefix"], "max_logprob_drift": d["max_logprob_drift"],
            "logit_scale_max": round(max(scales), 3) if scales else None,
            "logit_scale_median": round(sorted(scales)[len(scales) // 2], 3) if scales else None,
            # the same swings in two units: u*max(1,|L|) (no depth factor) and u*max(1,|L|)*sqrt(depth)
            "swing_u_L": helpers["quantiles"](helpers["swing_units"](ref, cand, "bfloat16", 1)),
            "swing_u_L_sqrt_n": helpers["quantiles"](helpers["swing_units"](ref, cand, "bfloat16", depth)),
            "divergence_swing_over_tol_max": round(max((x["swing"] / x["tolerance"] for x in divs), default=0.0), 3),
            "divergence_swing_u_L_max": round(max((x["swing"] / x["tolerance"] * tol.scale * math.sqrt(depth)
                                                   for x in divs), default=0.0), 3),
            "divergence_ref_gap": sorted(round(x["reference_gap"], 4) for x in divs if x.get("reference_gap") is not None),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log(f"calibrate depth {depth}: {json.dumps(result['depths'][str(depth)])}")
        print(report.render(decode), flush=True)
    return result


# ---------------------------------------------------------------------------------------------- serve
class Server:
    """One `transformers serve` process in its own process group, its log in a file."""

    def __init__(self, model_dir: Path, port: int, *, graphs: bool, device: str, memory: float, log_path: Path):
        exe = shutil.which("transformers")
        launcher = [exe] if exe else [sys.executable, "-c", "import sys; from transformers.cli.transformers import main;"
                                      " sys.argv[0] = 'transformers'; sys.exit(main())"]
        self.cmd = [*launcher, "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", device,
                    "--dtype", "bfloat16", "--continuous-batching",
                    "--cb-use-cuda-graph" if graphs else "--no-cb-use-cuda-graph", "--cb-max-memory-percent", str(memory)]
        self.url, self.log_path = f"http://127.0.0.1:{port}", log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **HF_ENV})
        self.started = time.monotonic()
        log(f"started {' '.join(self.cmd[-12:])} (pid {self.proc.pid})")

    def wait_ready(self, timeout_s: float) -> float:
        import httpx

        while time.monotonic() - self.started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.url} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.url} not healthy after {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def _sweep_args(on: Server, off: Server, model: str, out: Path, a: argparse.Namespace, hardware: str) -> list[str]:
    return ["sweep", "--url", f"graphs-on={on.url}", "--url", f"graphs-off={off.url}", "--model", model,
            "--concurrency", a.levels, "--requests-per-level", str(a.requests_per_level), "--input-len", "64",
            "--output-len", str(a.output_len), "--endpoint", "chat", "--no-ignore-eos", "--no-server-metrics",
            "--workers", str(a.workers), "--seed", str(a.seed), "--hardware", hardware, "--title",
            f"transformers serve, random 1.05 B Llama, CUDA graphs on vs off ({hardware or a.device})",
            "--out", str(out), "--progress-interval", "30"]


def run_sweep_pair(model_dir: Path, out: Path, a: argparse.Namespace, hardware: str, during: Any = None) -> int:
    """Start both servers, run `during()` while they start (GPU work that must not overlap the sweep), sweep."""
    from pytest_llmserve import cli

    out.mkdir(parents=True, exist_ok=True)
    logs = Path(a.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    on = Server(model_dir, a.port, graphs=True, device=a.device, memory=a.memory, log_path=logs / "serve-graphs-on.log")
    off = Server(model_dir, a.port + 1, graphs=False, device=a.device, memory=a.memory,
                 log_path=logs / "serve-graphs-off.log")
    try:
        if during is not None:
            during()
        for s in (on, off):
            log(f"{s.url} healthy after {s.wait_ready(a.startup_timeout):.1f} s")
        code = cli.main(_sweep_args(on, off, str(model_dir), out, a, hardware))
        log(f"llmserve sweep exit {code}")
        return code
    finally:
        for s in (on, off):
            s.stop()


# ------------------------------------------------------------------------------------------------ slo
SLO_TOML = """# written by docs/h200_run.py slo: a bare openai target at a transformers serve already running
baselines_dir = "{baselines}"
hardware = "auto"
# the statistical gate's defaults (margins 10 % on TTFT p95, ITL p50, output tok/s; alpha 0.05; power 0.9)
# with a per-test budget that fits one device call: 2 levels x (record + gate)
baseline_gate = {{ budget_s = {budget:g}, repeats = {repeats} }}

[[targets]]
name = "hf-serve-1b"
kind = "openai"
url = "{url}"
model = "{model}"
concurrency = [{levels}]
# absolute limits of this 1.05 B model on one H200 (graphs on: ITL ~20 ms, TTFT p95 < 0.3 s up to c=32)
slo = {{ ttft_p95_ms = 1000, itl_p95_ms = 100, e2e_p95_ms = {e2e_limit:g}, max_error_rate = 0.0 }}
# suites/test_workloads.py (the `workload` marker): the profiles that fit a 2048-position model in one call,
# 16 requests each (batch at 16 in flight); /v1/models does not answer here, so max_model_len is given
workloads = {{ profiles = ["chat", "rag", "batch", "multi-turn"], requests = 16, max_model_len = 2048, batch = {{ concurrency = 16 }} }}
"""


def run_slo(model_dir: Path, out: Path, a: argparse.Namespace) -> int:
    """transformers serve (graphs on), a bare openai target: the baseline recorded over `--starts` pytest runs
    (--update-baselines, then --llmserve-add-start), then the gate in a run of its own."""
    out.mkdir(parents=True, exist_ok=True)
    server = Server(model_dir, a.port, graphs=True, device=a.device, memory=a.memory, log_path=out / f"serve-{a.marker}.log")
    codes = []
    try:
        log(f"{server.url} healthy after {server.wait_ready(a.startup_timeout):.1f} s")
        configs = {}
        for step, budget in (("record", a.record_budget_s), ("gate", a.budget_s)):
            configs[step] = out / f"llmserve-{step}.toml"
            configs[step].write_text(SLO_TOML.format(baselines=out / "baselines", url=server.url, model=model_dir,
                                                     levels=", ".join(a.slo_levels.split(",")), budget=budget,
                                                     repeats=a.repeats, e2e_limit=5000 if a.marker == "slo" else 60000))
        from importlib.metadata import entry_points

        # not pip-installed (the device runs from the copied tree): load the plugin by name
        load = [] if any(e.name == "llmserve" for e in entry_points(group="pytest11")) else ["-p", "pytest_llmserve.plugin"]
        base = [sys.executable, "-m", "pytest", *load, "-p", "no:cacheprovider", "-m", a.marker,
                str(ROOT / "suites"), "-rA", "-q",
                "--llmserve-baselines-dir", str(out / "baselines")]  # the repo's ini must not send them elsewhere
        # the baseline over `--starts` separate pytest runs (the first replaces, the others add a start), so the
        # gate's noise model holds the spread between runs; then the gate, a run of its own
        steps = [("update", ["--update-baselines"])] + [(f"add-start-{k + 1}", ["--llmserve-add-start"])
                                                        for k in range(1, a.starts)]
        steps += [("gate" if g == 0 else f"gate-{g + 1}", []) for g in range(a.gates)]
        for step, extra in steps:
            extra += ["--llmserve-config", str(configs["gate" if step.startswith("gate") else "record"]),
                      "--llmserve-report-md", str(out / f"{a.marker}-{step}.md"),
                      "--llmserve-report-json", str(out / f"{a.marker}-{step}.json")]
            log("$ " + " ".join(base + extra))
            t0 = time.monotonic()
            codes.append(subprocess.call(base + extra, cwd=ROOT, env={**os.environ, **HF_ENV}))
            log(f"pytest ({step}) exit {codes[-1]} after {time.monotonic() - t0:.1f} s")
    finally:
        server.stop()
    return max(codes) if codes else 3


# ---------------------------------------------------------------------------------------------- main
def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=5632)


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--memory", type=float, default=0.2, help="--cb-max-memory-percent of each server")
    p.add_argument("--startup-timeout", type=float, default=240.0)
    p.add_argument("--log-dir", default="/tmp/h200-logs")


def _sweep_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levels", default=LEVELS)
    p.add_argument("--requests-per-level", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="prompt seed (another seed: an independent replicate)")


def _label() -> str:
    from pytest_llmserve.hardware import detect_inventory, hardware_label

    try:
        return hardware_label(detect_inventory())
    except Exception as exc:  # no NVML (the CPU smoke run): say so in the label
        return f"unknown ({type(exc).__name__})"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("dir")
    c = sub.add_parser("calibrate")
    c.add_argument("--model", required=True)
    c.add_argument("--json", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    al = sub.add_parser("all")
    al.add_argument("--out", required=True)
    al.add_argument("--model-dir", default="/tmp/h200-model")
    sl = sub.add_parser("slo")
    sl.add_argument("--model", required=True)
    sl.add_argument("--out", required=True)
    sl.add_argument("--slo-levels", default="1,16", help="the target's concurrency list for suites/test_slo.py")
    sl.add_argument("--budget-s", type=float, default=70.0, help="baseline_gate.budget_s: seconds per test and step")
    sl.add_argument("--repeats", type=int, default=5, help="baseline_gate.repeats: rounds each recording run records")
    sl.add_argument("--starts", type=int, default=3, help="separate recording runs (pytest starts) of the baseline")
    sl.add_argument("--gates", type=int, default=1, help="separate gate runs against the recorded baseline")
    sl.add_argument("--record-budget-s", type=float, default=1.0,
                    help="baseline_gate.budget_s while recording (1: exactly --repeats rounds per run)")
    sl.add_argument("--marker", default="slo", choices=("slo", "workload"),
                    help="which ready-made suite: slo (test_slo.py) or workload (test_workloads.py, the profiles that fit)")
    for q in (m, c, s, al, sl):
        q.add_argument("--device", default="cuda")
    for q in (m, al):
        _model_args(q)
    for q in (s, al, sl):
        _serve_args(q)
    for q in (s, al):
        _sweep_opts(q)
    for q in (c, al):
        q.add_argument("--depths", default="1,4,8,16,22", help="decoder layers kept (the first N) per calibration")
        q.add_argument("--max-tokens", type=int, default=64)
        q.add_argument("--top-k", type=int, default=5)
        q.add_argument("--limit", type=int, help="first N prompts only")
    g = sub.add_parser("graphs")
    g.add_argument("sweep", help="a sweep.json with a graphs-on and a graphs-off target")
    g.add_argument("--target", default="graphs-on")
    g.add_argument("--control", default="graphs-off")
    a = p.parse_args(argv)
    if a.cmd == "graphs":
        from pytest_llmserve.checks.graph_timing import decide_sweep
        from pytest_llmserve.gates.sweep import SweepResult

        result = SweepResult.from_dict(json.loads(Path(a.sweep).read_text()))
        for target, control in ((a.target, a.control), (a.control, a.target)):
            verdict = decide_sweep(result, target, control)
            print(f"target {target}, control {control}: {verdict.describe()}\n{verdict.table()}\n")
        return 0
    depths = [int(x) for x in getattr(a, "depths", "1").split(",")]

    def model_from_args(where: Path) -> Path:
        return build_model(where, layers=a.layers, hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads,
                           intermediate=a.intermediate, device=a.device)

    def calib(model_dir: Path, path: Path) -> None:
        res = calibrate(model_dir, [d for d in depths if d <= json.loads((model_dir / "config.json").read_text())
                                    ["num_hidden_layers"]], device=a.device, max_tokens=a.max_tokens,
                        top_k=a.top_k, limit=a.limit)
        path.write_text(json.dumps(res, indent=1) + "\n")
        log(f"wrote {path}")

    if a.cmd == "model":
        model_from_args(Path(a.dir))
        return 0
    if a.cmd == "calibrate":
        calib(Path(a.model), Path(a.json))
        return 0
    if a.cmd == "sweep":
        return run_sweep_pair(Path(a.model), Path(a.out), a, _label())
    if a.cmd == "slo":
        return run_slo(Path(a.model), Path(a.out), a)
    # all: inventory, model, servers starting while the calibration runs, then the sweep
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        inv = runpy.run_path(str(ROOT / "docs" / "h100_run.py"))["main"]()
    except Exception as exc:  # the CPU smoke run has no NVML
        inv = {"error": f"{type(exc).__name__}: {exc}"}
    (out / "inventory.json").write_text(json.dumps(inv, indent=2) + "\n")
    log(f"inventory: label {inv.get('label')!r}")
    model_dir = model_from_args(Path(a.model_dir))
    log(f"model built at {time.monotonic() - t0:.0f} s")

    def during() -> None:
        try:
            calib(model_dir, out / "calibration.json")
        except Exception as exc:  # the sweep is worth having even if the calibration breaks
            log(f"calibration failed: {type(exc).__name__}: {exc}")

    code = run_sweep_pair(model_dir, out / "sweep", a, str(inv.get("label") or ""), during=during)
    with (out / "servers.log").open("w") as fh:  # the two server logs' tails, one file
        for name in ("serve-graphs-on.log", "serve-graphs-off.log"):
            text = (Path(a.log_dir) / name).read_text(errors="replace").splitlines()
            fh.write(f"===== {name} ({len(text)} lines; first 40 and last 80)\n")
            fh.write("\n".join(text[:40] + ["..."] + text[-80:]) + "\n")
    log(f"all done at {time.monotonic() - t0:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
