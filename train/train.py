"""The CLAD training loop: data checks, balanced random crops, best-by-dev-EER, resume, DDP.

One call, `train(config)`, does a whole run into ``<runs_dir>/<name>/``:

    config.json     the resolved settings
    train.log       what happened, epoch by epoch
    last.pt         everything needed to resume (written atomically each epoch)
    best.pt         the weights with the lowest dev EER (ties: lower dev loss), for convert/
    metrics.json    per epoch and final: loss, dev EER + threshold + accuracy, per-attack EER
    scores_{dev,eval}.txt   ASVspoof 2019 CM score files (higher = more bona fide)
    plots/          curves.png, det.png, hist_dev.png, hist_eval.png

Bad input fails in `prepare()`, before any training time is spent.
Under ``torchrun`` (WORLD_SIZE > 1) every rank trains on its shard; rank 0 evaluates and
writes. See docs/training.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn
from torch.utils.data import DataLoader, Sampler

from device.audio import (
    NORMALIZATION_RULE,
    SAMPLE_RATE,
    AudioError,
    load_audio,
    normalize_windows,
    read_info,
    window_rms_dbfs,
)
from train.augment import Augmenter
from train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    config_differences,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)
from train.config import CONFIG_FILE, ConfigError, TrainConfig
from train.data import DatasetError, Record, read_dataset
from train.data.records import LABELS
from train.evaluate import report
from train.model import CLAD, MODEL_NAME, build_model, count_macs, count_parameters
from train.scoring import (
    AGGREGATION_RULE,
    ASVSPOOF_SCORE_RULE,
    FileScore,
    PreparedFile,
    prepare_file,
    score_prepared,
    write_asvspoof_scores,
)

log = logging.getLogger("train")

MAX_CROP_TRIES = 8
"""Random crops tried per training example to find one above the silence floor."""

# Settings that may change when a run is resumed: they decide speed, not results.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "device", "threads", "workers", "cache_mb", "eval_batch_windows", "runs_dir"}
)


class TrainingError(RuntimeError):
    """Input that cannot be trained on, found before training starts. Says what and where."""


class RunExistsError(TrainingError):
    """The run directory already holds a run and neither resume nor overwrite was asked."""


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class Placement:
    device: torch.device
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_placement(config: TrainConfig) -> Placement:
    """Pick the device, join the process group under torchrun, fix threads and determinism."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but torch sees no CUDA device")
    if want_cuda:
        # Deterministic cuBLAS needs this before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        device = torch.device("cuda", local_rank if world_size > 1 else 0)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        device = torch.device("cpu")
    if config.threads:
        torch.set_num_threads(config.threads)
    # Identical metrics from one seed: refuse nondeterministic kernels (warn where CUDA has none).
    torch.use_deterministic_algorithms(True, warn_only=want_cuda)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return Placement(device, rank, world_size, local_rank)


def _setup_logging(run_dir: Path | None, is_main: bool, append: bool) -> logging.Handler | None:
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(stream)
    if run_dir is None or not is_main:
        return None
    file_handler = logging.FileHandler(
        run_dir / "train.log", mode="a" if append else "w", encoding="utf-8"
    )
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_handler)
    return file_handler


