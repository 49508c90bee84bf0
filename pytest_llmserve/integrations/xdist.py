"""pytest-xdist: one GPU slice and its own servers per worker; results and baseline usage merged on the controller.

With ``-n N`` the controller shares the GPUs out evenly (`hardware.plan_gpu_slices`) and hands each
worker its slice through ``node.workerinput``; the worker sets ``CUDA_VISIBLE_DEVICES`` in its own
``os.environ`` during ``pytest_configure``, before any server starts, so every server it launches
inherits the slice (backends build the server's environment from ``os.environ`` + ``target.env``).
The worker's inventory is narrowed to its slice, so ``gpu`` markers are judged against the GPUs
its servers can use, while the baseline label stays the machine's: ``-n 4`` and a serial run file
baselines under the same label. On a machine without GPUs no slice is set.

Worker restarts: xdist gives a replacement for a crashed worker a new, higher id (``gw<N>`` with
N >= the worker count). Its predecessor's servers may outlive the crash and still hold that slice,
so the replacement gets no GPU (``CUDA_VISIBLE_DEVICES=""``) and its tests that need a server fail
with the reason; the run is still reported, and rerunning the session reassigns GPUs.

Merging: each worker sends, in ``workeroutput``, its check results, collected test ids, the store's
ledger (used and changed entries of baselines and accuracy references), leftover processes, probed
server capabilities and start-up failures, and pytest-benchmark entries (one JSON string: any
``ResultEntry.data`` survives the trip). The controller merges them in ``pytest_testnodedown``, so
its terminal summary, report files and unused-entry detection see the whole run (a crashed worker sends nothing: its results are
missing, while any baseline file it wrote is complete, and collected ids still arrive from the
others, which collect the same tests). Store files need no merging: ``entry_store.write_entry`` is a
locked read-modify-write with an atomic rename, safe across worker processes. Only local (``popen``)
workers get slices; with remote ``--tx`` specs each host keeps all of its GPUs.

No server is shared between workers. The xdist "run once" recipe (a FileLock around a session
fixture) has no teardown story: the first worker to finish stops the server while others still
load it (pytest-xdist #489), and a crashed owner leaves it running. One server per worker on its
own slice costs start-up time per worker but measures each server alone, which SLO gates need.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import Any, MutableMapping

import pytest

from . import benchmark as benchmark_bridge
from ..hardware import plan_gpu_slices, select_visible
from ..servers.capabilities import Capabilities
from ..session import LlmserveSession, ResultEntry

SLOT_KEY = "llmserve_gpu_slot"  # in node.workerinput
OUTPUT_KEY = "llmserve"  # in config.workeroutput
SERVER_FIXTURES = ("_llm_server_session", "llm_servers")
_WORKER_ID = re.compile(r"gw(\d+)")


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """The controller's decision for one worker: its CUDA_VISIBLE_DEVICES, or why it gets no GPU."""

    worker_id: str
    visible_devices: str | None  # None: leave CUDA_VISIBLE_DEVICES alone (no GPUs, or remote workers)
    refusal: str | None = None


def slot_for_worker(worker_id: str, plan: list[str] | None) -> WorkerSlot:
    """Slice k of the plan for worker gw<k> when k < len(plan); any other id is refused a GPU."""
    if plan is None:
        return WorkerSlot(worker_id, None)
    match = _WORKER_ID.fullmatch(worker_id)
    if match and int(match[1]) < len(plan):
        return WorkerSlot(worker_id, plan[int(match[1])])
    owners = "gw0 has" if len(plan) == 1 else f"gw0..gw{len(plan) - 1} have"
    why = (
        f"xdist worker {worker_id} gets no GPU slice: only {owners} one, and a later id "
        "replaces a crashed worker whose servers may still hold its GPUs. Rerun the session to reassign GPUs "
        "(--max-worker-restart=0 stops at the first crash instead)"
    )
    return WorkerSlot(worker_id, "", refusal=why)


