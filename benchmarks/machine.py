"""This machine: its CPU, and the compute peak a row's MAC rate is compared with.

The peak is derived two ways and both are reported:

- **flags**: vector FMA lanes x FMA pipes per core, read from the CPU's flags in
  /proc/cpuinfo (AVX-512 / AVX2+FMA / AVX / NEON), x the clock /proc/cpuinfo or cpufreq
  reports, x threads. A ceiling that no real kernel reaches.
- **measured**: numpy's fp32 matrix multiply (its BLAS; square 256 and 512 matrices) at the
  same thread count, the best repeat, in a fresh process, before and after the rows. What a
  tuned fp32 kernel does get on this machine; the efficiency column uses this one.

There is no equally simple way to measure an int8 peak from Python, so the int8 peak is
the measured fp32 GEMM rate x an assumed int8/fp32 ratio: 4 where the CPU has int8 dot
products (x86 AVX-512 VNNI / AVX-VNNI `vpdpbusd`, Arm `sdot` = `asimddp`), because those do
4 int8 multiply-accumulates per 32-bit lane per instruction at the issue rate of one fp32
FMA; 2 without them (`pmaddubsw` + `pmaddwd`, Arm `smull` + `sadalp` pairs). This ratio is an
assumption, stated in every report.

Only the standard library: this module runs on the Pi.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78",
}
SIMD_FLAGS = (
    "sse2",
    "avx",
    "fma",
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
)


@dataclass(frozen=True)
class CpuInfo:
    model: str
    vendor: str
    arch: str
    cores: int  # CPUs this process may run on
    clock_ghz: float | None
    clock_source: str
    flags: tuple[str, ...]  # the SIMD flags that matter here, as /proc/cpuinfo spells them

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["flags"] = list(self.flags)
        return data


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _fields(block: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip().lower(), value.strip())
    return out


def read_cpu_info(
    cpuinfo_text: str | None = None,
    max_freq_path: Path = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"),
    cores: int | None = None,
) -> CpuInfo:
    """Parse /proc/cpuinfo (or the text given) into the fields the peak needs."""
    if cpuinfo_text is None:
        try:
            cpuinfo_text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo_text = ""
    blocks = [b for b in cpuinfo_text.split("\n\n") if b.strip()]
    first = _fields(blocks[0]) if blocks else {}
    every = _fields(cpuinfo_text)  # board-wide lines (Raspberry Pi "Model") sit at the end
    flag_words = set((first.get("flags") or first.get("features") or "").split())
    flags = tuple(f for f in SIMD_FLAGS if f in flag_words)
    arch = platform.machine()
    part = first.get("cpu part", "").lower()
    model = first.get("model name") or ARM_PARTS.get(part, "") or every.get("model", "")
    if part in ARM_PARTS and every.get("model"):
        model = f"{ARM_PARTS[part]} ({every['model']})"
    vendor = first.get("vendor_id") or ("Arm" if part else "")
    clock_ghz, clock_source = None, "unknown"
    try:
        clock_ghz = int(max_freq_path.read_text().strip()) / 1e6
        clock_source = str(max_freq_path)
    except (OSError, ValueError):
        if first.get("cpu mhz"):
            try:
                clock_ghz = float(first["cpu mhz"]) / 1000.0
                clock_source = "/proc/cpuinfo 'cpu MHz' (the current or nominal clock)"
            except ValueError:
                pass
    return CpuInfo(
        model=model or platform.processor() or "unknown",
        vendor=vendor or "unknown",
        arch=arch,
        cores=cores or usable_cores(),
        clock_ghz=clock_ghz,
        clock_source=clock_source,
        flags=flags,
    )


def fp32_macs_per_cycle(cpu: CpuInfo) -> tuple[int, str]:
    """fp32 multiply-accumulates per cycle per core from the SIMD flags, and why."""
    flags = set(cpu.flags)
    if "avx512f" in flags:
        if cpu.vendor == "AuthenticAMD":
            return 16, "AVX-512 on AMD (Zen 4 runs 512-bit FMAs as two 256-bit halves): 2 x 8 lanes"
        return 32, "AVX-512: 2 FMA units x 16 fp32 lanes (parts with one 512-bit unit get half)"
    if "avx2" in flags and "fma" in flags:
        return 16, "AVX2 + FMA: 2 FMA units x 8 fp32 lanes"
    if "avx" in flags:
        return 8, "AVX without FMA: one 8-lane multiply and one 8-lane add per cycle"
    if "asimd" in flags or cpu.arch in ("aarch64", "arm64"):
        if "Cortex-A53" in cpu.model or "Cortex-A55" in cpu.model:
            return 4, "NEON on an in-order core: one 128-bit FMA per cycle (4 lanes)"
        return 8, "NEON: 2 x 128-bit FMA pipes x 4 fp32 lanes (Cortex-A72/A76)"
    if "sse2" in flags:
        return 4, "SSE2: 4 fp32 lanes, multiply and add separately"
    return 1, "no SIMD flags recognised: 1 scalar FMA per cycle"


def int8_factor(cpu: CpuInfo) -> tuple[int, str]:
    flags = set(cpu.flags)
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return 4, "VNNI (vpdpbusd): 4 int8 MACs per 32-bit lane per instruction"
    if "asimddp" in flags:
        return 4, "Arm dot product (sdot): 4 int8 MACs per 32-bit lane per instruction"
    if cpu.arch in ("aarch64", "arm64"):
        return 2, "no int8 dot product (Cortex-A72): smull + sadalp pairs, ~2x the fp32 rate"
    return 2, "no VNNI: pmaddubsw + pmaddwd pairs, ~2x the fp32 rate"


@dataclass(frozen=True)
class Peak:
    """MACs per second for one precision at one thread count."""

    precision: str
    threads: int
    macs_per_s: float | None  # the one efficiency is computed against (None: unknown)
    flags_macs_per_s: float | None  # the theoretical ceiling from flags x clock x threads
    derivation: str


def derive_peaks(
    cpu: CpuInfo, measured_fp32: dict[int, float | None]
) -> dict[tuple[str, int], Peak]:
    """Peaks for fp32 and int8 at each thread count measured (measured_fp32: threads -> MAC/s)."""
    per_cycle, cycle_why = fp32_macs_per_cycle(cpu)
    factor, factor_why = int8_factor(cpu)
    peaks: dict[tuple[str, int], Peak] = {}
    for threads, measured in sorted(measured_fp32.items()):
        ceiling = per_cycle * cpu.clock_ghz * 1e9 * threads if cpu.clock_ghz else None
        clock = f"{cpu.clock_ghz:.2f} GHz" if cpu.clock_ghz else "unknown clock"
        ceiling_text = (
            f"{ceiling / 1e9:.1f} GMAC/s ({per_cycle} MAC/cycle: {cycle_why}; x {clock}; "
            f"x {threads} thread(s))"
            if ceiling
            else "unknown (no clock)"
        )
        measured_text = (
            f"{measured / 1e9:.1f} GMAC/s measured (numpy fp32 matmul, 256^3 and 512^3, best "
            f"repeat, before and after the rows, {threads} BLAS thread(s))"
            if measured
            else "not measured"
        )
        peaks[("fp32", threads)] = Peak(
            "fp32",
            threads,
            measured if measured else ceiling,
            ceiling,
            f"fp32 peak = {measured_text}; flags ceiling {ceiling_text}",
        )
        peaks[("int8", threads)] = Peak(
            "int8",
            threads,
            (measured if measured else ceiling) * factor if (measured or ceiling) else None,
            ceiling * factor if ceiling else None,
            f"int8 peak = fp32 peak x {factor} (assumed: {factor_why}); not measured",
        )
    return peaks