@contextmanager
def _progress(description: str, total: int, enabled: bool) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr, silent when stderr is not a terminal."""
    console = Console(stderr=True)
    show = enabled and console.is_terminal
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")

        def advance(steps: int = 1, info: str = "") -> None:
            progress.update(task, advance=steps, info=info)

        yield advance


# --------------------------------------------------------------------------- data


@dataclass
class Splits:
    train: list[Record]
    dev: list[Record]
    eval: list[Record]
    train_samples: list[int]  # 16 kHz length of each training file
    dev_samples: list[int]
    problems: int = 0


def _samples_at_16k(record: Record) -> int:
    try:
        info = read_info(record.path)
    except AudioError as error:
        raise TrainingError(f"{record.split} file unreadable: {error}") from error
    if info.frames <= 0:
        raise TrainingError(f"{record.split} file {record.path} holds no audio (0 frames)")
    return math.ceil(info.frames * SAMPLE_RATE / info.sample_rate)


def _check_classes(records: list[Record], split: str, root: str) -> None:
    counts = {label: sum(r.label == label for r in records) for label in LABELS}
    if not records:
        raise TrainingError(
            f"the {split} split of {root} is empty: expected bona fide and spoof files in it"
        )
    missing = [label for label, n in counts.items() if n == 0]
    if missing:
        raise TrainingError(
            f"the {split} split of {root} has one class only ({counts['bonafide']} bona fide, "
            f"{counts['spoof']} spoof): training and EER need both bona fide and spoof files"
        )


def load_splits(config: TrainConfig, show_progress: bool) -> Splits:
    """Read the dataset and refuse what cannot be trained on, before any training."""
    try:
        dataset = read_dataset(config)
    except DatasetError as error:
        raise TrainingError(f"cannot read the dataset: {error}") from error
    for problem in dataset.problems[:10]:
        log.warning("skipped: %s", problem)
    if len(dataset.problems) > 10:
        log.warning("skipped %d more (see the reader's summary)", len(dataset.problems) - 10)
    train_records = dataset.split("train")
    dev_records = dataset.split("dev")
    eval_records = dataset.split("eval")
    _check_classes(train_records, "train", config.root)
    _check_classes(dev_records, "dev", config.root)
    if config.require_eval or eval_records:
        _check_classes(eval_records, "eval", config.root)

    everything = train_records + dev_records + eval_records
    lengths: list[int] = []
    with _progress("checking audio", len(everything), show_progress) as advance:
        for record in everything:
            lengths.append(_samples_at_16k(record))
            advance()
    train_samples = lengths[: len(train_records)]
    dev_samples = lengths[len(train_records) : len(train_records) + len(dev_records)]
    window = config.window_samples
    longest = max(train_samples)
    if longest < window:
        raise TrainingError(
            f"window_samples={window} ({config.window_ms:.0f} ms) is longer than every training "
            f"file (longest {longest} samples = {1000 * longest / SAMPLE_RATE:.0f} ms in "
            f"{config.root}); choose a window of at most {longest} samples"
        )
    short = sum(n < window for n in train_samples)
    if short:
        log.warning(
            "%d of %d training files are shorter than the %d-sample window; they are zero-padded",
            short,
            len(train_samples),
            window,
        )
    return Splits(
        train_records, dev_records, eval_records, train_samples, dev_samples, len(dataset.problems)
    )


class SignalStore:
    """16 kHz signals of the training files: decoded once into memory while they fit."""

    def __init__(self, records: Sequence[Record], cache: list[np.ndarray | None]) -> None:
        self.records = list(records)
        self.cache = cache

    @classmethod
    def build(
        cls,
        records: Sequence[Record],
        samples: Sequence[int],
        budget_bytes: int,
        show_progress: bool,
    ) -> SignalStore:
        cache: list[np.ndarray | None] = [None] * len(records)
        used = 0
        with _progress("decoding train", len(records), show_progress) as advance:
            for index, (record, n) in enumerate(zip(records, samples, strict=True)):
                if used + 4 * n > budget_bytes:
                    break
                cache[index] = load_audio(record.path)
                used += cache[index].nbytes
                advance()
        cached = sum(c is not None for c in cache)
        log.info(
            "train signals in memory: %d of %d files (%.0f MB)", cached, len(records), used / 1e6
        )
        return cls(records, cache)

    def get(self, index: int) -> np.ndarray:
        cached = self.cache[index]
        return cached if cached is not None else load_audio(self.records[index].path)


def random_crop(
    signal: np.ndarray,
    window_samples: int,
    rng: np.random.Generator,
    silence_floor_dbfs: float,
) -> np.ndarray:
    """A random window of the signal, preferring one above the silence floor.

    Evaluation drops silent windows; training on them would teach the model a class for
    silence. Up to MAX_CROP_TRIES random starts; the loudest one wins if all are silent.
    A signal shorter than the window is zero-padded at the end, as `frame` does.
    """
    if signal.size <= window_samples:
        return np.pad(signal, (0, window_samples - signal.size)).astype(np.float32)
    best, best_level = signal[:window_samples], -np.inf
    for _ in range(MAX_CROP_TRIES):
        start = int(rng.integers(0, signal.size - window_samples + 1))
        crop = signal[start : start + window_samples]
        level = float(window_rms_dbfs(crop))
        if level >= silence_floor_dbfs:
            return crop.astype(np.float32)
        if level > best_level:
            best, best_level = crop, level
    return best.astype(np.float32)


class CropDataset(torch.utils.data.Dataset):
    """Item (file index, sample seed) -> (normalized random window, target)."""

    def __init__(self, store: SignalStore, config: TrainConfig) -> None:
        self.store = store
        self.window_samples = config.window_samples
        self.silence_floor_dbfs = config.silence_floor_dbfs
        self.augment = Augmenter(config.augment) if config.augment.kinds else None
        self.targets = [record.target for record in store.records]

    def __len__(self) -> int:
        return len(self.store.records)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, sample_seed = item
        rng = np.random.default_rng(sample_seed)
        crop = random_crop(self.store.get(index), self.window_samples, rng, self.silence_floor_dbfs)
        if self.augment is not None:
            crop = self.augment(crop, rng)
        window = normalize_windows(crop[None, :])[0]
        return torch.from_numpy(window), self.targets[index]


class EpochSampler(Sampler):
    """Yields (file index, sample seed) for one epoch, sharded across ranks.

    The order, and a seed per example (crop position and augmentation), come from
    (seed, epoch) alone, so an epoch is the same whether it runs straight through, after a
    resume, with any number of loader workers, or split across torchrun ranks (each rank
    takes every world_size-th example, the list padded by wrapping as DistributedSampler
    does). balance="sampler" draws files with replacement, each class equally likely.
    """

    def __init__(
        self,
        targets: Sequence[int],
        seed: int,
        balance: str,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.targets = np.asarray(targets, dtype=np.int64)
        self.seed = int(seed)
        self.balance = balance
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.targets.size / self.world_size)

    def epoch_plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(file indices, sample seeds) of the whole epoch, before sharding."""
        n = self.targets.size
        rng = np.random.default_rng([self.seed, self.epoch, 0x5EED])
        if self.balance == "sampler":
            counts = np.bincount(self.targets, minlength=2).astype(np.float64)
            p = 1.0 / (2.0 * counts[self.targets])
            order = rng.choice(n, size=n, replace=True, p=p / p.sum())
        else:
            order = rng.permutation(n)
        seeds = rng.integers(0, 2**63 - 1, size=n, dtype=np.int64)
        return order, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self.epoch_plan()
        n = order.size
        total = len(self) * self.world_size
        for position in range(self.rank, total, self.world_size):
            yield int(order[position % n]), int(seeds[position % n])


