"""Session-end output: terminal summary, store changes, unused store entries, JSON and Markdown files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..store.entries import EntryChange
from ..session import LlmserveSession, ResultEntry


ROW_HEAD = ("", "target", "test", "metric", "measured", "limit", "baseline", "vs baseline", "verdict")
UNUSED_BASELINES = "unused baseline entries (no collected test uses them; delete them or restore the test)"
UNUSED_REFERENCES = ("unused accuracy reference entries (their file and precision were checked, their task was not; "
                     "delete them or restore the task)")
_BAD = ("FAIL", "regression", "missing", "fail", "inconclusive", "not measurable")


def entry_rows(entry: ResultEntry) -> list[dict[str, Any]]:
    """Rows of the combined table for one check: its `data["rows"]`, else one line naming the check."""
    rows = list(entry.data.get("rows") or [{"metric": entry.kind, "verdict": "pass" if entry.passed else "fail"}])
    if not entry.passed and not any(str(r.get("verdict")) in _BAD for r in rows):
        rows.append({"metric": "(check)", "verdict": "fail"})  # failed for a reason outside the rows (invalid run)
    return [{"target": entry.target, "test": entry.nodeid, "kind": entry.kind, "passed": entry.passed, **r}
            for r in rows]


def _num(v: Any) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, str):
        return v
    if v != v:  # NaN
        return "n/a"
    return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 0.01 and v else f"{v:.2f}"


def _clip(text: str, n: int = 110) -> str:
    """Shorten for a summary cell; the full text is in the collapsed details."""
    text = str(text).removeprefix("run invalid for SLO checks: ")
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _md(text: str) -> str:
    """A Markdown table cell: a literal | would end the cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _short(nodeid: str) -> str:
    """tests/suites/test_slo.py::test_x[a] -> test_slo.py::test_x[a] (the directory rarely helps)."""
    path, sep, rest = nodeid.partition("::")
    return Path(path).name + sep + rest


def combined_rows(state: LlmserveSession) -> list[tuple[str, ...]]:
    """One text row per metric of every check: mark, target, test, metric, measured, limit, baseline, verdict."""
    out: list[tuple[str, ...]] = []
    for entry in state.results:
        for r in entry_rows(entry):
            out.append(("x" if str(r.get("verdict")) in _BAD else "", entry.target,
                        _short(entry.nodeid), str(r.get("metric")), _num(r.get("measured")), _num(r.get("limit")),
                        _num(r.get("baseline")), _versus(r), str(r.get("verdict", ""))))
    return out


