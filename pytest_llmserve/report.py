"""Session-end output: terminal summary, baseline changes, unused baselines, JSON and Markdown files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .session import LlmserveSession


def terminal_summary(reporter: Any, state: LlmserveSession) -> None:
    """One section: every check's table, what --update-baselines changed, what is unused or left over."""
    unused = unused_baselines(state)
    if not (state.results or state.store.changes or state.leftovers or unused):
        return
    reporter.write_sep("=", "llmserve summary")
    reporter.write_line(f"hardware: {state.hardware.label} ({state.hardware.label_source}); "
                        f"baselines: {state.store.root}")
    for entry in state.results:
        reporter.write_line("")
        reporter.write_line(entry.table)
    if state.store.changes:
        reporter.write_line("")
        reporter.write_line("baselines updated (old -> new):")
        for change in state.store.changes:
            reporter.write_line(f"  {change.path.name} {change.test_id}")
            for metric, new in change.new.items():
                old = None if change.old is None else change.old.get(metric)
                reporter.write_line(f"    {metric}: {'(new)' if old is None else old} -> {new}")
    if unused:
        reporter.write_line("")
        reporter.write_line(f"{len(unused)} unused baseline entries (no collected test uses them; delete them or "
                            "restore the test):")
        for path, test_id in unused:
            reporter.write_line(f"  {path}: {test_id}")
    for name, pids in state.leftovers.items():
        reporter.write_line(f"llmserve: WARNING server {name!r} left processes {pids} running after teardown",
                            red=True)


def unused_baselines(state: LlmserveSession) -> list[tuple[Path, str]]:
    """Stored entries for the selected targets whose test is gone from the collected modules."""
    try:
        return state.store.unused([t.name for t in state.selected], state.collected_ids)
    except Exception:  # noqa: BLE001 - a corrupt file is reported by the test that reads it
        return []


def write_reports(state: LlmserveSession) -> None:
    """Write the JSON results file and the Markdown report when asked for."""
    if state.report_json:
        payload = {
            "hardware": state.hardware.label,
            "results": [
                {"nodeid": e.nodeid, "target": e.target, "kind": e.kind, "passed": e.passed, "table": e.table, **e.data}
                for e in state.results
            ],
            "baseline_changes": [
                {"file": str(c.path), "test_id": c.test_id, "old": c.old, "new": c.new} for c in state.store.changes
            ],
            "leftover_processes": state.leftovers,
        }
        state.report_json.parent.mkdir(parents=True, exist_ok=True)
        state.report_json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if state.report_md:
        lines = [f"## llmserve results ({state.hardware.label})", ""]
        for e in state.results:
            lines += [f"### {'✅' if e.passed else '❌'} `{e.nodeid}`", "", "```", e.table, "```", ""]
        state.report_md.parent.mkdir(parents=True, exist_ok=True)
        state.report_md.write_text("\n".join(lines))
