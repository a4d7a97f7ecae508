"""The settings of one training run: one frozen dataclass, saved next to what it produced."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from device.audio import DEFAULT_SILENCE_FLOOR_DBFS, SAMPLE_RATE
from train.augment import AugmentConfig
from train.model import ModelConfig

Balance = Literal["weights", "sampler", "none"]
BALANCES: tuple[Balance, ...] = ("weights", "sampler", "none")
DEVICES = ("auto", "cpu", "cuda")
CONFIG_FILE = "config.json"


class ConfigError(ValueError):
    """A run setting out of range, naming the setting, the value and what is allowed."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a run computes (and a few things that decide how fast)."""

    # data
    format: str
    root: str
    name: str = "run"
    runs_dir: str = "runs"
    track: str | None = None
    skip_missing: bool = False
    skip_malformed: bool = False
    require_eval: bool = True
    # model and windows
    model: ModelConfig = field(default_factory=ModelConfig)
    hop_samples: int = 0  # 0: half the window
    silence_floor_dbfs: float = DEFAULT_SILENCE_FLOOR_DBFS
    # recipe (the baseline: Adam, 1e-3, batch 16, cross-entropy, 5 epochs)
    epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    grad_clip_norm: float = 5.0  # 0 turns clipping off
    balance: Balance = "weights"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    # speed and placement (do not change the numbers on one machine; see docs/training.md)
    device: str = "auto"
    # torch.set_num_threads. 1 by default: on a 2-core machine shared with other jobs, two
    # OpenMP threads ran a training step 10x slower than one (docs/training.md).
    threads: int = 1
    workers: int = 0  # DataLoader workers; 0 loads in the training process
    cache_mb: int = 2048  # decoded training signals kept in memory, at most
    eval_batch_windows: int = 128

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("learning_rate", self.learning_rate > 0, "positive"),
            ("weight_decay", self.weight_decay >= 0, "0 or more"),
            ("grad_clip_norm", self.grad_clip_norm >= 0, "0 (off) or positive"),
            ("hop_samples", self.hop_samples >= 0, "0 (half the window) or positive"),
            ("threads", self.threads >= 0, "0 (torch default) or positive"),
            ("workers", self.workers >= 0, "0 or more"),
            ("cache_mb", self.cache_mb >= 0, "0 or more"),
            ("eval_batch_windows", self.eval_batch_windows >= 1, "at least 1"),
            ("balance", self.balance in BALANCES, f"one of {BALANCES}"),
            ("device", self.device in DEVICES, f"one of {DEVICES}"),
            ("name", bool(self.name) and "/" not in self.name, "a non-empty name without '/'"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

    @property
    def window_samples(self) -> int:
        return self.model.window_samples

    @property
    def effective_hop_samples(self) -> int:
        return self.hop_samples or max(1, self.model.window_samples // 2)

    @property
    def window_ms(self) -> float:
        return 1000.0 * self.model.window_samples / SAMPLE_RATE

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        data["augment"] = self.augment.to_dict()
        data["resolved"] = {
            "hop_samples": self.effective_hop_samples,
            "window_ms": self.window_ms,
            "sample_rate": SAMPLE_RATE,
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        unknown = sorted(set(data) - known - {"resolved"})
        if unknown:
            raise ConfigError(f"unknown run settings {unknown}; expected some of {sorted(known)}")
        if "model" in values:
            values["model"] = ModelConfig.from_dict(values["model"])
        if "augment" in values:
            values["augment"] = AugmentConfig.from_dict(values["augment"])
        return cls(**values)

    def with_changes(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: cannot read a run config ({error})") from error
