"""`python -m train`: parse the flags, hand a TrainConfig to train.train.train()."""

from __future__ import annotations

import argparse
import json
import sys

from train.augment import AUGMENT_KINDS, AugmentConfig, AugmentConfigError, parse_kinds
from train.checkpoint import CheckpointError
from train.config import BALANCES, DEVICES, ConfigError, TrainConfig
from train.data import FORMATS, DatasetError
from train.model import FRONTENDS, POOLINGS, ModelConfig, ModelConfigError

_DEFAULT = TrainConfig(format="asvspoof2019", root=".")
_AUGMENT = AugmentConfig()


def build_parser() -> argparse.ArgumentParser:
    """`python -m train`'s options, in groups.

    Long because: one add_argument call (with its help text) per option, declarations only.
    """
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description=(
            "Train CLAD (raw-waveform CNN with attention) on an anti-spoofing dataset. Writes "
            "RUNS_DIR/NAME/: config.json, train.log, best.pt, last.pt, metrics.json, ASVspoof "
            "score files and plots. See docs/training.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--format", required=True, choices=sorted(FORMATS), help="dataset layout")
    data.add_argument("--root", required=True, help="dataset root directory")
    data.add_argument("--track", default=None, help="LA or DF (asvspoof2021 only)")
    data.add_argument(
        "--skip-missing", action="store_true", help="skip protocol lines whose audio is missing"
    )
    data.add_argument("--skip-malformed", action="store_true", help="skip malformed protocol lines")
    data.add_argument(
        "--no-eval",
        action="store_true",
        help="allow a dataset without an eval split (no held-out figures are reported)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--name", default=_DEFAULT.name, help="run name: the folder under --runs-dir")
    run.add_argument("--runs-dir", default=_DEFAULT.runs_dir, help="where run folders go")
    run.add_argument(
        "--resume", action="store_true", help="continue RUNS_DIR/NAME from its last.pt"
    )
    run.add_argument(
        "--overwrite", action="store_true", help="delete an existing RUNS_DIR/NAME and start again"
    )
    run.add_argument("--seed", type=int, default=_DEFAULT.seed, help="one seed fixes every number")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    model = parser.add_argument_group("model and windows")
    model.add_argument(
        "--window-samples",
        type=int,
        default=ModelConfig.window_samples,
        help="model input length at 16 kHz (16000 = 1 s)",
    )
    model.add_argument(
        "--hop-samples", type=int, default=0, help="hop between scored windows; 0 = half a window"
    )
    model.add_argument(
        "--frontend", choices=FRONTENDS, default=ModelConfig.frontend, help="first layer"
    )
    model.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=ModelConfig.pooling,
        help="pooling over time: softmax attention, or sigmoid gates + mean (one int8 "
        f"XNNPACK partition; docs/training.md); default {ModelConfig.pooling}",
    )
    model.add_argument(
        "--silence-floor-dbfs",
        type=float,
        default=_DEFAULT.silence_floor_dbfs,
        help="windows below this RMS are silence: not trained on when avoidable, not scored",
    )
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument(
        "--epochs", type=int, default=_DEFAULT.epochs, help="passes over the training split"
    )
    recipe.add_argument(
        "--batch-size", type=int, default=_DEFAULT.batch_size, help="windows per step (per process)"
    )
    recipe.add_argument(
        "--lr", type=float, default=_DEFAULT.learning_rate, help="Adam learning rate"
    )
    recipe.add_argument(
        "--weight-decay", type=float, default=_DEFAULT.weight_decay, help="Adam L2 penalty"
    )
    recipe.add_argument(
        "--grad-clip", type=float, default=_DEFAULT.grad_clip_norm, help="max grad norm; 0 = off"
    )
    recipe.add_argument(
        "--balance",
        choices=BALANCES,
        default=_DEFAULT.balance,
        help="class balance: inverse-frequency loss weights, balanced sampling, or none",
    )
    recipe.add_argument(
        "--augment",
        default=",".join(_AUGMENT.kinds) or "none",
        help=f"comma-separated augmentations from {','.join(AUGMENT_KINDS)}; 'all' (every kind), "
        "'basic' (noise,codec,gain,bandlimit) or 'none'",
    )
    recipe.add_argument(
        "--augment-probability",
        type=float,
        default=_AUGMENT.probability,
        help="chance that each enabled augmentation fires on a training crop",
    )
    speed = parser.add_argument_group("speed (same numbers, faster or slower)")
    speed.add_argument(
        "--device",
        choices=DEVICES,
        default=_DEFAULT.device,
        help="auto: CUDA when torch sees it, else CPU",
    )
    speed.add_argument(
        "--threads",
        type=int,
        default=_DEFAULT.threads,
        help="torch threads (0 = torch's default: one per core); 1 is fastest on a busy machine",
    )
    speed.add_argument(
        "--workers", type=int, default=_DEFAULT.workers, help="DataLoader worker processes"
    )
    speed.add_argument(
        "--cache-mb",
        type=int,
        default=_DEFAULT.cache_mb,
        help="memory for decoded dev windows and training signals",
    )
    speed.add_argument(
        "--eval-batch-windows",
        type=int,
        default=_DEFAULT.eval_batch_windows,
        help="windows per forward pass when scoring dev and eval",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    augment = AugmentConfig(kinds=parse_kinds(args.augment), probability=args.augment_probability)
    return TrainConfig(
        format=args.format,
        root=args.root,
        name=args.name,
        runs_dir=args.runs_dir,
        track=args.track,
        skip_missing=args.skip_missing,
        skip_malformed=args.skip_malformed,
        require_eval=not args.no_eval,
        model=ModelConfig(
            window_samples=args.window_samples, frontend=args.frontend, pooling=args.pooling
        ),
        hop_samples=args.hop_samples,
        silence_floor_dbfs=args.silence_floor_dbfs,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        grad_clip_norm=args.grad_clip,
        balance=args.balance,
        augment=augment,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        workers=args.workers,
        cache_mb=args.cache_mb,
        eval_batch_windows=args.eval_batch_windows,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported here so that --help answers without loading torch.
    from train.train import TrainingError, train

    try:
        config = config_from_args(args)
        result = train(
            config, resume=args.resume, overwrite=args.overwrite, show_progress=not args.no_progress
        )
    except (
        TrainingError,
        ConfigError,
        ModelConfigError,
        AugmentConfigError,
        CheckpointError,
        DatasetError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json and result.metrics:
        print(json.dumps(result.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
