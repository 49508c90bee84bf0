"""The host fingerprint a baseline stores: CPU model and speed-relevant instruction sets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pytest_llmserve.hardware.host import SPEED_FLAGS, host_difference, host_fingerprint

XEON = host_fingerprint("Intel(R) Xeon(R) Processor", frozenset({"avx2", "avx512f", "amx_tile", "sse4_2"}))


def test_the_fingerprint_keeps_only_the_flags_that_pick_kernels():
    assert XEON == {"cpu": "Intel(R) Xeon(R) Processor", "isa": ["avx2", "avx512f", "amx_tile"]}


def test_another_model_or_instruction_set_is_a_difference_naming_both():
    epyc = host_fingerprint("AMD EPYC 7R13", frozenset({"avx2"}))
    why = host_difference(epyc, XEON)
    assert why == ("the baseline was recorded on AMD EPYC 7R13 (avx2), this host is Intel(R) Xeon(R) Processor "
                   "(avx2, avx512f, amx_tile)")
    no_amx = host_fingerprint("Intel(R) Xeon(R) Processor", frozenset({"avx2", "avx512f"}))
    assert host_difference(no_amx, XEON) is not None


def test_an_entry_without_a_host_is_not_a_difference():
    assert host_difference(None, XEON) is None and host_difference({}, XEON) is None


@given(st.text(max_size=30), st.frozensets(st.sampled_from(SPEED_FLAGS + ("sse2", "fpu"))))
def test_a_host_is_never_different_from_itself(model, flags):
    me = host_fingerprint(model, flags)
    assert host_difference(me, me) is None and host_difference(dict(me, isa=list(reversed(me["isa"]))), me) is None
