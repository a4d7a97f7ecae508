"""A threshold for this room: `clad-agent calibrate`, and which threshold `listen` uses.

    calibrate: listen to the room's genuine audio (mic, stdin or files, device.sources) for
    N minutes, score its windows through the real streaming path (device.stream), replay
    the bundle's smoothing + hysteresis (`device.stream.replay`) at every candidate
    threshold, and keep the lowest threshold, not below the bundle's own, whose false
    alarms per hour of that audio are at most the target. It is written to the agent's
    settings file as [device_calibration] (never into the bundle).

The threshold `listen` uses, first match wins (`resolve_threshold`):

    flag           --threshold P
    settings file  [model] threshold = P
    device calibration   [device_calibration] threshold, measured with this very model
    operating point      [model] operating_point = NAME (the manifest's operating_points)
    bundle default       the manifest's threshold.value (the dev EER point)

numpy and device.* only: this module runs on the Pi.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.audio import SAMPLE_RATE
from device.bundle import MODEL_FILES, Manifest
from device.config import (
    ConfigError,
    DecisionSettings,
    DeviceCalibrationSettings,
    Settings,
    load_settings,
)
from device.stream import replay

THRESHOLD_STEP = 0.0025
"""Candidate thresholds are a grid of this step over what the margin allows."""


# --------------------------------------------------------------------------- which threshold


@dataclass(frozen=True)
class ThresholdChoice:
    value: float
    source: str  # flag | settings file | device calibration | operating point | bundle default
    detail: str

    def describe(self) -> str:
        return f"threshold {self.value:.4f} from {self.source} ({self.detail})"


def resolve_threshold(
    settings: Settings, manifest: Manifest, flag: float | None, from_file: float | None
) -> tuple[ThresholdChoice, list[str]]:
    """The threshold in force and why, plus notes on sources that were set but not used."""
    notes: list[str] = []
    model_sha = manifest.files[manifest.model_file(settings.model.model_format)].sha256
    if flag is not None:
        return ThresholdChoice(flag, "flag", "--threshold"), notes
    if from_file is not None:
        return ThresholdChoice(from_file, "settings file", "[model] threshold"), notes
    c = settings.device_calibration
    if c.threshold is not None:
        if c.model_sha256 == model_sha:
            return (
                ThresholdChoice(
                    c.threshold,
                    "device calibration",
                    f"{c.false_alarms_per_hour:g} false alarms/h on {c.audio_s / 60:.1f} min of "
                    f"this room's audio, target {c.target_fa_per_hour:g}/h, {c.calibrated_at}",
                ),
                notes,
            )
        notes.append(
            f"[device_calibration] threshold {c.threshold} ignored: it was measured with "
            f"model sha256 {c.model_sha256[:12] or '?'}..., the bundle's "
            f"{settings.model.model_format} model is {model_sha[:12]}...; run "
            "`clad-agent calibrate` again"
        )
    name = settings.model.operating_point
    if name:
        points = manifest.operating_points.get("points", {})
        if name not in points:
            raise ConfigError(
                f"model.operating_point: {name!r} is not in the bundle's operating_points; "
                f"expected one of {sorted(points)}"
                + ("" if points else " (none: run `python -m benchmarks.stream --write-manifest`)")
            )
        point = points[name]
        measured = (point.get("smoothing_windows"), point.get("min_windows_above", 0))
        in_force = (settings.decision.smoothing_windows, settings.decision.min_windows_above)
        if measured[0] is not None and measured != in_force:
            notes.append(
                f"operating point {name!r} was measured with smoothing_windows {measured[0]} and "
                f"min_windows_above {measured[1]}; [decision] has {in_force[0]} and "
                f"{in_force[1]}: its false-alarm rate and miss rate do not hold for these settings"
            )
        return (
            ThresholdChoice(
                float(point["threshold"]),
                "operating point",
                f"{name}: {point.get('fa_per_hour', float('nan')):.2f} false alarms/h, miss "
                f"rate {100 * point.get('miss_rate', float('nan')):.1f}% on the eval streams",
            ),
            notes,
        )
    t = manifest.threshold
    return ThresholdChoice(
        t.value, "bundle default", f"{t.method}, dev EER {100 * t.eer_dev:.2f}%"
    ), notes


# --------------------------------------------------------------------------- calibrate


@dataclass
class RoomScores:
    p_spoof: list[float]
    silent: list[bool]
    audio_s: float
    hop_s: float

    @property
    def windows(self) -> int:
        return len(self.silent)

    @property
    def loud_windows(self) -> int:
        return self.windows - sum(self.silent)


def collect_room_scores(source: Any, pipeline: Any, stop: Callable[[], bool]) -> RoomScores:
    """Run a started-or-not source through a StreamPipeline until it ends; keep window scores."""
    from device.sources import END

    p: list[float] = []
    silent: list[bool] = []
    source.start()
    try:
        while not stop():
            item = source.get(timeout_s=0.25)
            results = pipeline.finish() if item is END else (pipeline.feed(item) if item else [])
            for r in results:
                p.append(r.p_spoof)
                silent.append(r.silent)
            if item is END:
                break
    finally:
        source.stop()
    if source.failure:
        raise ConfigError(f"the source failed before calibration finished: {source.failure}")
    audio_s = pipeline.samples_seen / SAMPLE_RATE
    return RoomScores(p, silent, audio_s, pipeline.ring.hop_samples / SAMPLE_RATE)


def false_alarms(scores: RoomScores, settings: DecisionSettings) -> int:
    """Entries into "spoof" on genuine audio: every one is a false alarm."""
    decisions = replay(scores.p_spoof, scores.silent, settings)
    previous = "silence"
    count = 0
    for d in decisions:
        count += d == "spoof" and previous != "spoof"
        previous = d
    return count


@dataclass(frozen=True)
class RoomChoice:
    threshold: float
    false_alarms: int
    fa_per_hour: float
    at_bundle: tuple[float, int, float]  # (bundle threshold, alarms, per hour)
    resolution_per_hour: float  # one alarm on this much audio, per hour
    smoothed_max: float | None
    p_quantiles: dict[str, float]


def choose_room_threshold(
    scores: RoomScores, decision: DecisionSettings, bundle_threshold: float, target: float
) -> RoomChoice:
    if scores.audio_s <= 0 or scores.loud_windows == 0:
        raise ConfigError(
            f"calibration heard {scores.audio_s:.1f} s of audio and {scores.loud_windows} "
            "non-silent windows; expected minutes of the room's genuine sound"
        )
    hours = scores.audio_s / 3600.0
    low = max(bundle_threshold, decision.margin + 1e-3)
    high = 1.0 - decision.margin
    candidates = [float(v) for v in np.arange(low, high + 1e-12, THRESHOLD_STEP) if v <= high] or [
        high
    ]
    if bundle_threshold not in candidates and low == bundle_threshold:
        candidates.insert(0, bundle_threshold)

    def alarms(threshold: float) -> int:
        return false_alarms(scores, dataclasses.replace(decision, threshold=threshold))

    # false alarms do not increase with the threshold: bisect for the lowest that meets it
    lo, hi = 0, len(candidates) - 1
    if alarms(candidates[hi]) / hours > target:
        raise ConfigError(
            f"even threshold {candidates[hi]:.4f} gives {alarms(candidates[hi])} false alarms "
            f"on {scores.audio_s / 60:.1f} min of this room's audio ({alarms(candidates[hi]) / hours:.1f}"
            f"/h > target {target:g}/h): the model calls this room's sound spoofed; check the "
            "microphone and the audio, or raise --target-fa-per-hour"
        )
    while lo < hi:
        mid = (lo + hi) // 2
        if alarms(candidates[mid]) / hours <= target:
            hi = mid
        else:
            lo = mid + 1
    chosen = candidates[lo]
    count = alarms(chosen)
    at_bundle = alarms(bundle_threshold) if decision.margin < bundle_threshold <= high else -1
    loud = np.array([p for p, s in zip(scores.p_spoof, scores.silent, strict=True) if not s])
    n = decision.smoothing_windows
    smoothed = np.convolve(loud, np.ones(n) / n, mode="valid") if loud.size >= n else loud
    return RoomChoice(
        threshold=chosen,
        false_alarms=count,
        fa_per_hour=count / hours,
        at_bundle=(bundle_threshold, at_bundle, at_bundle / hours if at_bundle >= 0 else math.nan),
        resolution_per_hour=1.0 / hours,
        smoothed_max=float(smoothed.max()) if smoothed.size else None,
        p_quantiles={q: float(np.quantile(loud, float(q))) for q in ("0.5", "0.9", "0.99")},
    )


def eval_stream_cost(manifest: Manifest, decision: DecisionSettings, threshold: float) -> str:
    """Miss rate and time to detect at `threshold` from the manifest's stream curve, if any."""
    table = manifest.operating_points
    curve = table.get("curve", [])
    measured = table.get("decision", {})
    if not curve:
        return (
            "no stream operating table in the manifest (run `python -m benchmarks.stream "
            "--write-manifest`): time-to-detect cost unknown"
        )
    measured_votes = int(measured.get("min_windows_above", 0))  # absent: measured before K
    if (
        measured.get("smoothing_windows") != decision.smoothing_windows
        or measured_votes != decision.min_windows_above
        or not math.isclose(float(measured.get("margin", -1)), decision.margin)
    ):
        return (
            f"the manifest's stream table was measured with smoothing_windows "
            f"{measured.get('smoothing_windows')}, min_windows_above {measured_votes} and margin "
            f"{measured.get('margin')}; these settings differ ({decision.smoothing_windows}, "
            f"{decision.min_windows_above}, {decision.margin}): cost unknown"
        )
    above = [r for r in curve if r["threshold"] >= threshold - 1e-9]
    row = (
        min(above, key=lambda r: r["threshold"])
        if above
        else max(curve, key=lambda r: r["threshold"])
    )

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    return (
        f"on the bundle's eval streams at threshold {row['threshold']:.4f}: "
        f"{row['fa_per_hour']:.2f} false alarms/h, miss rate {100 * row['miss_rate']:.1f}%, "
        f"time to detect median {seconds(row['ttd_median_s'])}, p90 {seconds(row['ttd_p90_s'])}"
    )


