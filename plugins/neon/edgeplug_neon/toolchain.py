"""Compilers and qemu: find them, build the host and aarch64 libraries, run the aarch64 test driver."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgeplug.plugin_api import MissingDependencyError, PluginError, cpu_info

DEBIAN_PACKAGES = "gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
HOST_LIB = "libedgeplug_model_host.so"
AARCH64_LIB = "libedgeplug_model_aarch64.so"
AARCH64_DRIVER = "edgeplug_model_driver_aarch64"
COMMON_FLAGS = "-O3 -std=gnu11 -fPIC -Wall -Wno-unused-function"


@dataclass(frozen=True)
class Toolchain:
    cc: str
    cross_cc: str | None
    qemu: str | None
    sysroot: str | None
    dotprod: bool
    host_march: str = "-march=native"

    @property
    def aarch64_march(self) -> str:
        return "-march=armv8.2-a+dotprod" if self.dotprod else "-march=armv8-a"


def find(
    cc: str | None, cross_cc: str | None, dotprod: bool, need_aarch64: bool, need_qemu: bool
) -> Toolchain:
    """Resolve compiler and emulator paths, or raise MissingDependencyError naming the Debian packages."""
    host = shutil.which(str(cc or "cc"))
    if host is None and (cc or "cc") == "cc":  # the default name: any C compiler will do
        host = shutil.which("gcc")
    if host is None:
        raise MissingDependencyError(
            f"neon: no host C compiler found ({cc or 'cc'}); install gcc or pass -o neon.cc=PATH"
        )
    cross = shutil.which(str(cross_cc or "aarch64-linux-gnu-gcc"))
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if need_aarch64 and cross is None:
        raise MissingDependencyError(
            f"neon: the aarch64 cross compiler ({cross_cc or 'aarch64-linux-gnu-gcc'}) is missing; install the "
            f"Debian packages {DEBIAN_PACKAGES} (apt-get install ...) or pass -o neon.target=host"
        )
    if need_qemu and qemu is None:
        raise MissingDependencyError(
            f"neon: qemu-aarch64 is missing to verify the aarch64 build; install the Debian packages "
            f"{DEBIAN_PACKAGES} or pass -o neon.target=host (or -o neon.verify=false)"
        )
    sysroot = next((p for p in ("/usr/aarch64-linux-gnu",) if Path(p).is_dir()), None)
    march = host_march(cpu_info())
    if not _compiler_takes(host, march):  # x86-64-v3/v4 need gcc 11 or clang 12
        march = "-march=native"
    return Toolchain(host, cross, qemu, sysroot, dotprod, march)


def _compiler_takes(cc: str, flag: str) -> bool:
    try:
        proc = subprocess.run(
            [cc, flag, "-x", "c", "-fsyntax-only", "-"], input="", capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def host_march(cpu: dict) -> str:
    """-march of the host library: on x86, the x86-64 level of the instructions this process can use
    (cpu_info checks /proc/cpuinfo against CPUID), not -march=native: gcc runs as its own process and reads
    the machine's CPUID, which a process under an emulator or a CPU-masking VM does not get, and a library
    built for AVX-512 dies with an illegal instruction on an AVX2-only x86 box it is copied to."""
    if cpu.get("machine") not in ("x86_64", "amd64"):
        return "-march=native"
    flags = set(cpu.get("flags", []))
    if {"avx512f", "avx512bw"} <= flags:
        return "-march=x86-64-v4"
    if "avx2" in flags:
        return "-march=x86-64-v3"
    return "-march=x86-64"


def _run(cmd: list[str], cwd: Path, what: str, timeout: float = 900) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PluginError(f"neon: {what} timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise PluginError(f"neon: {what} failed ({' '.join(cmd)}):\n{tail}")


def build_host(tc: Toolchain, workdir: Path) -> Path:
    """-O3 shared library of model.c for this machine's instruction level (the scalar path on x86)."""
    _run(
        [tc.cc, *COMMON_FLAGS.split(), tc.host_march, "-shared", "model.c", "-o", HOST_LIB, "-lm"],
        workdir,
        "host build",
    )
    return workdir / HOST_LIB


def build_aarch64(tc: Toolchain, workdir: Path, driver: bool) -> list[Path]:
    """The aarch64 shared library and (for verification) a static test driver, from one object file."""
    assert tc.cross_cc is not None
    obj = workdir / "model_aarch64.o"
    flags = [*COMMON_FLAGS.split(), tc.aarch64_march]
    _run([tc.cross_cc, *flags, "-c", "model.c", "-o", obj.name], workdir, "aarch64 build")
    _run([tc.cross_cc, "-shared", obj.name, "-o", AARCH64_LIB, "-lm"], workdir, "aarch64 link")
    built = [workdir / AARCH64_LIB]
    if driver:
        _run(
            [tc.cross_cc, *flags, "-static", "driver.c", obj.name, "-o", AARCH64_DRIVER, "-lm"],
            workdir,
            "aarch64 driver build",
        )
        built.append(workdir / AARCH64_DRIVER)
    obj.unlink(missing_ok=True)
    return built


def run_qemu(tc: Toolchain, driver: Path, inputs: Path, outputs: Path, timeout: float = 600) -> None:
    """Run the static aarch64 driver under qemu-aarch64 (`-cpu max` has dotprod)."""
    if tc.qemu is None:
        raise MissingDependencyError(f"neon: qemu-aarch64 is missing; install {DEBIAN_PACKAGES}")
    cmd = [tc.qemu, "-cpu", "max"]
    if tc.sysroot:
        cmd += ["-L", tc.sysroot]
    _run([*cmd, str(driver), str(inputs), str(outputs)], driver.parent, "qemu-aarch64 run", timeout)


def makefile(tc: Toolchain) -> str:
    """The Makefile shipped with the sources: the same commands compile() ran."""
    return f"""# Generated by edgeplug neon. `make host`, `make aarch64`, `make driver` (aarch64 test program).
CC ?= cc
CROSS_CC ?= {(tc.cross_cc and Path(tc.cross_cc).name) or "aarch64-linux-gnu-gcc"}
CFLAGS ?= {COMMON_FLAGS}
HOST_MARCH ?= {tc.host_march}
AARCH64_MARCH ?= {tc.aarch64_march}

all: host aarch64

host: {HOST_LIB}
aarch64: {AARCH64_LIB}
driver: {AARCH64_DRIVER}

{HOST_LIB}: model.c model.h
\t$(CC) $(CFLAGS) $(HOST_MARCH) -shared model.c -o $@ -lm

model_aarch64.o: model.c model.h
\t$(CROSS_CC) $(CFLAGS) $(AARCH64_MARCH) -c model.c -o $@

{AARCH64_LIB}: model_aarch64.o
\t$(CROSS_CC) -shared $< -o $@ -lm

{AARCH64_DRIVER}: driver.c model_aarch64.o
\t$(CROSS_CC) $(CFLAGS) $(AARCH64_MARCH) -static driver.c model_aarch64.o -o $@ -lm

clean:
\trm -f {HOST_LIB} {AARCH64_LIB} {AARCH64_DRIVER} model_aarch64.o

.PHONY: all host aarch64 driver clean
"""
