"""An estimate, not a measurement: per-window latency on a Raspberry Pi 4 and 5, from the
model's MACs and published MobileNet figures for those boards.

Method: a published latency of a model with known MACs gives an effective MAC rate on that
board; the bundle's MACs per window divided by that rate is the estimate. MobileNet v1 is
mostly depthwise and 1x1 convolutions, CLAD is dense 1-D convolutions, and a small model
pays more per-operator overhead, so the figure is a range and a guide, not a promise.
`python -m benchmarks` on the Pi itself replaces it with real numbers.

Only the standard library: this module runs on the Pi.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MOBILENET_V1_MACS = 569_000_000
MOBILENET_V1_MACS_SOURCE = (
    "MobileNet_v1_1.0_224: 569 million MACs (tensorflow/models, research/slim/nets/mobilenet_v1.md)"
)


@dataclass(frozen=True)
class Published:
    """One published latency: board, runtime, precision, threads, milliseconds, where."""

    board: str
    runtime: str
    precision: str
    threads: int
    latency_ms: float
    source: str

    @property
    def macs_per_s(self) -> float:
        return MOBILENET_V1_MACS / (self.latency_ms / 1000.0)


PUBLISHED: tuple[Published, ...] = (
    Published(
        "Raspberry Pi 4 (Cortex-A72, 1.5 GHz, 64-bit Ubuntu)",
        "XNNPACK end2end-bench",
        "fp32",
        1,
        312.0,
        "https://github.com/google/XNNPACK/issues/814 (FP32MobileNetV1/T:1 312008 us)",
    ),
    Published(
        "Raspberry Pi 4 (Cortex-A72, 1.5 GHz, 64-bit Ubuntu)",
        "XNNPACK end2end-bench",
        "fp32",
        4,
        142.0,
        "https://github.com/google/XNNPACK/issues/814 (FP32MobileNetV1/T:4 142362 us)",
    ),
    Published(
        "Raspberry Pi 4 (BCM2711, Raspbian Buster)",
        "XNNPACK end2end-bench",
        "fp32",
        4,
        75.0,
        "https://github.com/google/XNNPACK README, Performance / Raspberry Pi "
        "(MobileNet v1 1.0X, multi-threaded, RPi 4: 75 ms)",
    ),
    Published(
        "Raspberry Pi 4 (Cortex-A72, 1.5 GHz)",
        "ncnn",
        "fp32",
        4,
        72.08,
        "https://github.com/Tencent/ncnn/issues/3485 (mobilenet avg 72.08 ms, 4 threads)",
    ),
    Published(
        "Raspberry Pi 4 (Cortex-A72, 1.5 GHz)",
        "ncnn",
        "int8",
        4,
        40.30,
        "https://github.com/Tencent/ncnn/issues/3485 (mobilenet_int8 avg 40.30 ms, 4 threads)",
    ),
)

INT8_GAIN_RANGE = (1.0, 72.08 / 40.30)
INT8_GAIN_SOURCE = (
    "int8 over fp32 on a Cortex-A72 (no int8 dot product): from 1.0x (assumed floor: no gain, "
    "as when the runtime splits the int8 graph into several delegate partitions) to 1.79x "
    "(ncnn MobileNet v1 int8 vs fp32 on the same Pi 4, https://github.com/Tencent/ncnn/issues/3485)"
)
PI5_SPEEDUP_RANGE = (2.0, 3.0)
PI5_SPEEDUP_SOURCE = (
    "Raspberry Pi 5 (Cortex-A76, 2.4 GHz) vs Pi 4: '2-3x' CPU performance, Raspberry Pi's launch "
    "figure (as reported e.g. by https://circuitdigest.com/news/the-new-raspberry-pi-5-is-here-"
    "faster-than-ever). Cortex-A76 also has int8 dot products (sdot), which XNNPACK uses, so int8 "
    "is likely nearer the top of the range"
)


@dataclass(frozen=True)
class Estimate:
    board: str
    precision: str
    threads: int
    latency_ms_low: float
    latency_ms_high: float
    rtf_low: float
    rtf_high: float
    basis: str


def _range(macs: int, rates: tuple[float, float]) -> tuple[float, float]:
    low_rate, high_rate = min(rates), max(rates)
    return macs / high_rate * 1000.0, macs / low_rate * 1000.0


def estimate(macs_per_window: int, hop_s: float) -> list[Estimate]:
    """Latency ranges on a Pi 4 and a Pi 5 at 1 and 4 threads, fp32 and int8."""
    pi4_fp32 = {
        1: (PUBLISHED[0].macs_per_s, PUBLISHED[0].macs_per_s),
        4: (PUBLISHED[1].macs_per_s, PUBLISHED[2].macs_per_s),
    }
    out: list[Estimate] = []
    for board, scale, scale_note in (
        ("Raspberry Pi 4", (1.0, 1.0), ""),
        ("Raspberry Pi 5", PI5_SPEEDUP_RANGE, " x 2-3 (Pi 5 over Pi 4)"),
    ):
        for threads, (fp32_low, fp32_high) in pi4_fp32.items():
            fp32_rates = (fp32_low * scale[0], fp32_high * scale[1])
            int8_rates = (fp32_rates[0] * INT8_GAIN_RANGE[0], fp32_rates[1] * INT8_GAIN_RANGE[1])
            for precision, rates in (("fp32", fp32_rates), ("int8", int8_rates)):
                low_ms, high_ms = _range(macs_per_window, rates)
                basis = (
                    f"{macs_per_window / 1e6:.1f} M MACs / {min(rates) / 1e9:.1f}-"
                    f"{max(rates) / 1e9:.1f} GMAC/s (MobileNet v1 fp32 on a Pi 4 via XNNPACK"
                    f"{', x int8 gain 1.0-1.8' if precision == 'int8' else ''}{scale_note})"
                )
                out.append(
                    Estimate(
                        board,
                        precision,
                        threads,
                        low_ms,
                        high_ms,
                        low_ms / 1000.0 / hop_s,
                        high_ms / 1000.0 / hop_s,
                        basis,
                    )
                )
    return out


def estimate_report(macs_per_window: int, hop_s: float) -> dict[str, Any]:
    return {
        "label": "ESTIMATE from published MobileNet figures, not measured on a Pi",
        "estimates": [asdict(e) for e in estimate(macs_per_window, hop_s)],
        "published": [asdict(p) | {"macs_per_s": p.macs_per_s} for p in PUBLISHED],
        "mobilenet_v1_macs": MOBILENET_V1_MACS_SOURCE,
        "int8_gain": INT8_GAIN_SOURCE,
        "pi5_speedup": PI5_SPEEDUP_SOURCE,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| board | precision | threads | latency per window (ms) | RTF |",
        "|---|---|---:|---:|---:|",
    ]
    for e in report["estimates"]:
        lines.append(
            f"| {e['board']} | {e['precision']} | {e['threads']} | "
            f"{e['latency_ms_low']:.1f} - {e['latency_ms_high']:.1f} | "
            f"{e['rtf_low']:.3f} - {e['rtf_high']:.3f} |"
        )
    return "\n".join(lines)
