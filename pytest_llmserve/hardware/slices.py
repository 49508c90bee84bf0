"""Disjoint GPU slices for pytest-xdist workers, as CUDA_VISIBLE_DEVICES values."""

from __future__ import annotations

from .inventory import Inventory


def plan_gpu_slices(inv: Inventory, n_workers: int, gpus_per_worker: int | None = None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES for each of `n_workers` workers (the controller prints this plan); None without GPUs.

    Slices are consecutive runs of the inventory's order, so with CUDA_VISIBLE_DEVICES already set
    on the controller each worker gets a part of what the controller was given. UUIDs are used when
    every GPU has one: they mean the same GPU whatever CUDA_DEVICE_ORDER says, while integer
    indices are NVML's physical (PCI-bus) ones, used only when there are no UUIDs (fakes).
    """
    if not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
    if not inv.gpus:
        return None
    total = len(inv.gpus)
    if gpus_per_worker is None:
        gpus_per_worker = total // n_workers
        if gpus_per_worker == 0:
            raise ValueError(
                f"{n_workers} xdist workers but only {total} GPU{'s' if total != 1 else ''} "
                f"({inv.source}): run with -n {total} or fewer so that each worker gets a GPU"
            )
    elif not isinstance(gpus_per_worker, int) or gpus_per_worker < 1:
        raise ValueError(f"gpus_per_worker must be an integer >= 1, got {gpus_per_worker!r}")
    if gpus_per_worker > total:
        raise ValueError(
            f"each xdist worker needs {gpus_per_worker} GPUs but only {total} "
            f"{'are' if total != 1 else 'is'} visible ({inv.source}): ask for at most {total} per worker"
        )
    if n_workers * gpus_per_worker > total:
        raise ValueError(
            f"{n_workers} xdist workers x {gpus_per_worker} GPUs each need {n_workers * gpus_per_worker} "
            f"GPUs, found {total} ({inv.source}): run with -n {total // gpus_per_worker} or fewer"
        )
    use_uuid = all(gpu.uuid for gpu in inv.gpus)
    ids = [str(gpu.uuid) if use_uuid else str(gpu.index) for gpu in inv.gpus]
    return [",".join(ids[w * gpus_per_worker : (w + 1) * gpus_per_worker]) for w in range(n_workers)]


def gpu_slice_for_worker(
    inv: Inventory, worker_index: int, n_workers: int, gpus_per_worker: int | None = None
) -> str | None:
    """The CUDA_VISIBLE_DEVICES value for xdist worker `worker_index` (gw<N>); None on a CPU-only machine.

    Without `gpus_per_worker` the GPUs are shared out evenly (leftovers stay unused). A worker
    index outside 0..n_workers-1 is an error: xdist gives a restarted worker a new, higher id, and
    sharing out by modulo would put it on a GPU another worker is still using.
    """
    plan = plan_gpu_slices(inv, n_workers, gpus_per_worker)
    if not isinstance(worker_index, int) or not 0 <= worker_index < n_workers:
        raise ValueError(
            f"worker_index must be in 0..{n_workers - 1} for {n_workers} workers, got {worker_index!r} "
            "(a restarted xdist worker gets a new id; rerun the session to reassign GPUs)"
        )
    return None if plan is None else plan[worker_index]