# --------------------------------------------------------------------------- the settings file

_SECTION = re.compile(r"^\s*\[device_calibration\]\s*(#.*)?$")
_ANY_SECTION = re.compile(r"^\s*\[")


def write_device_calibration(path: Path, values: DeviceCalibrationSettings) -> None:
    """Replace (or add) the [device_calibration] table of a TOML settings file, keeping the
    rest of the file as it is; the result is read back by `load_settings` before it replaces
    the file (atomically)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    kept: list[str] = []
    inside = False
    for line in text.splitlines():
        if _SECTION.match(line):
            inside = True
            continue
        if inside and _ANY_SECTION.match(line):
            inside = False
        if not inside:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    block = ["[device_calibration]", "# written by `clad-agent calibrate`; delete to go back"]
    for f in dataclasses.fields(values):
        value = getattr(values, f.name)
        if value is None:
            continue
        if isinstance(value, str):
            rendered = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif isinstance(value, float):
            rendered = repr(value)
        else:
            rendered = str(value)
        block.append(f"{f.name} = {rendered}")
    new_text = "\n".join([*kept, *([""] if kept else []), *block]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(new_text)
        load_settings(temporary)  # refuse to write a file the agent could not read
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def model_sha256(manifest: Manifest, model_format: str) -> str:
    return manifest.files[MODEL_FILES[model_format]].sha256
