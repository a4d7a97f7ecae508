"""`python -m benchmarks.stream --bundle DIR [--data DIR]`: the stream operating curve.

What a user of an always-on detector asks: false alarms per hour, misses, time to detect.

Streams are built offline from the eval split of the dataset the bundle was trained on
(the manifest's data.trained_on; --data replaces its root): bona fide files one after the
other with pauses of digital silence between them, for `--hours` hours of bona fide
speech, and a spoof file inserted every `3600 / --spoofs-per-hour` seconds of it, at
known onsets; all of it deterministic from `--seed`. Files repeat when the eval split
holds less bona fide audio than asked (the report says how much is unique).

They run through the device's streaming decisions: `device.stream.Decider` (the smoothing
+ hysteresis of `clad-agent listen`) over window P(spoof) from `device.runtime.Scorer`
(int8 by default) with the bundle's calibration (`device.scores`). Each eval file is cut
and scored once and its windows replayed wherever the file occurs: a stream's windows are
its segments' windows at the bundle's hop, because every file and every pause is fed as
its own segment of audio (a segment break, as after lost audio: windows never straddle a
file's edge). `replay_decisions` equals `StreamPipeline` fed the same audio exactly
(tests/test_stream_benchmark.py). A live microphone also sees at most one mixed window at
each edge; that is the one approximation.

Per (threshold, decision rule), margin and silence_windows at the agent's defaults; the rules
are the plain means of smoothing_windows 1/3/5/9 and the K-of-N votes of VOTE_SWEEP
(min_windows_above: 2 of 2, 2 of 3, 3 of 3):

    false alarms per hour   entries into "spoof" during bona fide files, per hour of
                            bona fide audio (pauses not counted)
    miss rate               inserted spoofs during which the decision never was "spoof"
    time to detect          spoof onset -> the end of the first window decided "spoof"
                            (when that decision can be made): median and p90

Each rule's best point with a median time to detect of at most 2 s (fewest false alarms/h)
is listed apart (`best_per_rule`). Writes <out>/stream-<bundle>.json and two PNG curves (false alarms/h against miss rate
and against median time to detect). With --write-manifest the JSON and PNGs are also
copied into the bundle (stream.json, plots/stream_*.png), listed in the manifest with
their sha256, and the named operating points written to the manifest's
`operating_points`; manifest.json itself is not hashed, so the bundle stays valid.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.audio import SAMPLE_RATE, load_audio, window_starts, windows_from_signal
from device.bundle import (
    MANIFEST_NAME,
    Bundle,
    BundleError,
    FileEntry,
    file_entry_to_dict,
    load_bundle,
    sha256_of,
)
from device.config import DecisionSettings
from device.runtime import Scorer
from device.scores import p_spoof
from device.stream import replay

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HOURS = 3.0
DEFAULT_SPOOFS_PER_HOUR = 30.0
DEFAULT_SEED = 13
PAUSE_S = (0.3, 4.0)  # uniform pause between files, seconds
SMOOTHING_SWEEP = (1, 3, 5, 9)
VOTE_SWEEP = ((2, 2), (3, 2), (3, 3))
"""(smoothing_windows, min_windows_above) K-of-N rules swept beside the plain means."""
TTD_TARGET_S = 2.0  # the "best point" of each rule: fewest false alarms/h at this median TTD
STREAM_JSON = "stream.json"
NAMED_FA_PER_HOUR = (1.0, 0.1)


class StreamBenchError(RuntimeError):
    """The stream benchmark cannot run (no bundle, no eval files, ...)."""


# --------------------------------------------------------------------------- scored files


@dataclass(frozen=True)
class ScoredFile:
    """One eval file cut and scored once: what its windows contribute wherever it plays."""

    path: str
    label: str  # bonafide | spoof
    num_samples: int  # 16 kHz
    p_spoof: np.ndarray  # (windows,) calibrated window P(spoof); NaN for silent windows
    silent: np.ndarray  # (windows,) bool
    starts: np.ndarray  # (windows,) int64 sample offsets inside the file
    rms_dbfs: np.ndarray | None = None  # (windows,) raw level, for the false-alarm study
    speaker: str = ""  # the dataset's speaker (voice) column

    @property
    def duration_s(self) -> float:
        return self.num_samples / SAMPLE_RATE


def score_file_windows(
    scorer: Scorer, path: str | Path, label: str, speaker: str = ""
) -> ScoredFile:
    """Decode, window and score a file as the device does; silent windows are not scored
    (the decision logic ignores their score)."""
    signal = load_audio(path)
    windows = windows_from_signal(
        signal, scorer.window_samples, scorer.hop_samples, scorer.silence_floor_dbfs
    )
    p = np.full(windows.silent.shape, np.nan, dtype=np.float64)
    loud = np.flatnonzero(~windows.silent)
    if loud.size:
        logits = scorer.score_windows(windows.normalized[loud])
        p[loud] = p_spoof(logits, scorer.calibration)
    return ScoredFile(
        str(path),
        label,
        int(signal.size),
        p,
        windows.silent.copy(),
        windows.starts,
        windows.rms_dbfs.copy(),
        speaker,
    )


def pause_windows(num_samples: int, window_samples: int, hop_samples: int) -> int:
    """Windows a pause of digital silence of `num_samples` adds (all silent)."""
    return int(window_starts(num_samples, window_samples, hop_samples).size)


# --------------------------------------------------------------------------- the streams


@dataclass(frozen=True)
class Segment:
    kind: str  # "file" | "pause"
    start_s: float  # in the stream
    num_samples: int
    file_index: int = -1  # into the scored files, for kind == "file"
    label: str = ""  # bonafide | spoof, for files


@dataclass
class StreamPlan:
    segments: list[Segment]
    seed: int
    bonafide_s: float = 0.0
    spoofs: int = 0
    unique_bonafide_s: float = 0.0
    total_s: float = 0.0


def plan_stream(
    files: Sequence[ScoredFile],
    hours: float,
    spoofs_per_hour: float,
    seed: int,
    pause_s: tuple[float, float] = PAUSE_S,
) -> StreamPlan:
    """Bona fide files with pauses, a spoof every 3600 / spoofs_per_hour s of bona fide audio."""
    bonafide = [i for i, f in enumerate(files) if f.label == "bonafide"]
    spoof = [i for i, f in enumerate(files) if f.label == "spoof"]
    if not bonafide or (spoofs_per_hour > 0 and not spoof):
        raise StreamBenchError(
            f"expected bona fide and spoof eval files to build streams from, got "
            f"{len(bonafide)} bona fide and {len(spoof)} spoof"
        )
    rng = np.random.default_rng(seed)
    every_s = 3600.0 / spoofs_per_hour if spoofs_per_hour > 0 else math.inf
    segments: list[Segment] = []
    t = 0.0
    bona_s = 0.0
    since_spoof_s = 0.0
    used: set[int] = set()
    spoofs = 0

    def add(kind: str, num_samples: int, index: int = -1, label: str = "") -> None:
        nonlocal t
        segments.append(Segment(kind, t, num_samples, index, label))
        t += num_samples / SAMPLE_RATE

    def pause() -> None:
        add("pause", round(rng.uniform(*pause_s) * SAMPLE_RATE))

    while bona_s < hours * 3600.0:
        index = bonafide[int(rng.integers(len(bonafide)))]
        add("file", files[index].num_samples, index, "bonafide")
        used.add(index)
        bona_s += files[index].duration_s
        since_spoof_s += files[index].duration_s
        pause()
        if since_spoof_s >= every_s:
            index = spoof[int(rng.integers(len(spoof)))]
            add("file", files[index].num_samples, index, "spoof")
            spoofs += 1
            since_spoof_s = 0.0
            pause()
    return StreamPlan(
        segments,
        seed,
        bonafide_s=bona_s,
        spoofs=spoofs,
        unique_bonafide_s=sum(files[i].duration_s for i in used),
        total_s=t,
    )


@dataclass
class StreamWindows:
    """The stream's windows, in order: what the Decider sees, and whose window each is."""

    p_spoof: np.ndarray  # float64, NaN where silent
    silent: np.ndarray  # bool
    end_s: np.ndarray  # when the window's last sample arrives (stream time)
    segment: np.ndarray  # int64 index into plan.segments