def class_weights(targets: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency loss weights, n / (2 n_class): each class carries half the loss."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=2).astype(np.float64)
    return torch.tensor(counts.sum() / (2.0 * counts), dtype=torch.float32)


# --------------------------------------------------------------------------- evaluation


def torch_predictor(model: nn.Module, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    def predict(windows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(windows).to(device)).float().cpu().numpy()

    return predict


class EvalSet:
    """The files of one split, cut into the windows the scorer keeps: cut once per run when the
    cache budget allows (the per-epoch dev EER then costs only the forward passes)."""

    def __init__(self, records: Sequence[Record], config: TrainConfig, budget_bytes: int) -> None:
        self.records = list(records)
        self.config = config
        self.budget_bytes = budget_bytes
        self.cached: list[PreparedFile] | None = None
        self.labels = np.array([r.target for r in self.records], dtype=np.int64)
        self.attacks = [r.attack for r in self.records]

    def _prepare(self, record: Record) -> PreparedFile:
        return prepare_file(
            record.path,
            self.config.window_samples,
            self.config.effective_hop_samples,
            self.config.silence_floor_dbfs,
        )

    def cache(self, show_progress: bool, description: str) -> int:
        """Cut every file's windows into memory unless they outgrow the budget; bytes used."""
        prepared: list[PreparedFile] = []
        used = 0
        with _progress(description, len(self.records), show_progress) as advance:
            for record in self.records:
                p = self._prepare(record)
                used += p.windows.nbytes
                if used > self.budget_bytes:
                    log.info("%s: windows exceed the cache budget, decoding each time", description)
                    return 0
                prepared.append(p)
                advance()
        self.cached = prepared
        return used

    def score(
        self, model: nn.Module, device: torch.device, show_progress: bool = False, what: str = ""
    ) -> list[FileScore]:
        predict = torch_predictor(model, device)
        batch = self.config.eval_batch_windows
        if self.cached is not None:
            return score_prepared(self.cached, predict, batch)
        scores: list[FileScore] = []
        chunk: list[PreparedFile] = []
        with _progress(f"scoring {what}", len(self.records), show_progress) as advance:
            for record in self.records:
                chunk.append(self._prepare(record))
                if len(chunk) >= 64:
                    scores.extend(score_prepared(chunk, predict, batch))
                    advance(len(chunk))
                    chunk = []
            if chunk:
                scores.extend(score_prepared(chunk, predict, batch))
                advance(len(chunk))
        return scores


def spoof_margins(scores: Sequence[FileScore]) -> np.ndarray:
    """logit_spoof - logit_bonafide per file: the spoof-oriented score metrics use."""
    return np.array([-s.asvspoof_score for s in scores], dtype=np.float64)


def file_loss(scores: Sequence[FileScore], labels: np.ndarray) -> float:
    """Unweighted cross-entropy of the file logits."""
    logits = torch.tensor(np.stack([s.logits for s in scores]), dtype=torch.float64)
    return float(nn.functional.cross_entropy(logits, torch.from_numpy(labels)))


def split_report(
    eval_set: EvalSet,
    scores: Sequence[FileScore],
    threshold: float | None,
    train_attacks: set[str] | None,
) -> dict[str, Any]:
    """`train.evaluate.report` (EER, threshold, accuracy, per-attack EER) plus the file loss."""
    out = report(eval_set.records, list(scores), threshold, train_attacks)
    out["loss"] = file_loss(scores, eval_set.labels)
    return out


# --------------------------------------------------------------------------- checkpoints


def _unwrap(model: nn.Module) -> CLAD:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # type: ignore[return-value]


def _checkpoint_payload(
    model: CLAD, config: TrainConfig, epoch: int, dev: dict[str, Any], macs: int
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_name": MODEL_NAME,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "scoring": {
            "sample_rate": SAMPLE_RATE,
            "window_samples": config.window_samples,
            "hop_samples": config.effective_hop_samples,
            "silence_floor_dbfs": config.silence_floor_dbfs,
            "normalization": NORMALIZATION_RULE,
            "aggregation": AGGREGATION_RULE,
            "asvspoof_score": ASVSPOOF_SCORE_RULE,
            "labels": list(LABELS),
        },
        "run_config": config.to_dict(),
        "epoch": epoch,
        "dev": dev,
        "parameters": count_parameters(model),
        "macs_per_window": macs,
        "torch_version": str(torch.__version__),
    }


@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)  # epoch, dev_eer, dev_loss


