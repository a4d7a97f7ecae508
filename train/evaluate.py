"""`python -m train.evaluate`: score a dataset with a trained checkpoint.

    python -m train.evaluate --checkpoint runs/demo/best.pt --format asvspoof2019 \\
        --root data/demo/LA --json

Files are scored by the one rule in `train.scoring` (the device's rule). Prints EER with its
threshold, accuracy at that threshold and at the checkpoint's dev threshold, and EER per
attack; with --json as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from device.scores import p_spoof_from_margin
from train.checkpoint import CheckpointError, model_from_checkpoint
from train.data import FORMATS, SPLITS, DatasetError, Record, load_dataset
from train.data.records import BONAFIDE_ATTACK
from train.metrics import MetricsError, compute_eer, per_attack_eer, pooled_eer
from train.scoring import FileScore, score_files, write_asvspoof_scores


class EvaluationError(ValueError):
    """A dataset or checkpoint that cannot be evaluated, with what was expected."""


def finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def report(
    records: list[Record],
    scores: list[FileScore],
    dev_threshold_margin: float | None = None,
    train_attacks: set[str] | None = None,
) -> dict[str, Any]:
    """EER, threshold, accuracy and per-attack EER of scored files (spoof logit margins)."""
    margins = np.array([-s.asvspoof_score for s in scores], dtype=np.float64)
    labels = np.array([r.target for r in records], dtype=np.int64)
    attacks = [r.attack for r in records]
    try:
        eer = compute_eer(margins, labels)
    except MetricsError as error:
        raise EvaluationError(f"cannot compute an EER on these files: {error}") from error
    out: dict[str, Any] = {
        "files": len(records),
        "bonafide": int(np.sum(labels == 0)),
        "spoof": int(np.sum(labels == 1)),
        "eer": eer.eer,
        "threshold_margin": finite_or_none(eer.threshold),
        "threshold_p_spoof": float(p_spoof_from_margin(eer.threshold)),
        "accuracy": eer.accuracy,
        "per_attack_eer": {
            attack: values["eer"]
            for attack, values in per_attack_eer(margins, labels, attacks, BONAFIDE_ATTACK).items()
        },
        "all_silent_files": int(sum(s.all_silent for s in scores)),
    }
    if dev_threshold_margin is not None:
        out["dev_threshold_p_spoof"] = float(p_spoof_from_margin(dev_threshold_margin))
        out["accuracy_at_dev_threshold"] = float(
            np.mean((margins >= dev_threshold_margin) == (labels == 1))
        )
    if train_attacks is not None:
        spoof_attacks = {a for a, y in zip(attacks, labels, strict=True) if y == 1}
        unseen = sorted(spoof_attacks - train_attacks)
        seen = sorted(spoof_attacks & train_attacks)
        unseen_eer = pooled_eer(margins, labels, attacks, set(unseen))
        seen_eer = pooled_eer(margins, labels, attacks, set(seen))
        out["unseen_attacks"] = unseen
        out["unseen_attacks_eer"] = unseen_eer.eer if unseen_eer else None
        out["seen_attacks_eer"] = seen_eer.eer if seen_eer else None
    return out


def evaluate(
    checkpoint_path: str | Path,
    format: str,
    root: str | Path,
    split: str = "eval",
    *,
    track: str | None = None,
    skip_missing: bool = False,
    scores_out: str | Path | None = None,
    batch_windows: int = 128,
    progress: bool = False,
) -> dict[str, Any]:
    """Score one split (or "all") of a dataset with a checkpoint; returns the report dict."""
    model, checkpoint = model_from_checkpoint(checkpoint_path)
    wanted = list(SPLITS) if split == "all" else [split]
    dataset = load_dataset(format, root, skip_missing=skip_missing, track=track, splits=wanted)
    records = [r for r in dataset.records if r.split in wanted]
    if not records:
        raise EvaluationError(f"{root}: the {split} split holds no files")

    def predict(windows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(windows)).numpy()

    started = time.perf_counter()
    paths: Iterable[str] = [r.path for r in records]
    if progress:
        from rich.progress import track as rich_track

        paths = rich_track(paths, description=f"scoring {split}", transient=True)
    scores = score_files(
        paths,
        predict,
        checkpoint.window_samples,
        checkpoint.hop_samples,
        checkpoint.silence_floor_dbfs,
        batch_windows=batch_windows,
    )
    elapsed_s = time.perf_counter() - started
    dev_threshold = checkpoint.dev.get("threshold_margin")
    run_config = checkpoint.run_config
    train_attacks = None
    if run_config.get("format") and run_config.get("root"):
        train_attacks = _train_attacks(run_config)
    out = {
        "checkpoint": str(checkpoint_path),
        "format": format,
        "root": str(root),
        "split": split,
        "window_samples": checkpoint.window_samples,
        "hop_samples": checkpoint.hop_samples,
        **report(records, scores, dev_threshold, train_attacks),
        "scoring_s": round(elapsed_s, 2),
    }
    if scores_out is not None:
        write_asvspoof_scores(
            scores_out,
            [r.utterance_id or Path(r.path).stem for r in records],
            [r.attack for r in records],
            [r.label for r in records],
            scores,
        )
    return out


def _train_attacks(run_config: dict[str, Any]) -> set[str] | None:
    """Attack ids of the training split the checkpoint was trained on, if it is still there."""
    try:
        train_set = load_dataset(
            run_config["format"],
            run_config["root"],
            skip_missing=True,
            skip_malformed=True,
            track=run_config.get("track"),
            splits=["train"],
            seed=int(run_config.get("seed", 0)),
        )
    except DatasetError:
        return None
    return {r.attack for r in train_set.records if r.label == "spoof"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Score a dataset with a CLAD checkpoint: EER, accuracy, per-attack EER.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="best.pt of a run")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="dataset layout")
    parser.add_argument("--root", required=True, help="dataset root directory")
    parser.add_argument(
        "--split", default="eval", choices=[*SPLITS, "all"], help="which split to score"
    )
    parser.add_argument("--track", default=None, help="LA or DF (asvspoof2021 only)")
    parser.add_argument("--skip-missing", action="store_true", help="skip missing audio")
    parser.add_argument("--scores-out", default=None, help="write an ASVspoof score file here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = evaluate(
            args.checkpoint,
            args.format,
            args.root,
            args.split,
            track=args.track,
            skip_missing=args.skip_missing,
            scores_out=args.scores_out,
            progress=not args.json and sys.stderr.isatty(),
        )
    except (CheckpointError, DatasetError, EvaluationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['split']} of {result['root']}: {result['files']} files, EER "
        f"{100 * result['eer']:.2f}% (P(spoof) threshold {result['threshold_p_spoof']:.3f}), "
        f"accuracy {100 * result['accuracy']:.2f}%"
    )
    if "accuracy_at_dev_threshold" in result:
        print(f"accuracy at the dev threshold: {100 * result['accuracy_at_dev_threshold']:.2f}%")
    for attack, eer in result["per_attack_eer"].items():
        print(f"  {attack}: EER {100 * eer:.2f}%")
    if result.get("unseen_attacks"):
        print(
            f"unseen attacks {','.join(result['unseen_attacks'])}: EER "
            f"{100 * result['unseen_attacks_eer']:.2f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