def stream_windows(
    plan: StreamPlan, files: Sequence[ScoredFile], window_samples: int, hop_samples: int
) -> StreamWindows:
    p, silent, end_s, owner = [], [], [], []
    window_s = window_samples / SAMPLE_RATE
    for k, segment in enumerate(plan.segments):
        if segment.kind == "file":
            f = files[segment.file_index]
            p.append(f.p_spoof)
            silent.append(f.silent)
            end_s.append(segment.start_s + f.starts / SAMPLE_RATE + window_s)
            n = f.p_spoof.size
        else:
            starts = window_starts(segment.num_samples, window_samples, hop_samples)
            n = starts.size
            p.append(np.full(n, np.nan))
            silent.append(np.ones(n, dtype=bool))
            end_s.append(segment.start_s + starts / SAMPLE_RATE + window_s)
        owner.append(np.full(n, k, dtype=np.int64))
    return StreamWindows(
        np.concatenate(p), np.concatenate(silent), np.concatenate(end_s), np.concatenate(owner)
    )


def replay_decisions(windows: StreamWindows, settings: DecisionSettings) -> list[str]:
    """The Decider of `clad-agent listen` over the stream's windows (`device.stream.replay`)."""
    return replay(windows.p_spoof.tolist(), windows.silent.tolist(), settings)