def _setting_differences(
    asked: TrainConfig, saved: TrainConfig, allowed: frozenset[str]
) -> list[str]:
    """Settings that differ, ignoring `allowed` and where the folder is (a run may be moved)."""
    ignored = allowed | {"resolved", "name", "runs_dir"}
    new, old = asked.to_dict(), saved.to_dict()
    return [
        f"{key}: run has {old[key]!r}, asked {new[key]!r}"
        for key in new
        if key not in ignored and new[key] != old.get(key)
    ]


def prepare_run_dir(config: TrainConfig, resume: bool, overwrite: bool) -> tuple[TrainConfig, bool]:
    """Make the run directory. Returns the config to run with and whether the run is already
    finished with these very settings (then there is nothing to do).

    On resume the saved config wins (speed settings and a longer --epochs may change).
    """
    run_dir = config.run_dir
    saved_path = run_dir / CONFIG_FILE
    # A folder left by a start that was refused (bad input) holds no checkpoint: reuse it.
    has_run = (run_dir / "last.pt").exists() or (run_dir / "best.pt").exists()
    if resume:
        if not (run_dir / "last.pt").exists():
            raise TrainingError(
                f"--resume: {run_dir} holds no last.pt to resume from; start the run without "
                "--resume"
            )
        saved = TrainConfig.load(saved_path)
        differ = _setting_differences(config, saved, RESUMABLE_CHANGES)
        if differ:
            raise TrainingError(
                f"--resume: the settings differ from the run in {run_dir} (only "
                f"{sorted(RESUMABLE_CHANGES)} may change): " + "; ".join(differ)
            )
        changes = {key: getattr(config, key) for key in RESUMABLE_CHANGES | {"name"}}
        return saved.with_changes(**changes), False
    if has_run and overwrite:
        shutil.rmtree(run_dir)
    elif has_run:
        differ = ["config.json is missing or unreadable"]
        finished = False
        if saved_path.exists():
            try:
                saved = TrainConfig.load(saved_path)
                differ = _setting_differences(config, saved, RESUMABLE_CHANGES - {"epochs"})
                metrics = json.loads((run_dir / "metrics.json").read_text())
                finished = bool(metrics.get("final"))
            except (ConfigError, OSError, json.JSONDecodeError):
                pass
        if differ:
            raise RunExistsError(
                f"{run_dir} already holds a run with other settings ({'; '.join(differ)}); "
                "pass --overwrite (or delete the folder) to replace it, or choose another --name"
            )
        if not finished:
            raise RunExistsError(
                f"{run_dir} already holds an unfinished run with these settings; pass --resume "
                "to continue it or --overwrite to start it again"
            )
        return config, True
    run_dir.mkdir(parents=True, exist_ok=True)
    return config, False


