"""Hardware inventory, labels, the gpu marker and xdist GPU slices (pytest_llmserve.hardware)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_llmserve.hardware import (
    ACCEPTED_FORMS,
    KNOWN_SKUS,
    MARKETED_SIZES_GB,
    SIGNATURE,
    GpuInfo,
    GpuRequirement,
    Inventory,
    detect_inventory,
    gpu_slice_for_worker,
    hardware_label,
    inventory_from_env_or_option,
    marketed_gb,
    parse_fake_inventory,
    plan_gpu_slices,
    select_visible,
    sku_of,
)

REPO = Path(__file__).resolve().parents[1]
H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", 81559, (9, 0), "GPU-0f3c2a4e-aaaa-bbbb-cccc-000000000000")


def inventory(*gpus: GpuInfo, source: str = "nvml") -> Inventory:
    return Inventory(gpus=tuple(gpus), cpu_cores=16, driver="580.159.04", source=source)


# --- labels -------------------------------------------------------------------------------------


def test_real_h100_reading_is_labelled_h100_80gb_x1() -> None:
    assert hardware_label(inventory(H100)) == "h100-80gb-x1"


@pytest.mark.parametrize(
    ("mib", "gb"),
    [
        (81559, 80),  # H100 80GB HBM3 / H100 PCIe
        (143771, 141),  # H200
        (183359, 180),  # B200
        (40960, 40),  # A100-SXM4-40GB
        (81920, 80),  # A100-SXM4-80GB
        (23034, 24),  # L4 (ECC on: 6.7 % below marketed)
        (46068, 48),  # L40S / A40 / A6000
        (23028, 24),  # A10G
        (15360, 16),  # T4
        (24564, 24),  # RTX 4090
        (95830, 94),  # H100 NVL
        (11264, 11),  # GTX 1080 Ti
        (70000, 68),  # no marketed size near: whole GiB
    ],
)
def test_marketed_size_of_real_nvml_totals(mib: int, gb: int) -> None:
    assert marketed_gb(mib) == gb


@given(st.integers(1024, 400 * 1024), st.integers(1024, 400 * 1024))
def test_marketed_size_never_decreases_with_more_memory(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert marketed_gb(lo) <= marketed_gb(hi)


@given(st.integers(1024, 400 * 1024))
def test_marketed_size_stays_within_8_percent_or_half_a_gib_of_the_reading(mib: int) -> None:
    gib = mib / 1024
    assert gib - 0.5 <= marketed_gb(mib) <= max(gib * 1.08, gib + 0.5)


@pytest.mark.parametrize(
    ("name", "sku"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100pcie"),
        ("NVIDIA H100 NVL", "h100nvl"),
        ("NVIDIA A100-SXM4-40GB", "a100"),
        ("NVIDIA A100 80GB PCIe", "a100pcie"),
        ("NVIDIA GH200 480GB", "gh200"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L40", "l40"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("Tesla T4", "t4"),
        ("NVIDIA RTX 6000 Ada Generation", "rtx6000ada"),
    ],
)
def test_sku_of_keeps_the_model_and_board_and_drops_vendor_words(name: str, sku: str) -> None:
    assert sku_of(name) == sku


def test_heterogeneous_label_has_one_sorted_group_per_kind_whatever_the_order() -> None:
    l4 = GpuInfo(1, "NVIDIA L4", 23034, (8, 9))
    h100b = GpuInfo(2, "NVIDIA H100 80GB HBM3", 81559, (9, 0))
    assert hardware_label(inventory(l4, H100, h100b)) == "h100-80gb-x2+l4-24gb-x1"
    assert hardware_label(inventory(H100, h100b, l4)) == "h100-80gb-x2+l4-24gb-x1"


def test_machine_without_gpu_is_labelled_by_cpu_cores() -> None:
    assert hardware_label(Inventory((), 2, None, "none (test)")) == "cpu-2c"


# --- fake inventories ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "count", "name", "mib", "cc"),
    [
        ("h100-80gb-x4", 4, "NVIDIA H100 80GB HBM3", 81559, (9, 0)),
        ("a100-40gb-x2", 2, "NVIDIA A100-SXM4-40GB", 40960, (8, 0)),
        ("l4-24gb-x1", 1, "NVIDIA L4", 23034, (8, 9)),
        ("B200-x8", 8, "NVIDIA B200", 183359, (10, 0)),
        ("h200", 1, "NVIDIA H200", 143771, (9, 0)),
    ],
)
def test_compact_spec_gives_real_names_totals_and_capabilities(
    spec: str, count: int, name: str, mib: int, cc: tuple[int, int]
) -> None:
    inv = parse_fake_inventory(spec)
    assert [g.index for g in inv.gpus] == list(range(count))
    assert {(g.name, g.memory_mib, g.compute_capability, g.uuid) for g in inv.gpus} == {(name, mib, cc, None)}
    assert inv.source == f"fake:{spec}"


def test_cpu_spec_gives_no_gpu_and_the_cores_asked_for() -> None:
    inv = parse_fake_inventory("cpu-2c")
    assert (inv.gpus, inv.cpu_cores, hardware_label(inv)) == ((), 2, "cpu-2c")
    assert parse_fake_inventory("h100-x2+cpu-16c").cpu_cores == 16


def test_json_spec_describes_any_gpu_with_counts_and_uuids() -> None:
    spec = json.dumps(
        {
            "gpus": [
                {"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "cc": [9, 0], "uuid": "GPU-abc"},
                {"name": "NVIDIA GeForce RTX 4090", "memory_mib": 24564, "cc": [8, 9], "count": 2},
            ],
            "cpu_cores": 16,
        }
    )
    inv = parse_fake_inventory(spec)
    assert [(g.index, g.name, g.uuid) for g in inv.gpus] == [
        (0, "NVIDIA H100 80GB HBM3", "GPU-abc"),
        (1, "NVIDIA GeForce RTX 4090", None),
        (2, "NVIDIA GeForce RTX 4090", None),
    ]
    assert inv.cpu_cores == 16
    assert hardware_label(inv) == "h100-80gb-x1+rtx4090-24gb-x2"


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "h100-80gb-x0",
        "rtx4090-24gb-x1",  # unknown sku in the compact form
        "h100_80gb",
        "h100-80gb-x2+",
        "cpu-2c+cpu-4c",
        "cpu-0c",
        "{not json",
        '{"gpus": [{"name": "X", "memory_mib": 1024}]}',  # cc missing
        '{"gpus": [{"name": "X", "memory_mib": 1024, "cc": [9]}]}',
        '{"gpus": [{"name": "X", "memory_mib": "80GB", "cc": [9, 0]}]}',
        '{"gpus": [], "cores": 4}',
        '{"gpus": [{"name": "X", "memory_mib": 1024, "cc": [9, 0], "count": 2, "uuid": "GPU-1"}]}',
    ],
)
def test_bad_fake_spec_raises_and_says_what_is_accepted(spec: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_fake_inventory(spec)
    message = str(info.value)
    assert "fake hardware" in message
    assert "accepted forms" in message or "needs name, memory_mib, cc" in message or "must be" in message


def test_fake_size_that_no_card_reports_names_the_size_it_would_get() -> None:
    with pytest.raises(ValueError, match=r"90gb is not a marketed size .* use 94gb"):
        parse_fake_inventory("h100-90gb-x1")


def test_accepted_forms_name_every_known_sku_and_the_json_form() -> None:
    assert all(sku in ACCEPTED_FORMS for sku in KNOWN_SKUS)
    assert '"memory_mib"' in ACCEPTED_FORMS


_SKU = st.sampled_from(sorted(KNOWN_SKUS))


@st.composite
def canonical_groups(draw: st.DrawFn) -> list[str]:
    """Distinct '<sku>-<gb>gb-x<n>' groups whose sizes the label rule keeps."""
    keys = draw(
        st.lists(
            st.tuples(_SKU, st.sampled_from(MARKETED_SIZES_GB)), min_size=1, max_size=3, unique=True
        )
    )
    return [f"{sku}-{gb}gb-x{draw(st.integers(1, 16))}" for sku, gb in keys]


@given(canonical_groups(), st.randoms())
def test_fake_spec_to_inventory_to_label_round_trips(groups: list[str], rnd: object) -> None:
    shuffled = list(groups)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    inv = parse_fake_inventory("+".join(shuffled))
    by_sku_then_size = sorted(groups, key=lambda g: (g.split("-")[0], int(g.split("-")[1][:-2])))
    assert hardware_label(inv) == "+".join(by_sku_then_size)
    assert inv.gpu_count == sum(int(g.rsplit("-x", 1)[1]) for g in groups)


@given(_SKU, st.integers(1, 300), st.integers(1, 8))
def test_any_size_either_round_trips_or_is_refused_with_the_size_it_would_get(sku: str, gb: int, n: int) -> None:
    spec = f"{sku}-{gb}gb-x{n}"
    try:
        inv = parse_fake_inventory(spec)
    except ValueError as exc:
        assert f"{gb}gb is not a marketed size" in str(exc)
        assert gb not in MARKETED_SIZES_GB
    else:
        assert hardware_label(inv) == spec
        assert hardware_label(parse_fake_inventory(hardware_label(inv))) == spec


# --- the gpu marker -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"count": 0}, "count"),
        ({"count": 1.5}, "count"),
        ({"count": True}, "count"),
        ({"count": "2"}, "count"),
        ({"sku": 100}, "sku"),
        ({"sku": []}, "sku"),
        ({"sku": ["H100", ""]}, "sku"),
        ({"min_memory_gb": 0}, "min_memory_gb"),
        ({"min_memory_gb": "80GB"}, "min_memory_gb"),
        ({"min_memory_gb": float("nan")}, "min_memory_gb"),
        ({"min_compute_capability": "9.x"}, "min_compute_capability"),
        ({"min_compute_capability": 8.95}, "min_compute_capability"),
        ({"min_compute_capability": (9,)}, "min_compute_capability"),
        ({"min_compute_capability": (8, 10)}, "min_compute_capability"),
        ({"min_compute_capability": -1}, "min_compute_capability"),
        ({"memory_gb": 80}, "memory_gb"),
    ],
)
def test_bad_marker_argument_names_marker_key_value_and_signature(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError) as info:
        GpuRequirement.from_marker_kwargs(**kwargs)
    message = str(info.value)
    assert message.startswith("@pytest.mark.gpu: ")
    assert f"{key}={kwargs[key]!r}" in message
    assert SIGNATURE in message


def test_misspelt_marker_argument_suggests_the_right_one() -> None:
    with pytest.raises(ValueError, match="did you mean min_compute_capability"):
        GpuRequirement.from_marker_kwargs(min_capability=(9, 0))


def test_marker_with_positional_arguments_is_refused() -> None:
    # pytest's Mark exposes .args and .kwargs; a namespace avoids registering the marker here.
    with pytest.raises(ValueError, match="keyword arguments only"):
        GpuRequirement.from_marker(types.SimpleNamespace(args=("H100",), kwargs={}))
    assert GpuRequirement.from_marker(types.SimpleNamespace(args=(), kwargs={"sku": "H100"})).sku == ("H100",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("9.0", (9, 0)), (9.0, (9, 0)), (9, (9, 0)), ((9, 0), (9, 0)), ([9, 0], (9, 0)), ("9", (9, 0)),
     (8.9, (8, 9)), ("10.0", (10, 0)), (12.1, (12, 1))],
)
def test_compute_capability_forms_mean_the_same(value: object, expected: tuple[int, int]) -> None:
    assert GpuRequirement.from_marker_kwargs(min_compute_capability=value).min_compute_capability == expected


def test_requirement_met_by_the_real_h100_gives_no_reason() -> None:
    inv = inventory(H100)
    for kwargs in ({}, {"sku": "H100"}, {"sku": "h100"}, {"sku": ["A100", "H100"]}, {"min_memory_gb": 80},
                   {"min_compute_capability": "9.0"}):
        assert GpuRequirement.from_marker_kwargs(**kwargs).unmet_reason(inv) is None, kwargs


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"count": 2}, "requires 2x GPU; found 1 GPU: 1x NVIDIA H100 80GB HBM3 (80 GB, cc 9.0)"),
        ({"sku": ["A100", "L4"]},
         "requires 1x GPU with sku A100 or L4; found 1 GPU, 0 matching: 1x NVIDIA H100 80GB HBM3 (80 GB, cc 9.0)"),
        ({"min_compute_capability": "10.0"},
         "requires 1x GPU with compute capability >= 10.0; found 1 GPU, 0 matching: "
         "1x NVIDIA H100 80GB HBM3 (80 GB, cc 9.0)"),
        ({"min_memory_gb": 100},
         "requires 1x GPU with min 100 GB; found 1 GPU, 0 matching: 1x NVIDIA H100 80GB HBM3 (80 GB, cc 9.0)"),
    ],
)
def test_unmet_requirement_says_what_was_required_and_found(kwargs: dict[str, object], expected: str) -> None:
    assert GpuRequirement.from_marker_kwargs(**kwargs).unmet_reason(inventory(H100)) == expected


def test_count_counts_only_gpus_that_match() -> None:
    inv = parse_fake_inventory("h100-x1+l4-x3")
    requirement = GpuRequirement.from_marker_kwargs(sku="H100", count=2)
    assert requirement.unmet_reason(inv) == (
        "requires 2x GPU with sku H100; found 4 GPUs, 1 matching: 1x NVIDIA H100 80GB HBM3 (80 GB, cc 9.0), "
        "3x NVIDIA L4 (24 GB, cc 8.9) [fake:h100-x1+l4-x3]"
    )
    assert GpuRequirement.from_marker_kwargs(count=4).unmet_reason(inv) is None


def test_cpu_only_reason_carries_the_nvml_error() -> None:
    inv = Inventory((), 2, None, "none (nvmlInit failed: NVML Shared Library Not Found)")
    reason = GpuRequirement.from_marker_kwargs(sku="H100", count=2, min_memory_gb=80).unmet_reason(inv)
    assert reason == (
        "requires 2x GPU with sku H100, min 80 GB; found 0 GPUs (nvmlInit failed: NVML Shared Library Not Found)"
    )


# --- xdist slices -------------------------------------------------------------------------------


def test_slices_use_uuids_when_every_gpu_has_one() -> None:
    gpus = [GpuInfo(i, "NVIDIA H100 80GB HBM3", 81559, (9, 0), f"GPU-{i}aaa") for i in range(4)]
    inv = inventory(*gpus)
    assert [gpu_slice_for_worker(inv, w, 2) for w in range(2)] == ["GPU-0aaa,GPU-1aaa", "GPU-2aaa,GPU-3aaa"]


def test_slices_use_physical_indices_without_uuids_and_leave_leftovers_unused() -> None:
    inv = parse_fake_inventory("h100-x8")
    assert plan_gpu_slices(inv, 3) == ["0,1", "2,3", "4,5"]
    assert plan_gpu_slices(inv, 2, gpus_per_worker=1) == ["0", "1"]


def test_cpu_only_machine_has_no_slice() -> None:
    assert gpu_slice_for_worker(parse_fake_inventory("cpu-2c"), 0, 4) is None


@pytest.mark.parametrize(
    ("spec", "worker", "workers", "per_worker", "match"),
    [
        ("h100-x2", 0, 4, None, r"4 xdist workers but only 2 GPUs.*-n 2 or fewer"),
        ("h100-x4", 0, 3, 2, r"need 6 GPUs, found 4.*-n 2 or fewer"),
        ("h100-x2", 0, 1, 4, r"needs 4 GPUs but only 2 are visible"),
        ("h100-x4", 4, 4, None, r"worker_index must be in 0\.\.3"),
        ("h100-x4", 0, 0, None, r"n_workers must be"),
        ("h100-x4", 0, 2, 0, r"gpus_per_worker must be"),
    ],
)
def test_impossible_slicing_says_how_to_fix_it(
    spec: str, worker: int, workers: int, per_worker: int | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        gpu_slice_for_worker(parse_fake_inventory(spec), worker, workers, per_worker)


@given(st.integers(1, 16), st.integers(1, 16), st.data())
def test_slices_are_disjoint_and_equal_sized(n_gpus: int, n_workers: int, data: st.DataObject) -> None:
    inv = parse_fake_inventory(f"l4-x{n_gpus}")
    if n_workers > n_gpus:
        with pytest.raises(ValueError):
            plan_gpu_slices(inv, n_workers)
        return
    per = data.draw(st.integers(1, n_gpus // n_workers))
    plan = plan_gpu_slices(inv, n_workers, per)
    assert plan is not None
    parts = [s.split(",") for s in plan]
    flat = [x for p in parts for x in p]
    assert all(len(p) == per for p in parts)
    assert len(flat) == len(set(flat)) == per * n_workers


# --- NVML detection and CUDA_VISIBLE_DEVICES ----------------------------------------------------


class FakeNvml(types.ModuleType):
    """A stand-in for pynvml with physical GPUs given as GpuInfo; records init/shutdown calls."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: list[GpuInfo], fail_init: bool = False, fail_query: bool = False) -> None:
        super().__init__("pynvml")
        self.gpus, self.fail_init, self.fail_query = gpus, fail_init, fail_query
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"580.159.04"  # old pynvml releases return bytes

    def nvmlDeviceGetCount(self) -> int:
        if self.fail_query:
            raise self.NVMLError("GPU is lost")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> GpuInfo:
        return self.gpus[i]

    def nvmlDeviceGetName(self, h: GpuInfo) -> str:
        return h.name

    def nvmlDeviceGetMemoryInfo(self, h: GpuInfo) -> types.SimpleNamespace:
        return types.SimpleNamespace(total=h.memory_mib * 1024 * 1024, used=0)

    def nvmlDeviceGetCudaComputeCapability(self, h: GpuInfo) -> tuple[int, int]:
        return h.compute_capability

    def nvmlDeviceGetUUID(self, h: GpuInfo) -> str:
        return h.uuid or ""


