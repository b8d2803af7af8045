"""cpu_info checks /proc/cpuinfo's x86 flags against CPUID: under an emulator or a VM that masks features,
the int8 choice follows the CPU the process really runs on."""

from __future__ import annotations

from edgeplug.cpu import runtime_checked

HOST = {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"}


def test_flags_confirmed_by_cpuid_stay():
    runtime = {"AVX2": True, "AVX512F": True, "AVX512BW": True, "AVX512VNNI": True}
    assert runtime_checked(set(HOST), "x86_64", runtime) == (HOST, set())


def test_an_avx2_only_emulation_of_an_avx512_host_drops_every_int8_dot_product_flag():
    flags, dropped = runtime_checked(set(HOST), "x86_64", {"AVX2": True, "AVX512F": False})
    assert flags == {"avx2"} and dropped == HOST - {"avx2"}


def test_avx_vnni_without_avx512_is_kept_when_nothing_is_masked():
    alder_lake = {"avx2", "avx_vnni"}
    assert runtime_checked(set(alder_lake), "x86_64", {"AVX2": True, "AVX512F": False}) == (alder_lake, set())


def test_other_machines_and_an_unreadable_cpuid_keep_the_flags():
    assert runtime_checked({"asimddp"}, "aarch64", {}) == ({"asimddp"}, set())
    assert runtime_checked(set(HOST), "x86_64", None) == (HOST, set())


def test_a_flag_numpy_cannot_confirm_is_kept():
    """An older numpy without an AVX512VNNI entry cannot confirm VNNI: unknown is not absent."""
    assert runtime_checked({"avx512_vnni"}, "x86_64", {"AVX2": True}) == ({"avx512_vnni"}, set())