# --------------------------------------------------------------------------- metrics


def _entries(decisions: list[str]) -> np.ndarray:
    spoof = np.array([d == "spoof" for d in decisions], dtype=bool)
    before = np.concatenate([[False], spoof[:-1]])
    return spoof, spoof & ~before


def measure(plan: StreamPlan, windows: StreamWindows, settings: DecisionSettings) -> dict[str, Any]:
    decisions = replay_decisions(windows, settings)
    spoof_state, entries = _entries(decisions)
    kinds = np.array(
        [s.label if s.kind == "file" else "pause" for s in plan.segments], dtype=object
    )
    owner_kind = kinds[windows.segment]
    false_alarms = int(np.count_nonzero(entries & (owner_kind == "bonafide")))
    ttd = []
    missed = 0
    for k in np.flatnonzero(kinds == "spoof"):
        inside = np.flatnonzero((windows.segment == k) & spoof_state)
        if inside.size:
            ttd.append(float(windows.end_s[inside[0]] - plan.segments[k].start_s))
        else:
            missed += 1
    hours = plan.bonafide_s / 3600.0
    return {
        "threshold": settings.threshold,
        "smoothing_windows": settings.smoothing_windows,
        "min_windows_above": settings.min_windows_above,
        "margin": settings.margin,
        "silence_windows": settings.silence_windows,
        "false_alarms": false_alarms,
        "fa_per_hour": false_alarms / hours if hours else math.nan,
        "spoofs": plan.spoofs,
        "missed": missed,
        "miss_rate": missed / plan.spoofs if plan.spoofs else math.nan,
        "detected_within_target": (
            sum(t <= TTD_TARGET_S + 1e-9 for t in ttd) / plan.spoofs if plan.spoofs else math.nan
        ),
        "ttd_median_s": float(np.median(ttd)) if ttd else None,
        "ttd_p90_s": float(np.percentile(ttd, 90)) if ttd else None,
    }


def threshold_grid(default: float, margin: float, extra: Sequence[float] = ()) -> list[float]:
    """Thresholds the Decider accepts with `margin`, plus the bundle's own: 30 evenly spaced
    in P(spoof), and 10 whose entry level (threshold + margin) is 1 - 10^-k for k from 1 to 4,
    where an always-on stream's false alarms are decided (window P(spoof) near 1)."""
    low, high = margin + 1e-3, 1.0 - margin
    values = set(np.round(np.linspace(low, high, 30), 4).tolist())
    values |= {float(v) for v in 1.0 - np.logspace(-4, -1, 10) - margin if low <= v <= high}
    values |= {float(v) for v in (default, *extra) if low <= v <= high}
    return sorted(values)


def sweep_rules(base: DecisionSettings) -> list[tuple[int, int]]:
    """(smoothing_windows, min_windows_above) pairs swept: plain means, K-of-N votes, and the
    agent's own setting (first)."""
    rules = [(base.smoothing_windows, base.min_windows_above)]
    for rule in [(n, 0) for n in SMOOTHING_SWEEP] + list(VOTE_SWEEP):
        if rule not in rules:
            rules.append(rule)
    return rules


def sweep(
    plan: StreamPlan,
    windows: StreamWindows,
    thresholds: Sequence[float],
    rules: Sequence[tuple[int, int]],
    base: DecisionSettings,
) -> list[dict[str, Any]]:
    rows = []
    for n, votes in rules:
        for threshold in thresholds:
            settings = DecisionSettings(
                threshold=threshold,
                smoothing_windows=n,
                min_windows_above=votes,
                margin=base.margin,
                silence_windows=base.silence_windows,
            )
            rows.append(measure(plan, windows, settings))
    return rows