def load_resume_state(
    path: Path, model: CLAD, optimizer: torch.optim.Optimizer, config: TrainConfig
) -> RunState:
    checkpoint = read_checkpoint(path)
    differences = config_differences(config.model, checkpoint.model_config)
    if differences:
        raise CheckpointError(
            path, "checkpoint is from another model shape: " + "; ".join(differences)
        )
    load_weights(model, checkpoint)
    try:
        optimizer.load_state_dict(checkpoint.data["optimizer"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(
            path, f"no usable optimizer state to resume from ({error})"
        ) from error
    return RunState(
        epoch=int(checkpoint.data["epoch"]),
        history=list(checkpoint.data.get("history", [])),
        best=dict(checkpoint.data.get("best", {})),
    )


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _all_reduce_sum(values: list[float], placement: Placement) -> list[float]:
    if not placement.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=placement.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> RunResult:
    """Run (or resume) one training run; see the module docstring for what it writes."""
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    placement = setup_placement(config)
    is_main = placement.is_main
    handler = None
    try:
        finished = False
        if is_main:
            config, finished = prepare_run_dir(config, resume, overwrite)
        if placement.distributed:
            flag = [finished]
            dist.broadcast_object_list(flag, src=0)
            finished = bool(flag[0])
            if not is_main and resume:
                config = TrainConfig.load(config.run_dir / CONFIG_FILE).with_changes(
                    **{key: getattr(config, key) for key in RESUMABLE_CHANGES | {"name"}}
                )
        run_dir = config.run_dir
        if finished:
            _setup_logging(None, is_main, append=True)
            log.info(
                "%s already holds a finished run with these settings: nothing to do "
                "(--overwrite trains it again)",
                run_dir,
            )
            metrics = json.loads((run_dir / "metrics.json").read_text()) if is_main else {}
            return RunResult(run_dir, metrics)
        handler = _setup_logging(run_dir, is_main, append=resume)
        return _run(config, placement, resume, show_progress and is_main)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        if placement.distributed and dist.is_initialized():
            dist.destroy_process_group()
        # Leave the process as it was (tests and notebooks run more than one thing).
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


@dataclass(frozen=True)
class Built:
    """What the build step hands to the epochs: data, model, optimizer and loader, ready to train.

    `state` is the one mutable part: the epochs append to its history and move its counters.
    """

    splits: Splits
    model: CLAD
    train_model: nn.Module  # `model`, wrapped for DDP when distributed
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    loader: DataLoader
    sampler: EpochSampler
    dev_set: EvalSet
    state: RunState
    parameters: int
    macs: int


@dataclass(frozen=True)
class EpochTotals:
    """One epoch's training sums over every rank."""

    loss_sum: float
    seen: float
    norm_sum: float
    clipped: float
    steps: float
    train_s: float


@dataclass(frozen=True)
class EpochEvaluation:
    """The dev figures of one epoch: the history record and the checkpoint's dev summary."""

    record: dict[str, Any]
    dev_summary: dict[str, Any]
    improved: bool


def _run(config: TrainConfig, placement: Placement, resume: bool, show_progress: bool) -> RunResult:
    """Build, then per epoch: train, evaluate on dev, checkpoint; then the final evaluation."""
    run_dir = config.run_dir
    is_main = placement.is_main
    started = time.perf_counter()
    if is_main:
        config.save(run_dir / CONFIG_FILE)
        log.info(
            "run %s: %s at %s, device %s, world size %d, torch threads %d",
            config.name,
            config.format,
            config.root,
            placement.device,
            placement.world_size,
            torch.get_num_threads(),
        )
    built = _build(config, placement, resume, show_progress)
    prep_s = time.perf_counter() - started
    log.info("ready to train after %.1f s of data preparation", prep_s)

    state = built.state
    for epoch in range(state.epoch + 1, config.epochs + 1):
        totals = _train_epoch(built, config, placement, epoch, show_progress)
        if is_main:
            evaluation = _evaluate_epoch(built, config, placement, epoch, totals)
            _checkpoint_epoch(built, config, epoch, evaluation)
        state.epoch = epoch
        if placement.distributed:
            dist.barrier()

    train_time_s = time.perf_counter() - started
    metrics: dict[str, Any] = {}
    if is_main:
        final = _finish(config, placement, built.splits, built.dev_set, state, show_progress)
        final["time_s"] = {
            "data_preparation": round(prep_s, 1),
            "train_and_dev_per_epoch": round(
                sum(h["train_s"] + h["dev_eval_s"] for h in state.history), 1
            ),
            "until_final_evaluation": round(train_time_s, 1),
            "total": round(time.perf_counter() - started, 1),
        }
        metrics = _metrics(config, state, built.parameters, built.macs, final, built.splits)
        _write_json(run_dir / "metrics.json", metrics)
        log.info("wrote %s", run_dir)
    if placement.distributed:
        dist.barrier()
    return RunResult(run_dir, metrics)


def _count_classes(records: list[Record]) -> str:
    bonafide = sum(r.label == "bonafide" for r in records)
    spoof = sum(r.label == "spoof" for r in records)
    return f"{bonafide} bona fide / {spoof} spoof"


def _build(config: TrainConfig, placement: Placement, resume: bool, show_progress: bool) -> Built:
    """Read and check the data, build the model and optimizer (or resume them), cut the dev
    windows and load the training signals. Everything that can be wrong with the input fails
    here, before training."""
    splits = load_splits(config, show_progress)
    torch.manual_seed(config.seed)
    model = build_model(config.model).to(placement.device)
    parameters = count_parameters(model)
    macs = count_macs(model)
    log.info(
        "%s: %s parameters, %.2f M MACs per %d-sample window (%.0f ms), hop %d",
        MODEL_NAME,
        f"{parameters:,}",
        macs / 1e6,
        config.window_samples,
        config.window_ms,
        config.effective_hop_samples,
    )
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    state = RunState()
    if resume:
        state = load_resume_state(config.run_dir / "last.pt", model, optimizer, config)
        log.info("resuming after epoch %d of %d", state.epoch, config.epochs)
    model.to(placement.device)
    log.info(
        "data: train %s, dev %s, eval %s",
        _count_classes(splits.train),
        _count_classes(splits.dev),
        _count_classes(splits.eval),
    )

    budget = config.cache_mb * 1_000_000
    dev_set = EvalSet(splits.dev, config, budget)
    if placement.is_main and state.epoch < config.epochs:
        budget -= dev_set.cache(show_progress, "cutting dev windows")
    # A finished run resumed only to re-score needs no training signals.
    todo = splits.train if state.epoch < config.epochs else []
    store = SignalStore.build(
        todo, splits.train_samples[: len(todo)], max(0, budget), show_progress
    )
    dataset = CropDataset(store, config)
    sampler = EpochSampler(
        dataset.targets, config.seed, config.balance, placement.rank, placement.world_size
    )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
        persistent_workers=config.workers > 0,
    )
    weights = class_weights(dataset.targets) if config.balance == "weights" and todo else None
    criterion = nn.CrossEntropyLoss(
        weight=weights.to(placement.device) if weights is not None else None
    )
    train_model: nn.Module = model
    if placement.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[placement.device.index] if placement.device.type == "cuda" else None
        )
    return Built(
        splits=splits,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        criterion=criterion,
        loader=loader,
        sampler=sampler,
        dev_set=dev_set,
        state=state,
        parameters=parameters,
        macs=macs,
    )


