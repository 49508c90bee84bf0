"""Ready-made precision-change gate: a target is scored against the reference target it names.

Configure the candidate (e.g. FP8) target with the name of its reference (e.g. BF16) target::

    [[tool.llmserve.targets]]
    name = "llama8b-fp8"
    ...
    options = { accuracy_reference = "llama8b-bf16",
                accuracy_tasks = ["tasks/next_token.jsonl"],   # default: fixtures/tasks/*.jsonl
                accuracy_tolerance = 0.01,                      # δ, tolerated drop (0.01 = 1 pp)
                accuracy_alpha = 0.05, accuracy_beta = 0.2, accuracy_concurrency = 4,
                accuracy_detectable = 0.03 }                   # default 3·δ; smaller needs more items

Both servers are scored on the same items through their APIs; the paired gate fails when the
candidate is worse than the reference by more than δ at level α/m over m tasks (Bonferroni); the
bootstrap resamples passages (positions of one passage are correlated) and reports the effective n;
a task that cannot detect a drop of `accuracy_detectable` at power 1 − β is inconclusive (fails). The bundled tasks are tokenized
for the tiny model in fixtures/; for your model build tasks with fixtures/make_tasks.py --model.
Absolute scores are kept in <baselines_dir>/<hardware>/accuracy/<model>.json (--update-baselines).
Targets without `accuracy_reference` are skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmserve.store.accuracy_refs import AccuracyReferences, model_label
from pytest_llmserve.gates.accuracy import compare_targets
from pytest_llmserve.reference.accuracy_tasks import TaskFileError, load_task
from pytest_llmserve.evidence.precision import PrecisionUnknown
from pytest_llmserve.session import ResultEntry, get_session
from pytest_llmserve.settings.suite_options import partner_target_name, require_capabilities
from pytest_llmserve.suites import checkout_fixture

BUNDLED_TASKS = checkout_fixture("tasks")  # the tiny model's tasks; None in an installed package


def _table(target):
    """The target's typed accuracy_* options (checked when the config loaded; here for targets built in code)."""
    try:
        return target.suites.accuracy
    except ValueError as exc:
        pytest.fail(f"target {target.name!r} ({target.source}): {exc}", pytrace=False)


def _task_paths(target) -> list[Path]:
    listed = _table(target).tasks
    if listed is None:
        paths = sorted(BUNDLED_TASKS.glob("*.jsonl")) if BUNDLED_TASKS else []
        if not paths:
            where = BUNDLED_TASKS or "the installed package (the tiny model's tasks ship in a source checkout only)"
            pytest.fail(f"no task files in {where}: set options.accuracy_tasks for target {target.name!r} "
                        "(build them with fixtures/make_tasks.py --model <model dir>)", pytrace=False)
        return paths
    base = Path(target.source).parent if not target.source.startswith("<") else Path.cwd()
    return [p if p.is_absolute() else base / p for p in map(Path, listed)]


@pytest.mark.accuracy
def test_precision_change_keeps_accuracy(request, llm_target, llm_servers):
    reference_name = partner_target_name(llm_target, "accuracy_reference", what="reference to compare with",
                                         placeholder="reference target name",
                                         self_advice="name the baseline-precision target")
    table = _table(llm_target)
    try:
        tasks = [load_task(p) for p in _task_paths(llm_target)]
    except TaskFileError as exc:
        pytest.fail(str(exc), pytrace=False)
    session = get_session(request.config)
    baseline, candidate = llm_servers(reference_name), llm_servers(llm_target.name)
    require_capabilities(candidate, "token_id_prompts", "logprobs", suite="accuracy")
    require_capabilities(baseline, "token_id_prompts", "logprobs", suite="accuracy")
    references = AccuracyReferences.in_store(session.store, model_label(llm_target), alpha=table.alpha)
    try:
        comparisons = compare_targets(baseline, candidate, tasks, tolerance=table.tolerance, alpha=table.alpha,
                                      beta=table.beta, concurrency=table.concurrency, references=references,
                                      require_detectable=table.required_detectable)
    except (PrecisionUnknown, ValueError, RuntimeError) as exc:  # precision unknown, scoring errors, bad options
        pytest.fail(f"{llm_target.name} vs {reference_name}: {exc}", pytrace=False)
    tables = []
    for comp in comparisons:
        table = comp.render()
        tables.append(table)
        session.record(ResultEntry(request.node.nodeid, llm_target.name, "accuracy", comp.passed, table, comp.data()))
    report = "\n\n".join(tables)
    print(report)
    failed = [c.task.name + (" (inconclusive)" if c.gate.verdict == "inconclusive" else "")
              for c in comparisons if not c.passed]
    if failed:
        pytest.fail(f"accuracy of {llm_target.name} vs {reference_name} failed on {', '.join(failed)}:\n{report}",
                    pytrace=False)