def rule_name(row: dict[str, Any]) -> str:
    n, votes = row["smoothing_windows"], row.get("min_windows_above", 0)
    return f"mean of {n}" + (f", {votes} of {n} above" if votes else "")


def _is_default_rule(row: dict[str, Any], base: DecisionSettings) -> bool:
    return (row["smoothing_windows"], row.get("min_windows_above", 0)) == (
        base.smoothing_windows,
        base.min_windows_above,
    )


def best_per_rule(rows: list[dict[str, Any]], ttd_target_s: float = TTD_TARGET_S) -> list[dict]:
    """Per rule: the fewest false alarms/h whose median time to detect is at most the target
    (ties: the lower miss rate). A median over detected spoofs only, so read the miss rate."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["ttd_median_s"] is None or r["ttd_median_s"] > ttd_target_s + 1e-9:
            continue
        name = rule_name(r)
        key = (r["fa_per_hour"], r["miss_rate"])
        if name not in best or key < (best[name]["fa_per_hour"], best[name]["miss_rate"]):
            best[name] = {"rule": name, **r}
    return sorted(best.values(), key=lambda r: (r["fa_per_hour"], r["miss_rate"]))


def operating_points(
    rows: list[dict[str, Any]], default_threshold: float, base: DecisionSettings
) -> dict[str, Any]:
    """Named points at the agent's default decision rule: the bundle default, N false alarms/h."""
    at_default = [r for r in rows if _is_default_rule(r, base)]
    points: dict[str, Any] = {}
    bundle = min(at_default, key=lambda r: abs(r["threshold"] - default_threshold))
    points["eer_dev"] = {**bundle, "note": "the bundle's threshold (dev EER point)"}
    for target in NAMED_FA_PER_HOUR:
        meeting = [r for r in at_default if r["fa_per_hour"] <= target]
        if meeting:
            best = min(meeting, key=lambda r: r["threshold"])
            points[f"fa_{target:g}_per_hour"] = {
                **best,
                "note": f"lowest threshold with at most {target:g} false alarm(s) per hour",
            }
    return points


def false_alarm_sources(
    plan: StreamPlan,
    windows: StreamWindows,
    files: Sequence[ScoredFile],
    settings: DecisionSettings,
) -> dict[str, Any]:
    """Where the false alarms at `settings` come from: which voices, which window of the
    file, how loud the window that raised them was, and how bona fide windows score."""
    decisions = replay_decisions(windows, settings)
    _, entries = _entries(decisions)
    first_of_segment = np.searchsorted(windows.segment, np.arange(len(plan.segments)))
    entry_level = float(settings.threshold) + settings.margin
    by_speaker: dict[str, dict[str, float]] = {}
    for segment in plan.segments:
        if segment.kind == "file" and segment.label == "bonafide":
            f = files[segment.file_index]
            row = by_speaker.setdefault(f.speaker or "?", {"alarms": 0, "hours": 0.0})
            row["hours"] += f.duration_s / 3600.0
    in_pauses = 0
    position: dict[str, int] = {}
    alarm_files: set[int] = set()
    alarm_rms: list[float] = []
    for j in np.flatnonzero(entries):
        k = int(windows.segment[j])
        segment = plan.segments[k]
        if segment.kind != "file":
            in_pauses += 1
            continue
        if segment.label != "bonafide":
            continue
        f = files[segment.file_index]
        by_speaker[f.speaker or "?"]["alarms"] += 1
        index = int(j - first_of_segment[k])
        key = str(index) if index < settings.smoothing_windows + 3 else "later"
        position[key] = position.get(key, 0) + 1
        alarm_files.add(segment.file_index)
        if f.rms_dbfs is not None:
            alarm_rms.append(float(f.rms_dbfs[index]))
    bona = [f for f in files if f.label == "bonafide"]
    p = np.concatenate([f.p_spoof[~f.silent] for f in bona]) if bona else np.zeros(0)
    levels = [f.rms_dbfs[~f.silent] for f in bona if f.rms_dbfs is not None]
    rms = np.concatenate(levels) if levels else np.zeros(0)
    quantiles = (0.1, 0.5, 0.9)
    return {
        "threshold": settings.threshold,
        "entry_level": entry_level,
        "false_alarms": int(sum(r["alarms"] for r in by_speaker.values())),
        "in_pauses": in_pauses,
        "by_speaker": {
            name: {
                "alarms": int(r["alarms"]),
                "hours": round(r["hours"], 4),
                "fa_per_hour": r["alarms"] / r["hours"] if r["hours"] else None,
            }
            for name, r in sorted(by_speaker.items())
        },
        "entry_window_index_in_file": dict(sorted(position.items(), key=lambda kv: kv[0])),
        "first_full_history_index": settings.smoothing_windows - 1,
        "unique_bonafide_files_alarming": len(alarm_files),
        "unique_bonafide_files": len(
            {s.file_index for s in plan.segments if s.label == "bonafide"}
        ),
        "entry_window_rms_dbfs_quantiles": (
            {str(q): float(np.quantile(alarm_rms, q)) for q in quantiles} if alarm_rms else None
        ),
        "bonafide_window_rms_dbfs_quantiles": (
            {str(q): float(np.quantile(rms, q)) for q in quantiles} if rms.size else None
        ),
        "bonafide_windows": int(p.size),
        "bonafide_windows_at_entry_level": float(np.mean(p >= entry_level)) if p.size else None,
        "bonafide_window_p_spoof_quantiles": (
            {str(q): float(np.quantile(p, q)) for q in (0.5, 0.9, 0.99, 0.999)} if p.size else None
        ),
    }