def _train_epoch(
    built: Built, config: TrainConfig, placement: Placement, epoch: int, show_progress: bool
) -> EpochTotals:
    """One pass over the training crops; the sums are reduced over every rank."""
    epoch_started = time.perf_counter()
    built.sampler.set_epoch(epoch)
    torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout, per epoch
    built.train_model.train()
    loss_sum, seen, norm_sum, clipped, steps = 0.0, 0, 0.0, 0, 0
    loader = built.loader
    with _progress(f"epoch {epoch}/{config.epochs}", len(loader), show_progress) as advance:
        for x, y in loader:
            x = x.to(placement.device, non_blocking=True)
            y = y.to(placement.device, non_blocking=True)
            loss = built.criterion(built.train_model(x), y)
            built.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip_norm > 0:
                norm = float(
                    nn.utils.clip_grad_norm_(built.model.parameters(), config.grad_clip_norm)
                )
                clipped += norm > config.grad_clip_norm
                norm_sum += norm
            built.optimizer.step()
            loss_sum += float(loss.detach()) * y.numel()
            seen += y.numel()
            steps += 1
            advance(info=f"loss {loss_sum / seen:.4f}")
    sums = _all_reduce_sum([loss_sum, seen, norm_sum, clipped, steps], placement)
    return EpochTotals(*sums, train_s=time.perf_counter() - epoch_started)