def gpu_plan(state: LlmserveSession, pconfig: pytest.Config) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES per local worker, or None (no GPUs or remote workers); UsageError if too many workers."""
    import execnet
    from xdist.workermanage import parse_tx_spec_config

    specs = [execnet.XSpec(s) for s in parse_tx_spec_config(pconfig)]
    if not all(spec.popen for spec in specs):
        return None
    try:
        return plan_gpu_slices(state.hardware.inventory, len(specs))
    except ValueError as exc:
        raise pytest.UsageError(f"llmserve: {exc}") from None


def configure(pconfig: pytest.Config, state: LlmserveSession) -> None:
    """Called from pytest_configure once the session exists: controller or worker setup, else nothing."""
    if not pconfig.pluginmanager.hasplugin("xdist"):
        return
    workerinput = getattr(pconfig, "workerinput", None)
    if workerinput is not None:
        raw = workerinput.get(SLOT_KEY)
        slot = WorkerSlot(**raw) if raw else WorkerSlot(workerinput["workerid"], None)
        apply_slot(state, slot)
        pconfig.pluginmanager.register(WorkerHooks(state, slot), "llmserve-xdist-worker")
    elif _distributing(pconfig):
        pconfig.pluginmanager.register(ControllerHooks(state, gpu_plan(state, pconfig)), "llmserve-xdist-controller")


def _distributing(pconfig: pytest.Config) -> bool:
    return (pconfig.getoption("dist", "no") != "no" and bool(pconfig.getoption("tx", None))
            and not pconfig.getoption("collectonly"))


def apply_slot(state: LlmserveSession, slot: WorkerSlot, environ: MutableMapping[str, str] = os.environ) -> None:
    """Set CUDA_VISIBLE_DEVICES for this worker's servers and narrow the inventory its markers see."""
    state.xdist_worker = slot.worker_id
    if slot.visible_devices is None:
        return
    environ["CUDA_VISIBLE_DEVICES"] = slot.visible_devices
    inv = state.hardware.inventory
    if slot.refusal is not None:
        narrowed = dataclasses.replace(inv, gpus=(), source=f"{inv.source}; {slot.refusal}")
    else:
        gpus, note = select_visible(inv.gpus, slot.visible_devices)
        narrowed = dataclasses.replace(inv, gpus=gpus, source=f"{inv.source}; xdist {slot.worker_id} slice {note}")
    state.narrow_inventory(narrowed)


class ControllerHooks:
    """Registered on the xdist controller: hands out slices, merges what workers send back."""

    def __init__(self, state: LlmserveSession, plan: list[str] | None) -> None:
        self.state = state
        self.plan = plan
        self.merged: set[str] = set()

    def pytest_report_header(self) -> str:
        if self.plan is None:
            return "llmserve xdist: no GPU slices (no GPUs, or remote workers); one server per worker, never shared"
        slices = "; ".join(f"gw{i} CUDA_VISIBLE_DEVICES={s}" for i, s in enumerate(self.plan))
        return f"llmserve xdist: one GPU slice and one server per worker: {slices}"

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[SLOT_KEY] = dataclasses.asdict(slot_for_worker(node.gateway.id, self.plan))

    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        # Called twice for a worker interrupted after finishing; a crashed worker sends nothing.
        payload = getattr(node, "workeroutput", {}).get(OUTPUT_KEY)
        worker = node.gateway.id
        if payload is None or worker in self.merged:
            return
        self.merged.add(worker)
        merge_worker_output(self.state, json.loads(payload), node.config)


class WorkerHooks:
    """Registered on an xdist worker: refuses servers without a slice, sends results at the end."""

    def __init__(self, state: LlmserveSession, slot: WorkerSlot) -> None:
        self.state = state
        self.slot = slot

    @pytest.hookimpl(tryfirst=True)  # before fixtures start a server
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if self.slot.refusal and any(name in getattr(item, "fixturenames", ()) for name in SERVER_FIXTURES):
            pytest.fail(self.slot.refusal, pytrace=False)

    @pytest.hookimpl(trylast=True)  # after plugin.pytest_sessionfinish has stopped the servers
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        order = [item.nodeid for item in getattr(session, "items", [])]  # absent when collection failed
        session.config.workeroutput[OUTPUT_KEY] = worker_output(  # type: ignore[attr-defined]  # set by xdist on a worker
            self.state, session.config, order)


def worker_output(state: LlmserveSession, pconfig: pytest.Config, order: list[str]) -> str:
    """Everything the controller needs from this worker, as one JSON string."""
    payload = {
        "worker": state.xdist_worker,
        "order": order,
        # no asdict: it deep-copies ResultEntry.data, which may hold objects json turns into text anyway
        "results": [{f.name: getattr(e, f.name) for f in dataclasses.fields(e)} for e in state.results],
        "collected_ids": sorted(state.collected_ids),
        **state.store.ledger.to_dict(),  # "used" and "changes" of baselines and accuracy references
        "leftovers": state.leftovers,
        "probed": {name: caps.to_dict() for name, caps in state.pool.probed.items()},
        "server_failures": state.pool.failures,
        "benchmarks": [entry.to_dict() for entry in benchmark_bridge.recorded(pconfig)],
    }
    return json.dumps(payload, default=str)


def merge_worker_output(state: LlmserveSession, payload: dict[str, Any], pconfig: pytest.Config) -> None:
    """Fold one worker's output into the controller's session (results kept in collection order)."""
    worker = payload["worker"]
    state.note_collected(payload["collected_ids"])
    state.store.ledger.merge(payload)
    state.note_leftovers(payload["leftovers"], worker)
    state.pool.merge_remote({name: Capabilities.from_dict(caps) for name, caps in payload["probed"].items()},
                            payload["server_failures"])
    # every worker collects the same items, so any worker's order ranks them all
    state.merge_results([ResultEntry(**entry) for entry in payload["results"]], payload["order"])
    benchmark_bridge.publish(pconfig, [benchmark_bridge.LoadBenchmark.from_dict(b) for b in payload["benchmarks"]])