# --------------------------------------------------------------------------- run


@dataclass
class StreamReport:
    data: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def eval_files(bundle: Bundle, data: Path | None) -> list[tuple[str, str, str]]:
    """(path, label, speaker) of the eval split of the dataset the bundle was trained on."""
    from train.data import DatasetError, load_dataset

    trained_on = bundle.manifest.data.get("trained_on", {})
    fmt = trained_on.get("format")
    root = data if data is not None else trained_on.get("root")
    if not fmt or not root:
        raise StreamBenchError(
            f"{bundle.root / MANIFEST_NAME}: expected data.trained_on.format and .root (the "
            f"dataset the bundle was trained on), got {trained_on!r}; give --data DIR"
        )
    try:
        dataset = load_dataset(
            fmt, root, track=trained_on.get("track"), seed=int(trained_on.get("seed") or 0)
        )
    except DatasetError as error:
        raise StreamBenchError(
            f"cannot read the eval split of the {fmt} dataset at {root}: {error}"
        ) from error
    records = [(r.path, r.label, r.speaker) for r in dataset.records if r.split == "eval"]
    if not records:
        raise StreamBenchError(f"{root}: the {fmt} dataset has no eval split")
    return records


def run(
    bundle_dir: Path,
    data: Path | None,
    *,
    hours: float = DEFAULT_HOURS,
    spoofs_per_hour: float = DEFAULT_SPOOFS_PER_HOUR,
    seed: int = DEFAULT_SEED,
    model_format: str = "int8",
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        bundle = load_bundle(bundle_dir)
    except BundleError as error:
        raise StreamBenchError(str(error)) from error
    scorer = Scorer(bundle, model_format)
    records = eval_files(bundle, data)
    files = [score_file_windows(scorer, *record) for record in records]
    scored_s = time.perf_counter() - started
    windows_scored = int(sum(np.count_nonzero(~f.silent) for f in files))
    log(f"scored {len(files)} eval files ({windows_scored} windows) in {scored_s:.1f} s")
    plan = plan_stream(files, hours, spoofs_per_hour, seed)
    windows = stream_windows(plan, files, scorer.window_samples, scorer.hop_samples)
    base = DecisionSettings()
    extra = [bundle.manifest.threshold.far_target_value]
    thresholds = threshold_grid(scorer.threshold, base.margin, extra)
    replay_started = time.perf_counter()
    rows = sweep(plan, windows, thresholds, sweep_rules(base), base)
    replay_s = time.perf_counter() - replay_started
    points = operating_points(rows, scorer.threshold, base)
    sources = false_alarm_sources(
        plan, windows, files, base.with_threshold(points["eer_dev"]["threshold"])
    )
    total_s = time.perf_counter() - started
    log(
        f"{plan.total_s / 3600:.2f} h of stream ({plan.bonafide_s / 3600:.2f} h bona fide, "
        f"{plan.spoofs} spoofs), {windows.silent.size} windows x {len(rows)} settings replayed "
        f"in {replay_s:.1f} s; {total_s:.1f} s in all"
    )
    return {
        "bundle": str(bundle.root),
        "model_format": model_format,
        "calibrated": scorer.calibration is not None,
        "data": {
            "eval_files": len(files),
            "bonafide_files": sum(f.label == "bonafide" for f in files),
            "spoof_files": sum(f.label == "spoof" for f in files),
        },
        "stream": {
            "seed": seed,
            "hours_bonafide": round(plan.bonafide_s / 3600, 4),
            "hours_total": round(plan.total_s / 3600, 4),
            "unique_bonafide_s": round(plan.unique_bonafide_s, 2),
            "spoofs": plan.spoofs,
            "spoofs_per_hour": spoofs_per_hour,
            "pause_s": list(PAUSE_S),
            "windows": int(windows.silent.size),
            "window_s": scorer.window_samples / SAMPLE_RATE,
            "hop_s": scorer.hop_samples / SAMPLE_RATE,
        },
        "decision_defaults": {
            "smoothing_windows": base.smoothing_windows,
            "min_windows_above": base.min_windows_above,
            "margin": base.margin,
            "silence_windows": base.silence_windows,
        },
        "rows": rows,
        "operating_points": points,
        "best_per_rule": {"ttd_median_target_s": TTD_TARGET_S, "rows": best_per_rule(rows)},
        "false_alarm_sources": sources,
        "timings_s": {
            "score_files": round(scored_s, 2),
            "replay": round(replay_s, 2),
            "total": round(total_s, 2),
        },
    }


# --------------------------------------------------------------------------- output


def render_table(report: dict[str, Any]) -> str:
    s = report["stream"]
    lines = [
        f"Stream operating table: {s['hours_bonafide']:.2f} h bona fide "
        f"({s['unique_bonafide_s'] / 60:.1f} min unique), {s['spoofs']} inserted spoofs, "
        f"{report['model_format']}, {'calibrated' if report['calibrated'] else 'UNcalibrated'} "
        "P(spoof)",
        "",
        "| point | threshold | rule | FA/h | miss rate | TTD median s | TTD p90 s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["operating_points"].items():
        lines.append(
            f"| {name} | {r['threshold']:.6f} | {rule_name(r)} | "
            f"{r['fa_per_hour']:.2f} | {100 * r['miss_rate']:.1f}% | {_s(r['ttd_median_s'])} | "
            f"{_s(r['ttd_p90_s'])} |"
        )
    best = report.get("best_per_rule", {})
    if best.get("rows"):
        lines += [
            "",
            f"Fewest false alarms/h per decision rule with median time to detect <= "
            f"{best['ttd_median_target_s']:g} s (median over detected spoofs: read the miss rate)",
            "",
            "| rule | threshold | FA/h | miss rate | detected <= 2 s | TTD median s | TTD p90 s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in best["rows"]:
            lines.append(
                f"| {r['rule']} | {r['threshold']:.6f} | {r['fa_per_hour']:.2f} | "
                f"{100 * r['miss_rate']:.1f}% | {100 * r['detected_within_target']:.1f}% | "
                f"{_s(r['ttd_median_s'])} | {_s(r['ttd_p90_s'])} |"
            )
    src = report.get("false_alarm_sources")
    if src:
        speakers = ", ".join(
            f"{name} {r['alarms']} ({_s(r['fa_per_hour'])}/h)"
            for name, r in src["by_speaker"].items()
        )
        positions = ", ".join(f"{k}: {v}" for k, v in src["entry_window_index_in_file"].items())
        lines += [
            "",
            f"False alarms at threshold {src['threshold']:.4f} (entry level "
            f"{src['entry_level']:.4f}): {src['false_alarms']} from "
            f"{src['unique_bonafide_files_alarming']} of {src['unique_bonafide_files']} unique "
            f"bona fide files, {src['in_pauses']} in pauses; by voice: {speakers}; by the "
            f"entering window's index in its file (first full history: "
            f"{src['first_full_history_index']}): {positions}. "
            f"{100 * (src['bonafide_windows_at_entry_level'] or 0):.1f}% of bona fide windows "
            "are at or above the entry level.",
        ]
    t = report["timings_s"]
    lines += ["", f"scoring {t['score_files']} s, replay {t['replay']} s, total {t['total']} s"]
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_outputs(report: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    written = [json_path]
    try:
        import matplotlib
    except ImportError:
        return written
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    for name, y_key, y_label in (
        ("miss", "miss_rate", "miss rate per inserted spoof"),
        ("ttd", "ttd_median_s", "median time to detect, s"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for rule in dict.fromkeys(rule_name(r) for r in rows):
            pts = sorted(
                (r["fa_per_hour"], r[y_key])
                for r in rows
                if rule_name(r) == rule and r[y_key] is not None
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", markersize=2, label=rule)
        for point, r in report["operating_points"].items():
            if r[y_key] is not None:
                ax.plot(r["fa_per_hour"], r[y_key], "k*", markersize=8)
                ax.annotate(point, (r["fa_per_hour"], r[y_key]), fontsize=7)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("false alarms per hour of bona fide speech")
        ax.set_ylabel(y_label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.set_title(f"stream operating curve ({report['model_format']})", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{stem}_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_into_bundle(bundle_dir: Path, report: dict[str, Any], pngs: Sequence[Path]) -> None:
    """stream.json + plots/stream_*.png into the bundle, listed with sha256; operating_points
    into manifest.json (which is not hashed itself). Written to a temporary file and renamed."""
    import shutil

    manifest_path = bundle_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    targets = {STREAM_JSON: None, **{f"plots/stream_{p.name.rsplit('_', 1)[-1]}": p for p in pngs}}
    (bundle_dir / "plots").mkdir(exist_ok=True)
    (bundle_dir / STREAM_JSON).write_text(
        json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    for name, source in targets.items():
        if source is not None:
            shutil.copyfile(source, bundle_dir / name)
        path = bundle_dir / name
        manifest["files"][name] = file_entry_to_dict(
            FileEntry(sha256=sha256_of(path), bytes=path.stat().st_size)
        )
    default_curve = [
        {k: r[k] for k in ("threshold", "fa_per_hour", "miss_rate", "ttd_median_s", "ttd_p90_s")}
        for r in report["rows"]
        if r["smoothing_windows"] == report["decision_defaults"]["smoothing_windows"]
        and r.get("min_windows_above", 0) == report["decision_defaults"]["min_windows_above"]
    ]
    manifest["operating_points"] = {
        "measured_by": "python -m benchmarks.stream --write-manifest",
        "report": STREAM_JSON,
        "stream": report["stream"],
        "model_format": report["model_format"],
        "decision": report["decision_defaults"],
        "points": report["operating_points"],
        "curve": default_curve,
    }
    temporary = manifest_path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    temporary.replace(manifest_path)
    load_bundle(bundle_dir)  # every file's sha256 again, as the device will


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stream",
        description="False alarms per hour, misses and time to detect of a bundle on long "
        "streams built from its eval split, through the device's decision code.",
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        default=REPO / "bundles" / "demo",
        help="model bundle directory (default: bundles/demo)",
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="dataset root (default: the manifest's)"
    )
    parser.add_argument(
        "--hours",
        type=float,
        default=DEFAULT_HOURS,
        help=f"hours of bona fide speech in the stream (default {DEFAULT_HOURS:g})",
    )
    parser.add_argument(
        "--spoofs-per-hour",
        type=float,
        default=DEFAULT_SPOOFS_PER_HOUR,
        help="spoof files inserted per hour of bona fide speech (default "
        f"{DEFAULT_SPOOFS_PER_HOUR:g})",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"stream seed (default {DEFAULT_SEED})"
    )
    parser.add_argument(
        "--model", choices=("int8", "fp32"), default="int8", help="model format (default int8)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results",
        help="output folder (default: benchmarks/results)",
    )
    parser.add_argument(
        "--write-manifest",
        action="store_true",
        help="also write stream.json, the curves and operating_points into the bundle",
    )
    args = parser.parse_args(argv)
    if not (args.hours > 0 and args.spoofs_per_hour > 0):
        print(
            f"error: expected --hours > 0 and --spoofs-per-hour > 0, got {args.hours} and "
            f"{args.spoofs_per_hour}",
            file=sys.stderr,
        )
        return 2
    try:
        report = run(
            args.bundle,
            args.data,
            hours=args.hours,
            spoofs_per_hour=args.spoofs_per_hour,
            seed=args.seed,
            model_format=args.model,
        )
    except (StreamBenchError, BundleError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    written = write_outputs(report, args.out, f"stream-{args.bundle.resolve().name}")
    print(render_table(report))
    print("\n" + "\n".join(f"Wrote: {p}" for p in written))
    if args.write_manifest:
        write_into_bundle(args.bundle, report, [p for p in written if p.suffix == ".png"])
        print(f"operating_points written into {args.bundle / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