def _evaluate_epoch(
    built: Built, config: TrainConfig, placement: Placement, epoch: int, totals: EpochTotals
) -> EpochEvaluation:
    """Dev figures after one epoch (main rank): the history record, and whether it is the best."""
    eval_started = time.perf_counter()
    built.model.eval()
    dev_scores = built.dev_set.score(built.model, placement.device)
    dev = split_report(built.dev_set, dev_scores, None, None)
    record = {
        "epoch": epoch,
        "train_loss": totals.loss_sum / totals.seen,
        "grad_norm_mean": totals.norm_sum / totals.steps if config.grad_clip_norm > 0 else None,
        "clipped_steps": int(totals.clipped),
        "steps": int(totals.steps),
        "dev_loss": dev["loss"],
        "dev_eer": dev["eer"],
        "dev_threshold_margin": dev["threshold_margin"],
        "dev_threshold_p_spoof": dev["threshold_p_spoof"],
        "dev_accuracy": dev["accuracy"],
        "dev_per_attack_eer": dev["per_attack_eer"],
        "train_s": round(totals.train_s, 2),
        "dev_eval_s": round(time.perf_counter() - eval_started, 2),
    }
    best = built.state.best
    improved = not best or (record["dev_eer"], record["dev_loss"]) < (
        best["dev_eer"],
        best["dev_loss"],
    )
    dev_summary = {
        key: dev[key]
        for key in ("eer", "threshold_margin", "threshold_p_spoof", "accuracy", "loss")
    }
    return EpochEvaluation(record, dev_summary, improved)


def _checkpoint_epoch(
    built: Built, config: TrainConfig, epoch: int, evaluation: EpochEvaluation
) -> None:
    """Record the epoch: history, best.pt when it improved, last.pt, metrics.json, the log line."""
    run_dir = config.run_dir
    state = built.state
    record = evaluation.record
    state.history.append(record)
    if evaluation.improved:
        state.best = {"epoch": epoch, "dev_eer": record["dev_eer"], "dev_loss": record["dev_loss"]}
        save_checkpoint(
            run_dir / "best.pt",
            _checkpoint_payload(built.model, config, epoch, evaluation.dev_summary, built.macs),
        )
    last = _checkpoint_payload(built.model, config, epoch, evaluation.dev_summary, built.macs)
    last.update(optimizer=built.optimizer.state_dict(), history=state.history, best=state.best)
    save_checkpoint(run_dir / "last.pt", last)
    _write_json(
        run_dir / "metrics.json",
        _metrics(config, state, built.parameters, built.macs, None, built.splits),
    )
    log.info(
        "epoch %d/%d: train loss %.4f, dev loss %.4f, dev EER %.2f%% (threshold P(spoof) "
        "%.3f, accuracy %.2f%%)%s; %.0f s train, %.0f s dev",
        epoch,
        config.epochs,
        record["train_loss"],
        record["dev_loss"],
        100 * record["dev_eer"],
        record["dev_threshold_p_spoof"],
        100 * record["dev_accuracy"],
        " best" if evaluation.improved else "",
        record["train_s"],
        record["dev_eval_s"],
    )


