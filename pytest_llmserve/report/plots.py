"""PNG plots of a concurrency sweep: throughput vs concurrency (with crossovers), latency vs throughput,
latency vs concurrency. matplotlib with the Agg backend (no display needed on CI machines)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..gates.sweep import SweepResult


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # an optional dependency: say how to get it
        raise RuntimeError("plots need matplotlib: pip install 'pytest-llmserve[plots]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_sweep_png(result: SweepResult, path: str | Path, *, title: str | None = None) -> Path:
    """Write the three-panel sweep figure to `path` and return it."""
    plt = _pyplot()
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

    fig, (ax_tp, ax_lt, ax_lc) = plt.subplots(1, 3, figsize=(17, 5.2), constrained_layout=True)
    levels = list(result.concurrencies)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, target in enumerate(result.targets):
        color = colors[i % len(colors)]
        cs = [c for c in levels if result.runs(target.name, c)]
        tput = [result.value(target.name, c, "output_tok_s") for c in cs]
        lows = [min(result.values(target.name, c, "output_tok_s") or [math.nan]) for c in cs]
        highs = [max(result.values(target.name, c, "output_tok_s") or [math.nan]) for c in cs]
        yerr = [[t - lo for t, lo in zip(tput, lows)], [hi - t for t, hi in zip(tput, highs)]]
        ax_tp.errorbar(cs, tput, yerr=yerr if result.work.get("repeats", 1) > 1 else None, marker="o",
                       color=color, capsize=3, label=target.name)
        ttft95 = [result.value(target.name, c, "ttft_p95_ms") for c in cs]
        tpot50 = [result.value(target.name, c, "tpot_p50_ms") for c in cs]
        tpot95 = [result.value(target.name, c, "tpot_p95_ms") for c in cs]
        ax_lt.plot(tput, tpot50, marker="o", color=color, label=f"{target.name} TPOT p50")
        for c, x, y in zip(cs, tput, tpot50):
            if math.isfinite(x) and math.isfinite(y):
                ax_lt.annotate(f"c={c}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        ax_lc.plot(cs, ttft95, marker="o", color=color, label=f"{target.name} TTFT p95")
        ax_lc.plot(cs, tpot95, marker="s", linestyle="--", color=color, label=f"{target.name} TPOT p95")
        # a run whose client self-check failed (or that lost requests) is drawn hollow, red-edged
        bad = [i for i, c in enumerate(cs) if not all(p.valid for p in result.runs(target.name, c))]
        for ax, xs, ys in ((ax_tp, cs, tput), (ax_lt, tput, tpot50), (ax_lc, cs, ttft95)):
            ax.scatter([xs[j] for j in bad], [ys[j] for j in bad], s=90, facecolors="white", edgecolors="red",
                       zorder=3, label="run invalid (see notes)" if i == 0 and ax is ax_tp and bad else None)
    for cross in result.crossovers("output_tok_s"):
        mark = {True: "", False: " (within noise)", None: " (unverified)"}[cross.significant]
        ax_tp.axvline(cross.at, color="grey", linestyle=":", linewidth=1)
        ax_tp.annotate(f"{cross.leader_above} overtakes\n{cross.leader_below} at c≈{cross.at:.3g}{mark}", (cross.at, 0.04),
                       xycoords=("data", "axes fraction"), fontsize=7, color="dimgray", rotation=90, va="bottom")
    for ax in (ax_tp, ax_lc):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(levels))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("concurrency (streams in flight, log2 scale)")
    ax_tp.set_ylabel("output throughput (tokens/s)")
    ax_tp.set_title("Throughput vs concurrency" + (" (bars: min–max over runs)" if result.work.get("repeats", 1) > 1 else ""))
    ax_tp.set_ylim(bottom=0)
    ax_lt.set_xlabel("output throughput (tokens/s)")
    ax_lt.set_ylabel("TPOT p50 (ms per output token)")
    ax_lt.set_title("Latency vs throughput (points labelled by concurrency)")
    ax_lt.set_ylim(bottom=0)
    ax_lc.set_yscale("log")
    ax_lc.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax_lc.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_lt.margins(x=0.08, y=0.08)
    ax_lc.set_ylabel("latency (ms, log scale)")
    ax_lc.set_title("TTFT p95 (solid) and TPOT p95 (dashed) vs concurrency")
    for ax in (ax_tp, ax_lt, ax_lc):
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    w = result.work
    fig.suptitle(title or (f"Concurrency sweep: {', '.join(t.name for t in result.targets)} — "
                           f"{w.get('requests_per_level')} requests/level, {w.get('input_len')} in / "
                           f"{w.get('output_len')} out tokens" + (f", {result.hardware}" if result.hardware else "")))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def save_ecdf_png(samples: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Two panels, TTFT and per-request ITL (TPOT): the ECDF of the stored baseline and of this run."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, key, label in zip(axes, ("ttft_ms", "tpot_ms"), ("TTFT (ms)", "ITL per request, mean gap = TPOT (ms)")):
        for side, color in (("baseline", "tab:blue"), ("run", "tab:red")):
            xs = np.sort(np.asarray(samples.get(side, {}).get(key, []), dtype=float))
            if xs.size:
                ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", color=color,
                        label=f"{side} (n={xs.size}, p50 {np.percentile(xs, 50):.3g}, p95 {np.percentile(xs, 95):.3g})")
        for q in (0.5, 0.95):
            ax.axhline(q, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests ≤ x")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "baseline vs run")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