PHYSICAL = [
    GpuInfo(i, "NVIDIA H100 80GB HBM3", 81559, (9, 0), f"GPU-{i}{i}c0ffee-0000-0000-0000-00000000000{i}")
    for i in range(4)
]


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml(PHYSICAL)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_detect_reads_every_gpu_and_shuts_nvml_down(nvml: FakeNvml) -> None:
    inv = detect_inventory(environ={})
    assert inv.gpus == tuple(PHYSICAL)
    assert (inv.driver, inv.source, nvml.calls) == ("580.159.04", "nvml", ["init", "shutdown"])
    assert hardware_label(inv) == "h100-80gb-x4"


@pytest.mark.parametrize(
    ("visible", "indices", "note"),
    [
        ("2,0", [2, 0], "selects 2 of 4"),
        (" 3 , 1 ", [3, 1], "selects 2 of 4"),
        ("GPU-11c0,GPU-33", [1, 3], "selects 2 of 4"),
        ("", [], "hides all GPUs"),
        ("1,7,2", [1], "entry '7' names no GPU"),
        ("1,1,2", [1], "entry '1' is repeated"),
        ("-1", [], "entry '-1' names no GPU"),
        ("GPU-", [], "matches several GPU UUIDs"),
        ("0,MIG-5a1b", [0], "is a MIG instance"),
        ("cuda:0", [], "neither an index nor a GPU UUID"),
    ],
)
def test_cuda_visible_devices_restricts_and_orders_nvml_gpus_like_cuda(
    nvml: FakeNvml, visible: str, indices: list[int], note: str
) -> None:
    inv = detect_inventory(environ={"CUDA_VISIBLE_DEVICES": visible})
    assert [g.index for g in inv.gpus] == indices
    assert inv.source.startswith(f"nvml (CUDA_VISIBLE_DEVICES={visible!r}")
    assert note in inv.source