def _finish(
    config: TrainConfig,
    placement: Placement,
    splits: Splits,
    dev_set: EvalSet,
    state: RunState,
    show_progress: bool,
) -> dict[str, Any]:
    """Score dev and eval with the best weights; score files, plots, final metrics."""
    from train.plots import plot_det, plot_histograms, plot_training_curves

    run_dir = config.run_dir
    best = read_checkpoint(run_dir / "best.pt")
    model = build_model(best.model_config)
    load_weights(model, best)
    model.to(placement.device).eval()
    final: dict[str, Any] = {"best_epoch": int(best.data["epoch"])}
    train_attacks = {r.attack for r in splits.train if r.label == "spoof"}
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def score_split(name: str, eval_set: EvalSet, threshold: float | None) -> dict[str, Any]:
        """One split's report, score file, histogram and DET curve, at `threshold` (None: the
        split's own EER threshold; the histogram then marks that one)."""
        scores = eval_set.score(model, placement.device, show_progress, name)
        split = split_report(
            eval_set, scores, threshold, None if threshold is None else train_attacks
        )
        write_asvspoof_scores(
            run_dir / f"scores_{name}.txt",
            [r.utterance_id or Path(r.path).stem for r in eval_set.records],
            eval_set.attacks,
            [r.label for r in eval_set.records],
            scores,
        )
        curves[name] = (spoof_margins(scores), eval_set.labels)
        marked = split["threshold_margin"] if threshold is None else threshold
        plot_histograms(
            curves[name][0], eval_set.labels, plots / f"hist_{name}.png", marked, f"{name} scores"
        )
        return split

    dev_report = score_split("dev", dev_set, None)
    final["dev"] = dev_report
    if splits.eval:
        eval_report = score_split(
            "eval", EvalSet(splits.eval, config, 0), dev_report["threshold_margin"]
        )
        final["eval"] = eval_report
        log.info(
            "best epoch %d: dev EER %.2f%%, eval EER %.2f%% (unseen attacks %s: %s), eval "
            "accuracy at the dev threshold %.2f%%",
            final["best_epoch"],
            100 * dev_report["eer"],
            100 * eval_report["eer"],
            ",".join(eval_report["unseen_attacks"]) or "none",
            "n/a"
            if eval_report["unseen_attacks_eer"] is None
            else f"{100 * eval_report['unseen_attacks_eer']:.2f}%",
            100 * eval_report["accuracy_at_dev_threshold"],
        )
    plot_det(curves, plots / "det.png", title=f"{MODEL_NAME} DET ({config.name})")
    plot_training_curves(state.history, plots / "curves.png")
    return final


def _metrics(
    config: TrainConfig,
    state: RunState,
    parameters: int,
    macs: int,
    final: dict[str, Any] | None,
    splits: Splits,
) -> dict[str, Any]:
    return {
        "model": {
            "name": MODEL_NAME,
            "parameters": parameters,
            "macs_per_window": macs,
            "window_samples": config.window_samples,
            "hop_samples": config.effective_hop_samples,
        },
        "data": {
            "format": config.format,
            "root": config.root,
            "files": {"train": len(splits.train), "dev": len(splits.dev), "eval": len(splits.eval)},
            "skipped": splits.problems,
        },
        "score_convention": {
            "metrics": "spoof logit margin logit_spoof - logit_bonafide (higher = more spoof); "
            "spoof when >= threshold",
            "score_files": ASVSPOOF_SCORE_RULE,
            "file_aggregation": AGGREGATION_RULE,
        },
        "environment": {
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
        "epochs_completed": state.epoch,
        "best": state.best,
        "epochs": state.history,
        "final": final,
    }