def _with_versus(rows: list[tuple[str, ...]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The head and rows, with the "vs baseline" column only when some row was compared statistically."""
    if any(r[7] for r in rows):
        return ROW_HEAD, rows
    return ROW_HEAD[:7] + ROW_HEAD[8:], [r[:7] + r[8:] for r in rows]


def _versus(r: dict[str, Any]) -> str:
    """The statistical comparison in one cell: change [CI], margin (gated metrics), smallest detectable change."""
    if not r.get("change"):
        return ""
    margin = f", margin {r['margin']:.0%}" if r.get("margin") is not None else ""
    seen = f", detects {r['detectable']:.1%}" if r.get("detectable") is not None else ""
    return f"{r['change']}{margin}{seen}"


def format_table(head: tuple[str, ...], rows: list[tuple[str, ...]], numeric: tuple[int, ...] = (4, 5, 6)) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in [head, *rows]]


def change_lines(change: EntryChange) -> list[str]:
    """`metric: old -> new (+x.x %)` for each metric that moved; unchanged ones counted, not listed."""
    lines, same = [], 0
    for metric, new in change.new.items():
        old = None if change.old is None else change.old.get(metric)
        if old == new:
            same += 1
            continue
        rel = f" ({(new - old) / abs(old):+.1%})" if _number(old) and old and _number(new) else ""
        lines.append(f"{metric}: {'(new)' if old is None else old} -> {new}{rel}")
    removed = sorted(set(change.old or {}) - set(change.new))
    lines += [f"{metric}: {change.old[metric]} -> (removed)" for metric in removed]  # type: ignore[index]
    if same:
        lines.append(f"({same} metric{'s' if same > 1 else ''} unchanged)")
    return lines


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def file_label(state: LlmserveSession, path: Path) -> str:
    """A store file as the change list names it: `t.json` for baselines, `accuracy/m.json` for references."""
    try:
        return path.relative_to(state.store.root / state.store.hardware).as_posix()
    except ValueError:
        return path.name


def terminal_summary(reporter: Any, state: LlmserveSession) -> None:
    """One section: a combined table of every check (details with -v), baseline changes, unused, leftovers."""
    if state.xdist_worker is not None:
        return  # the xdist controller prints the merged summary
    unused, unused_refs = unused_baselines(state), unused_accuracy_references(state)
    if not (state.results or state.store.changes or state.leftovers or unused or unused_refs or state.pool.probed):
        return
    reporter.write_sep("=", "llmserve summary")
    reporter.write_line(f"hardware: {state.hardware.label} ({state.hardware.label_source}); "
                        f"baselines: {state.store.root}")
    for name, caps in state.pool.probed.items():  # what each server's API accepts, and why not where it does not
        reporter.write_line(f"server {name}: {caps.describe()}")
        for note in caps.notes:
            reporter.write_line(f"  {note}")
    if state.results:
        failed = sum(1 for e in state.results if not e.passed)
        reporter.write_line(f"{len(state.results)} checks: {len(state.results) - failed} passed, {failed} failed "
                            "(x marks a failing row)")
        head, rows = _with_versus(combined_rows(state))
        for line in format_table(head, rows):
            reporter.write_line(line, red=line.startswith("x "))
    if state.results and getattr(reporter, "verbosity", 0) > 0:  # the full tables, only when asked for
        for entry in state.results:
            reporter.write_line("")
            reporter.write_line(entry.table)
    if state.store.changes:
        reporter.write_line("")
        reporter.write_line("baselines updated (old -> new):")
        for change in state.store.changes:
            reporter.write_line(f"  {file_label(state, change.path)} {change.test_id}")
            for line in change_lines(change):
                reporter.write_line(f"    {line}")
    for found, what in ((unused, UNUSED_BASELINES), (unused_refs, UNUSED_REFERENCES)):
        if found:
            reporter.write_line("")
            reporter.write_line(f"{len(found)} {what}:")
            for path, entry_id in found:
                reporter.write_line(f"  {path}: {entry_id}")
    for name, pids in state.leftovers.items():
        reporter.write_line(f"llmserve: WARNING server {name!r} left processes {pids} running after teardown",
                            red=True)


def unused_baselines(state: LlmserveSession) -> list[tuple[Path, str]]:
    """Stored entries for the selected targets whose test is gone from the collected modules."""
    try:
        return state.store.unused([t.name for t in state.selected], state.collected_ids)
    except Exception:  # noqa: BLE001 - a corrupt file is reported by the test that reads it
        return []


def unused_accuracy_references(state: LlmserveSession) -> list[tuple[Path, str]]:
    """Stored accuracy references of a file and precision this run checked, whose task it did not check."""
    from ..store.accuracy_refs import unused_references

    try:
        return unused_references(state.store)
    except Exception:  # noqa: BLE001 - a corrupt file is reported by the test that reads it
        return []


def write_reports(state: LlmserveSession) -> None:
    """Write the JSON results file and the Markdown report when asked for."""
    if state.report_json:
        failed = sum(1 for e in state.results if not e.passed)
        payload = {
            "schema": 1,
            "hardware": state.hardware.label,
            "hardware_source": state.hardware.label_source,
            "baselines_dir": str(state.store.root),
            "summary": {"checks": len(state.results), "passed": len(state.results) - failed, "failed": failed},
            "rows": [r for e in state.results for r in entry_rows(e)],
            "results": [
                {"nodeid": e.nodeid, "target": e.target, "kind": e.kind, "passed": e.passed, "table": e.table, **e.data}
                for e in state.results
            ],
            "baseline_changes": [
                {"file": str(c.path), "test_id": c.test_id, "old": c.old, "new": c.new} for c in state.store.changes
            ],
            "unused_baselines": [{"file": str(p), "test_id": t} for p, t in unused_baselines(state)],
            "unused_accuracy_references": [{"file": str(p), "key": k} for p, k in unused_accuracy_references(state)],
            "leftover_processes": state.leftovers,
            "servers": {name: caps.to_dict() for name, caps in state.pool.probed.items()},  # probed capabilities
            "server_failures": dict(state.pool.failures),  # start-up or probe refusals, one line each
        }
        state.report_json.parent.mkdir(parents=True, exist_ok=True)
        state.report_json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if state.report_md:
        state.report_md.parent.mkdir(parents=True, exist_ok=True)
        state.report_md.write_text(markdown_report(state, ecdf_images(state)))


def gate_table(e: ResultEntry, image: Path | None, md_path: Path | None) -> list[str]:
    """A failing SLO check's comparison with its stored baseline, with the ECDF figure when one was drawn."""
    gate = e.data.get("baseline_gate") or []
    if e.passed or not gate:
        return []
    ci = (lambda v, lo_hi: f"{_num(v)} [{_num(lo_hi[0])}, {_num(lo_hi[1])}]")  # noqa: E731
    lines = ["", f"**Baseline comparison of `{_short(e.nodeid)}`** ({e.target}; interval of the change at "
             f"{gate[0]['confidence']:.0%}, baseline/run at 95 %)", "",
             "| metric | gated | baseline [95 % CI] | run [95 % CI] | n run/base | change [CI] | margin | detectable | "
             "verdict |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for g in gate:
        lo, hi = g["change_ci"]
        change = f"{g['change']:+.1%} [{lo:+.1%}, {hi:+.1%}]" if lo == lo else f"{g['change']:+.1%}"
        lines.append(f"| {g['metric']} | {'yes' if g['gated'] else 'info'} | {ci(g['baseline'], g['baseline_ci95'])} | "
                     f"{ci(g['measured'], g['measured_ci95'])} | {g['requests'][1]}/{g['requests'][0]} | {change} | "
                     f"{g['margin']:.0%} | {g['min_detectable']:.1%} | {g['verdict']} |")
    if image is not None:
        rel = image.relative_to(md_path.parent) if md_path is not None and image.is_relative_to(md_path.parent) else image
        lines += ["", f"![ECDF of TTFT and per-request ITL, baseline vs run: {_short(e.nodeid)}]({rel.as_posix()})"]
    return lines + [""]


def ecdf_images(state: LlmserveSession) -> dict[str, Path]:
    """PNG ECDFs (baseline vs run, TTFT and per-request ITL) of every failing check that kept samples."""
    if not state.report_md or not state.ecdf_samples:
        return {}
    from .plots import save_ecdf_png

    out = {}
    folder = state.report_md.parent / f"{state.report_md.stem}-ecdf"
    for e in state.results:
        samples = state.ecdf_samples.get(e.nodeid)
        if e.passed or samples is None:
            continue
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in _short(e.nodeid))[:150]
        try:
            out[e.nodeid] = save_ecdf_png(samples, folder / f"{name}.png", title=f"{_short(e.nodeid)} ({e.target})")
        except RuntimeError:  # matplotlib missing: the tables say it all
            continue
    return out


def markdown_report(state: LlmserveSession, images: dict[str, Path] | None = None) -> str:
    """A pull-request comment: verdict line, one row per check (failing metrics named), details collapsed."""
    failed = [e for e in state.results if not e.passed]
    verdict = "❌" if failed or state.leftovers else "✅"
    lines = [f"## {verdict} llmserve: {len(state.results) - len(failed)} of {len(state.results)} checks passed "
             f"(hardware `{state.hardware.label}`)", ""]
    if state.results:
        lines += ["| | check | target | test | what failed |", "|---|---|---|---|---|"]
        for e in state.results:
            bad = [r for r in entry_rows(e) if str(r.get("verdict")) in _BAD]
            why = "; ".join(f"{r['metric']} {_num(r.get('measured'))}"
                            + (f" (limit {r['limit']})" if r.get("limit") not in (None, "", "-") else "")
                            + (f" vs baseline {_num(r.get('baseline'))}" if r.get("baseline") is not None else "")
                            + f": {r['verdict']}" + (f" ({_clip(r['note'])})" if r.get("note") else "") for r in bad) or (
                f"nothing ({len(entry_rows(e))} rows ok)" if e.passed else "see details")
            lines.append(f"| {'✅' if e.passed else '❌'} | {e.kind} | {e.target} | `{_short(e.nodeid)}` | {_md(why)} |")
        head, rows = _with_versus(combined_rows(state))
        for e in state.results:
            lines += gate_table(e, (images or {}).get(e.nodeid), state.report_md)
        lines += ["", f"<details><summary>All metrics ({len(rows)} rows)</summary>", "",
                  "| " + " | ".join(head) + " |", "|---|---|---|---|---:|---|---:|" + ("---|" if len(head) > 8 else "") + "---|"]
        lines += [f"| {'❌' if r[0] else ''} | {_md(r[1])} | `{_md(r[2])}` | " + " | ".join(_md(c) for c in r[3:]) + " |"
                  for r in rows]
        lines += ["", "</details>", ""]
    if state.store.changes:
        lines += ["<details><summary>Baselines updated (old → new)</summary>", ""]
        for change in state.store.changes:
            lines.append(f"- `{file_label(state, change.path)}` `{change.test_id}`: " + "; ".join(change_lines(change)))
        lines += ["", "</details>", ""]
    unused = unused_baselines(state)
    if unused:
        lines += [f"{len(unused)} unused baseline entries: " + ", ".join(f"`{t}`" for _, t in unused), ""]
    unused_refs = unused_accuracy_references(state)
    if unused_refs:
        lines += [f"{len(unused_refs)} unused accuracy reference entries: "
                  + ", ".join(f"`{file_label(state, p)}` `{k}`" for p, k in unused_refs), ""]
    for name, pids in state.leftovers.items():
        lines += [f"⚠️ server `{name}` left processes {pids} running after teardown", ""]
    for e in state.results:
        lines += [f"<details><summary>{'✅' if e.passed else '❌'} {e.kind} <code>{_short(e.nodeid)}</code> "
                  f"({e.target})</summary>", "", "```text", e.table, "```", "", "</details>", ""]
    return "\n".join(lines)
