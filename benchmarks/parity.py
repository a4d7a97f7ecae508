"""Accuracy columns from the bundle's parity report (parity.json, written by `make convert`).

The benchmark does not re-score the held-out split: the parity gate already did, for every
format and device venv, on the same eval files. Its `rows` are
`{"name", "format": torch|onnx|fp32|int8, "runtime", "distribution", "environment",
"status", "eer", "agreement", ...}`. Reports written before "distribution" and
"environment" existed are read from the row name ("int8 @ .venv-tflite") and the runtime
label ("ai-edge-litert 2.3.0") instead.
EER is a fraction; agreement is the fraction of eval files whose decision matches PyTorch's.

Only the standard library: this module runs on the Pi.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.formats import FORMATS
from device.runtimes import CURRENT_ENVIRONMENT

Accuracy = dict[tuple[str, str, str], dict[str, float | None]]
"""(format key, environment key, runtime distribution) -> {"eer": ..., "agreement": ...}."""


def _number(entry: Mapping[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def accuracy_by_row(report: Any) -> Accuracy:
    """The parity rows that ran, keyed like the benchmark's rows."""
    rows = report.get("rows") if isinstance(report, Mapping) else None
    if not isinstance(rows, list):
        return {}
    by_parity_name = {name: f.key for f in FORMATS.values() for name in f.parity_names}
    out: Accuracy = {}
    for row in rows:
        if not isinstance(row, Mapping) or row.get("status", "ok") != "ok":
            continue
        format_key = by_parity_name.get(str(row.get("format", "")))
        if format_key is None:
            continue
        environment = row.get("environment")
        if not isinstance(environment, str):  # an older report
            _, sep, venv = str(row.get("name", "")).partition(" @ ")
            environment = venv.strip() if sep else CURRENT_ENVIRONMENT
        distribution = row.get("distribution")
        if not isinstance(distribution, str):  # an older report: "ai-edge-litert 2.3.0"
            distribution = str(row.get("runtime", "")).split(" ")[0]
        out[(format_key, environment, distribution)] = {
            "eer": _number(row, "eer"),
            "agreement": _number(row, "agreement"),
        }
    return out


def accuracy_for(
    accuracy: Accuracy, format_key: str, environment: str, distribution: str
) -> dict[str, Any]:
    """A row's accuracy: the parity row of the same format, environment and runtime. None
    for a combination the converter did not score (another runtime may compute differently).
    On a Pi the current interpreter's rows match the converter's in-process LiteRT rows: the
    same file on the same kernels (int8 through XNNPACK is bit-exact between x86 and Arm)."""
    return accuracy.get((format_key, environment, distribution), {})