@given(st.permutations(range(4)), st.integers(0, 4))
def test_any_ordered_subset_of_indices_is_kept_in_that_order(order: list[int], k: int) -> None:
    chosen, note = select_visible(PHYSICAL, ",".join(map(str, order[:k])))
    assert [g.index for g in chosen] == order[:k]


def test_detect_without_driver_gives_cpu_inventory_with_the_nvml_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(PHYSICAL, fail_init=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    inv = detect_inventory(environ={})
    assert inv.gpus == ()
    assert inv.source == "none (nvmlInit failed: NVML Shared Library Not Found)"
    assert fake.calls == ["init"]


def test_failed_nvml_query_still_shuts_down_and_reports_why(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(PHYSICAL, fail_query=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    inv = detect_inventory(environ={})
    assert (inv.gpus, inv.source) == ((), "none (NVML query failed: GPU is lost)")
    assert fake.calls == ["init", "shutdown"]


def test_detect_without_nvidia_ml_py_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    assert "pip install nvidia-ml-py" in detect_inventory(environ={}).source


def test_detect_on_this_machine_returns_an_inventory_and_never_imports_torch() -> None:
    code = (
        "import sys, json; from pytest_llmserve.hardware import detect_inventory, hardware_label; "
        "inv = detect_inventory(); "
        "print(json.dumps([len(inv.gpus), inv.source, hardware_label(inv), 'torch' in sys.modules]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    n_gpus, source, label, torch_imported = json.loads(out.stdout)
    assert torch_imported is False
    if n_gpus == 0:  # the 2-core CI machine: no driver, so a reason in parentheses
        assert source.startswith("none (") and len(source) > len("none ()")
        assert label.startswith("cpu-")
    else:  # a GPU runner
        assert source.startswith("nvml")


# --- the hardware setting -----------------------------------------------------------------------


def _detected() -> Inventory:
    return inventory(H100)


def test_auto_detects_and_labels_from_the_inventory() -> None:
    for option in (None, "auto", "AUTO", "  "):
        ctx = inventory_from_env_or_option(option, environ={}, detect=_detected)
        assert (ctx.label, ctx.label_source, ctx.inventory) == ("h100-80gb-x1", "detected", _detected())


def test_fake_setting_uses_the_fake_inventory_without_detecting() -> None:
    def fail() -> Inventory:
        raise AssertionError("fake hardware must not touch NVML")

    ctx = inventory_from_env_or_option("fake:a100-40gb-x2", environ={}, detect=fail)
    assert (ctx.label, ctx.label_source, ctx.origin) == ("a100-40gb-x2", "fake", "option")
    assert ctx.inventory.gpu_count == 2


def test_plain_label_overrides_the_label_but_keeps_the_detected_inventory() -> None:
    ctx = inventory_from_env_or_option(None, environ={"LLMSERVE_HARDWARE": "h100-sxm-pool"}, detect=_detected)
    assert (ctx.label, ctx.label_source, ctx.origin) == ("h100-sxm-pool", "override", "env LLMSERVE_HARDWARE")
    assert (ctx.inventory, ctx.detected_label) == (_detected(), "h100-80gb-x1")
    assert "the inventory gives h100-80gb-x1" in ctx.header()


def test_option_beats_env_which_beats_config() -> None:
    def resolve(option: str | None, env: dict[str, str]) -> tuple[str, str]:
        ctx = inventory_from_env_or_option(option, config_value="from-cfg", environ=env, detect=_detected)
        return ctx.label, ctx.origin

    env = {"LLMSERVE_HARDWARE": "from-env"}
    assert resolve("from-opt", env) == ("from-opt", "option")
    assert resolve(None, env) == ("from-env", "env LLMSERVE_HARDWARE")
    assert resolve(None, {}) == ("from-cfg", "config")


@pytest.mark.parametrize("value", ["H100-80GB-x1", "../escape", "has space", "a" * 101])
def test_label_that_cannot_name_a_directory_is_refused_with_the_accepted_forms(value: str) -> None:
    with pytest.raises(ValueError, match=r"expected 'auto', a label of lowercase .* or 'fake:<spec>'"):
        inventory_from_env_or_option(value, environ={}, detect=_detected)


def test_bad_fake_setting_names_where_it_came_from() -> None:
    expected = r"^hardware setting from env LLMSERVE_HARDWARE: fake hardware spec 'x9'"
    with pytest.raises(ValueError, match=expected):
        inventory_from_env_or_option(None, environ={"LLMSERVE_HARDWARE": "fake:x9"}, detect=_detected)


# --- docs/h100_run.py ---------------------------------------------------------------------------


def test_h100_run_script_reports_label_and_every_marker_verdict(
    nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LLMSERVE_HARDWARE", raising=False)
    result = runpy.run_path(str(REPO / "docs" / "h100_run.py"))["main"]()
    json.dumps(result)  # what the script prints must be JSON
    assert result["label"] == "h100-80gb-x4"
    verdicts = {json.dumps(m["gpu"], sort_keys=True): m["unmet_reason"] for m in result["markers"]}
    assert verdicts['{"sku": "H100"}'] is None
    assert verdicts['{"count": 2}'] is None
    assert "compute capability >= 10.0" in verdicts['{"min_compute_capability": "10.0"}']
    assert "min 100 GB" in verdicts['{"min_memory_gb": 100}']
    uuids = [gpu.uuid for gpu in PHYSICAL]
    assert result["slices"]["2 workers"] == [f"{uuids[0]},{uuids[1]}", f"{uuids[2]},{uuids[3]}"]
    assert result["uuid_prefix_check"]["selects"] == [0]
