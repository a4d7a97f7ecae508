"""`python -m benchmarks.calibration --bundle DIR [--data DIR]`: how calibrated P(spoof) is,
where it is not, and what a map fitted on dev alone can do about it.

The bundle's model (int8 by default, through `device.runtime.Scorer`, the device's own front
end) scores every window of the dev and eval splits of the dataset it was trained on (the
manifest's data.trained_on; --data replaces its root). Two quantities are looked at, each as
the device uses it:

    file     the mean of the non-silent windows' logits, then the margin (`clad-agent score`)
    window   one non-silent window's margin (what `listen` smooths and thresholds)

Candidate maps P(spoof) = sigmoid(a * margin + b), every one fitted on dev only
(`convert.score_calibration.fit_map`, Platt's smoothed targets unless "hard labels"): none,
the bundle's own (fitted by `make convert` on PyTorch dev file margins), temperature and Platt
on dev file margins, Platt with hard labels, temperature and Platt on dev window margins.
Each is scored by ECE with the fixed binning of `convert.score_calibration` (ECE_BINS = 15
equal-width bins; 10 and 20 bins are shown beside it as a sensitivity check, never used to
choose) on: dev in sample, held-out dev (5 folds by file, seeded: fitted on four fifths,
scored on the fifth; the bundle's own map, fitted on all of dev, has no held-out figure)
and eval.

To tell a bad map from a shifted split, three references are computed on eval itself. They
are not candidates (they use eval labels): the lowest eval ECE any affine map reaches (a grid
over a and b), Platt fitted on eval, and the ECE that perfectly calibrated labels give with
this many files (the metric's noise floor, simulated). Eval is also cut by speaker and by
attack, seen in training or not (the manifest's training attacks), with the bundle's map.

Writes <out>/calibration-<bundle>.json, a Markdown table beside it and a reliability PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convert.score_calibration import (
    ECE_BINS,
    expected_calibration_error,
    fit_map,
    reliability_bins,
)
from device.audio import load_audio, windows_from_signal
from device.bundle import MANIFEST_NAME, Bundle, BundleError, load_bundle
from device.runtime import Scorer
from device.scores import Calibration, p_spoof_from_margin, select_windows, spoof_margin

REPO = Path(__file__).resolve().parents[1]
CV_FOLDS = 5
CV_SEED = 0
NOISE_FLOOR_DRAWS = 200
GRID_A = np.linspace(0.3, 3.0, 55)  # slopes searched for the best affine map on eval
GRID_B = np.linspace(-2.0, 2.0, 81)
BUNDLE_MAP = "bundle's own (PyTorch dev files)"


class CalibrationStudyError(RuntimeError):
    """The study cannot run (no bundle, no dev or eval files, ...)."""


@dataclass
class SplitScores:
    """One split, scored window by window."""

    window_margin: np.ndarray  # (non-silent windows,) raw spoof margins, uncalibrated
    window_file: np.ndarray  # (non-silent windows,) index of the file each window belongs to
    file_margin: np.ndarray  # (files,) margin of the mean logits of the selected windows
    labels: np.ndarray  # (files,) 1 = spoof
    speakers: np.ndarray  # (files,) str
    attacks: np.ndarray  # (files,) str, "bonafide" for bona fide files

    @property
    def window_labels(self) -> np.ndarray:
        return self.labels[self.window_file]


def score_split(scorer: Scorer, records: Sequence[Any]) -> SplitScores:
    margins, owners, file_margins = [], [], []
    for index, record in enumerate(records):
        windows = windows_from_signal(
            load_audio(record.path),
            scorer.window_samples,
            scorer.hop_samples,
            scorer.silence_floor_dbfs,
        )
        logits = scorer.score_windows(windows.normalized).astype(np.float64)
        chosen = select_windows(windows.silent)
        file_margins.append(float(spoof_margin(logits[chosen].mean(axis=0))))
        loud = np.flatnonzero(~windows.silent)
        margins.append(spoof_margin(logits[loud]))
        owners.append(np.full(loud.size, index, dtype=np.int64))
    return SplitScores(
        window_margin=np.concatenate(margins),
        window_file=np.concatenate(owners),
        file_margin=np.array(file_margins),
        labels=np.array([int(r.label == "spoof") for r in records], dtype=np.int64),
        speakers=np.array([r.speaker for r in records]),
        attacks=np.array([r.attack if r.label == "spoof" else "bonafide" for r in records]),
    )


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    name: str
    fit: Callable[[SplitScores], Calibration | None]  # from (a part of) dev


def candidates(bundle_calibration: Calibration | None) -> list[Candidate]:
    def on_files(method: str, hard: bool = False) -> Callable[[SplitScores], Calibration]:
        return lambda s: fit_map(s.file_margin, s.labels, method, hard_labels=hard)

    def on_windows(method: str) -> Callable[[SplitScores], Calibration]:
        return lambda s: fit_map(s.window_margin, s.window_labels, method)

    fitted = [
        Candidate("temperature, dev files", on_files("temperature")),
        Candidate("platt, dev files", on_files("platt")),
        Candidate("platt, dev files, hard labels", on_files("platt", hard=True)),
        Candidate("temperature, dev windows", on_windows("temperature")),
        Candidate("platt, dev windows", on_windows("platt")),
    ]
    if bundle_calibration is None:
        return [Candidate("none", lambda s: None), *fitted]
    # Fitted by `make convert` on all of dev: it cannot be refitted here, so it has no
    # held-out figure.
    bundle = Candidate(BUNDLE_MAP, lambda s: bundle_calibration)
    return [Candidate("none", lambda s: None), bundle, *fitted]


def _p(margins: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    return p_spoof_from_margin(margins if calibration is None else calibration.margin(margins))


def _subset(s: SplitScores, files: np.ndarray) -> SplitScores:
    keep = np.isin(s.window_file, files)
    remap = np.full(s.labels.size, -1, dtype=np.int64)
    remap[files] = np.arange(files.size)
    return SplitScores(
        s.window_margin[keep],
        remap[s.window_file[keep]],
        s.file_margin[files],
        s.labels[files],
        s.speakers[files],
        s.attacks[files],
    )


def held_out_ece(dev: SplitScores, candidate: Candidate) -> tuple[float, float]:
    """(file ECE, window ECE) of dev, each file scored by a map fitted without it."""
    order = np.random.default_rng(CV_SEED).permutation(dev.labels.size)
    p_file = np.empty(dev.labels.size)
    p_window = np.empty(dev.window_margin.size)
    for held in np.array_split(order, CV_FOLDS):
        calibration = candidate.fit(_subset(dev, np.setdiff1d(order, held)))
        p_file[held] = _p(dev.file_margin[held], calibration)
        inside = np.isin(dev.window_file, held)
        p_window[inside] = _p(dev.window_margin[inside], calibration)
    return (
        expected_calibration_error(p_file, dev.labels),
        expected_calibration_error(p_window, dev.window_labels),
    )


def evaluate(dev: SplitScores, ev: SplitScores, candidate: Candidate) -> dict[str, Any]:
    c = candidate.fit(dev)
    held_file, held_window = (
        (None, None) if candidate.name == BUNDLE_MAP else held_out_ece(dev, candidate)
    )
    ece = expected_calibration_error
    return {
        "rule": candidate.name,
        "a": None if c is None else c.a,
        "b": None if c is None else c.b,
        "dev_file": ece(_p(dev.file_margin, c), dev.labels),
        "dev_window": ece(_p(dev.window_margin, c), dev.window_labels),
        "held_out_dev_file": held_file,
        "held_out_dev_window": held_window,
        "eval_file": ece(_p(ev.file_margin, c), ev.labels),
        "eval_window": ece(_p(ev.window_margin, c), ev.window_labels),
        "eval_file_10_bins": ece(_p(ev.file_margin, c), ev.labels, 10),
        "eval_file_20_bins": ece(_p(ev.file_margin, c), ev.labels, 20),
    }


# --------------------------------------------------------------------------- references


def best_affine_ece(margins: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    best = (np.inf, 1.0, 0.0)
    for a in GRID_A:
        z = a * margins
        for b in GRID_B:
            value = expected_calibration_error(p_spoof_from_margin(z + b), labels)
            if value < best[0]:
                best = (value, float(a), float(b))
    return {"ece": best[0], "a": best[1], "b": best[2]}


def noise_floor(p: np.ndarray, seed: int = 0) -> dict[str, float]:
    """ECE of labels drawn from `p` itself (a perfectly calibrated model), this many files."""
    rng = np.random.default_rng(seed)
    draws = [
        expected_calibration_error(p, (rng.random(p.size) < p).astype(np.int64))
        for _ in range(NOISE_FLOOR_DRAWS)
    ]
    return {"mean": float(np.mean(draws)), "p90": float(np.percentile(draws, 90))}


def references(ev: SplitScores, bundle_calibration: Calibration | None) -> dict[str, Any]:
    platt = fit_map(ev.file_margin, ev.labels, "platt", hard_labels=True)
    return {
        "note": "fitted on eval labels: references, not candidates",
        "best_affine_eval_file": best_affine_ece(ev.file_margin, ev.labels),
        "best_affine_eval_window": best_affine_ece(ev.window_margin, ev.window_labels),
        "platt_fitted_on_eval_file": {
            "a": platt.a,
            "b": platt.b,
            "ece": expected_calibration_error(_p(ev.file_margin, platt), ev.labels),
        },
        "noise_floor_eval_file_bundle_map": noise_floor(_p(ev.file_margin, bundle_calibration)),
    }


def groups(ev: SplitScores, calibration: Calibration | None, seen: set[str]) -> list[dict]:
    """Eval by speaker and by attack (seen in training or not), with `calibration`."""
    p = _p(ev.file_margin, calibration)
    cuts: list[tuple[str, np.ndarray]] = [
        (f"speaker {s}", ev.speakers == s) for s in sorted(set(ev.speakers.tolist()))
    ]
    cuts += [(f"attack {a}", ev.attacks == a) for a in sorted(set(ev.attacks.tolist()))]
    spoof = ev.labels == 1
    unseen = spoof & ~np.isin(ev.attacks, sorted(seen))
    cuts += [
        ("bona fide + attacks seen in training", ~unseen),
        ("bona fide + attacks unseen in training", ~spoof | unseen),
    ]
    rows = []
    for name, inside in cuts:
        if not inside.any():
            continue
        bona, spo = inside & ~spoof, inside & spoof
        rows.append(
            {
                "group": name,
                "files": int(inside.sum()),
                "fraction_spoof": float(ev.labels[inside].mean()),
                "mean_p_spoof": float(p[inside].mean()),
                "ece": expected_calibration_error(p[inside], ev.labels[inside]),
                "mean_p_bonafide_files": float(p[bona].mean()) if bona.any() else None,
                "mean_p_spoof_files": float(p[spo].mean()) if spo.any() else None,
            }
        )
    return rows


# --------------------------------------------------------------------------- run


def split_records(bundle: Bundle, data: Path | None) -> tuple[list[Any], list[Any], set[str]]:
    """Dev and eval records of the dataset the bundle was trained on, and the attacks that
    training saw."""
    from train.data import DatasetError, load_dataset

    trained_on = bundle.manifest.data.get("trained_on", {})
    fmt = trained_on.get("format")
    root = data if data is not None else trained_on.get("root")
    if not fmt or not root:
        raise CalibrationStudyError(
            f"{bundle.root / MANIFEST_NAME}: expected data.trained_on.format and .root (the "
            f"dataset the bundle was trained on), got {trained_on!r}; give --data DIR"
        )
    try:
        dataset = load_dataset(
            fmt, root, track=trained_on.get("track"), seed=int(trained_on.get("seed") or 0)
        )
    except DatasetError as error:
        raise CalibrationStudyError(f"cannot read the {fmt} dataset at {root}: {error}") from error
    dev = [r for r in dataset.records if r.split == "dev"]
    ev = [r for r in dataset.records if r.split == "eval"]
    for name, records in (("dev", dev), ("eval", ev)):
        labels = {r.label for r in records}
        if labels != {"bonafide", "spoof"}:
            raise CalibrationStudyError(
                f"{root}: expected bona fide and spoof files in the {name} split, got "
                f"{sorted(labels) or 'no files'}"
            )
    seen = {r.attack for r in dataset.records if r.split == "train" and r.label == "spoof"}
    return dev, ev, seen


def run(
    bundle_dir: Path,
    data: Path | None,
    model_format: str = "int8",
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        bundle = load_bundle(bundle_dir)
    except BundleError as error:
        raise CalibrationStudyError(str(error)) from error
    scorer = Scorer(bundle, model_format)
    dev_records, eval_records, seen = split_records(bundle, data)
    dev = score_split(scorer, dev_records)
    ev = score_split(scorer, eval_records)
    log(
        f"scored {len(dev_records)} dev and {len(eval_records)} eval files "
        f"({dev.window_margin.size + ev.window_margin.size} windows) in "
        f"{time.perf_counter() - started:.1f} s"
    )
    rows = [evaluate(dev, ev, c) for c in candidates(scorer.calibration)]
    return {
        "bundle": str(bundle.root),
        "model_format": model_format,
        "ece_bins": ECE_BINS,
        "held_out": f"{CV_FOLDS} folds by file, seed {CV_SEED}",
        "files": {"dev": int(dev.labels.size), "eval": int(ev.labels.size)},
        "windows": {"dev": int(dev.window_margin.size), "eval": int(ev.window_margin.size)},
        "attacks_seen_in_training": sorted(seen),
        "rows": rows,
        "references": references(ev, scorer.calibration),
        "eval_groups_bundle_map": groups(ev, scorer.calibration, seen),
        "seconds": round(time.perf_counter() - started, 2),
        "_reliability": {  # for the PNG; not written to the JSON
            "eval file": (ev.file_margin, ev.labels),
            "eval window": (ev.window_margin, ev.window_labels),
        },
        "_maps": {c.name: c.fit(dev) for c in candidates(scorer.calibration)},
    }


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"Calibration study: {report['files']['dev']} dev / {report['files']['eval']} eval files, "
        f"{report['model_format']} scores, ECE with {report['ece_bins']} equal-width bins "
        f"(held out: {report['held_out']})",
        "",
        "| map (fitted on dev) | a | b | dev file | held-out dev file | eval file | dev window "
        "| held-out dev window | eval window | eval file, 10 / 20 bins |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        a, b = _f(r["a"], 3), _f(r["b"], 3)
        lines.append(
            f"| {r['rule']} | {a} | {b} | {r['dev_file']:.4f} | {_f(r['held_out_dev_file'])} | "
            f"{r['eval_file']:.4f} | {r['dev_window']:.4f} | {_f(r['held_out_dev_window'])} | "
            f"{r['eval_window']:.4f} | {r['eval_file_10_bins']:.4f} / "
            f"{r['eval_file_20_bins']:.4f} |"
        )
    ref = report["references"]
    best_f, best_w = ref["best_affine_eval_file"], ref["best_affine_eval_window"]
    platt, floor = ref["platt_fitted_on_eval_file"], ref["noise_floor_eval_file_bundle_map"]
    lines += [
        "",
        "References on eval labels (not candidates): lowest ECE of any affine map "
        f"{best_f['ece']:.4f} on files (a={best_f['a']:.3f}, b={best_f['b']:.3f}), "
        f"{best_w['ece']:.4f} on windows (a={best_w['a']:.3f}, b={best_w['b']:.3f}); Platt "
        f"fitted on eval files {platt['ece']:.4f} (a={platt['a']:.3f}, b={platt['b']:.3f}); "
        f"perfectly calibrated labels at the bundle's P give ECE {floor['mean']:.4f} "
        f"(p90 {floor['p90']:.4f}) with this many files.",
        "",
        "| eval group (bundle's map) | files | fraction spoof | mean P(spoof) | ECE | mean P "
        "bona fide | mean P spoof |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in report["eval_groups_bundle_map"]:
        pb = "-" if g["mean_p_bonafide_files"] is None else f"{g['mean_p_bonafide_files']:.3f}"
        ps = "-" if g["mean_p_spoof_files"] is None else f"{g['mean_p_spoof_files']:.3f}"
        lines.append(
            f"| {g['group']} | {g['files']} | {g['fraction_spoof']:.3f} | "
            f"{g['mean_p_spoof']:.3f} | {g['ece']:.4f} | {pb} | {ps} |"
        )
    return "\n".join(lines)


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plot(report: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ["none", BUNDLE_MAP, "platt, dev windows"]
    panels = report["_reliability"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.2), squeeze=False)
    for ax, (title, (margins, labels)) in zip(axes[0], panels.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
        for name in shown:
            if name not in report["_maps"]:
                continue
            p = _p(margins, report["_maps"][name])
            mean_p, frac, _ = reliability_bins(p, labels)
            ece = expected_calibration_error(p, labels)
            ax.plot(mean_p, frac, "o-", markersize=3, label=f"{name} (ECE {ece:.3f})")
        ax.set_title(f"{title}: {labels.size} ({ECE_BINS} bins)", fontsize=9)
        ax.set_xlabel("mean P(spoof) in bin")
        ax.set_ylabel("fraction spoof in bin")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(report: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(public, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(render_table(report) + "\n", encoding="utf-8")
    written = [json_path, md_path]
    png = plot(report, out_dir / f"{stem}.png")
    return written + ([png] if png is not None else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.calibration",
        description="ECE of a bundle's P(spoof) on dev and eval, files and stream windows, for "
        "calibration maps fitted on dev only, with references that show what eval allows.",
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
        "--model", choices=("int8", "fp32"), default="int8", help="model format (default int8)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results",
        help="output folder (default: benchmarks/results)",
    )
    args = parser.parse_args(argv)
    try:
        report = run(args.bundle, args.data, args.model)
    except (CalibrationStudyError, BundleError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    written = write_outputs(report, args.out, f"calibration-{args.bundle.resolve().name}")
    print(render_table(report))
    print("\n" + "\n".join(f"Wrote: {p}" for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
