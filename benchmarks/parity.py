"""Accuracy columns from the bundle's parity report (written by `make convert`).

The benchmark does not re-score the held-out split: the parity gate already did, for every
format, on the same data. This module maps that report onto the table's format keys.
EER is a fraction in [0, 1]; agreement is the fraction of held-out windows whose decision
matches PyTorch's (1.0 for PyTorch itself).

Only the standard library: this module runs on the Pi.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.formats import FORMATS

EER_KEYS = ("eer", "eer_fraction")
EER_PERCENT_KEYS = ("eer_percent", "eer_pct")
AGREEMENT_KEYS = ("agreement", "agreement_with_torch", "decision_agreement", "top_class_agreement")


def _number(entry: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = entry.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _entries(report: Any) -> dict[str, Mapping[str, Any]]:
    """Format name -> its metrics object, from the shapes a parity report may take."""
    if isinstance(report, Mapping):
        for key in ("formats", "per_format", "metrics"):
            inner = report.get(key)
            if isinstance(inner, Mapping):
                return {str(k): v for k, v in inner.items() if isinstance(v, Mapping)}
            if isinstance(inner, list):
                return _entries(inner)
        return {str(k): v for k, v in report.items() if isinstance(v, Mapping)}
    if isinstance(report, list):
        out = {}
        for item in report:
            if isinstance(item, Mapping) and isinstance(item.get("format"), str):
                out[item["format"]] = item
        return out
    return {}


def accuracy_by_format(report: Any) -> dict[str, dict[str, float | None]]:
    """{format key: {"eer": fraction or None, "agreement": fraction or None}}."""
    entries = _entries(report)
    out: dict[str, dict[str, float | None]] = {}
    for fmt in FORMATS.values():
        entry = next((entries[name] for name in fmt.parity_names if name in entries), None)
        if entry is None:
            continue
        eer = _number(entry, EER_KEYS)
        if eer is None:
            percent = _number(entry, EER_PERCENT_KEYS)
            eer = percent / 100.0 if percent is not None else None
        agreement = _number(entry, AGREEMENT_KEYS)
        if agreement is None and fmt.key == "pytorch":
            agreement = 1.0
        out[fmt.key] = {"eer": eer, "agreement": agreement}
    return out
