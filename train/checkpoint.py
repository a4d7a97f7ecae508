"""Checkpoints: what `best.pt` holds, and loading one with clear errors.

A checkpoint is a plain dict (loads with ``torch.load(..., weights_only=True)``)::

    format            "clad-checkpoint"
    version           1
    model_name        "CLAD"
    model_config      ModelConfig.to_dict(): enough to rebuild the network (window_samples...)
    state_dict        the weights
    scoring           sample_rate, window_samples, hop_samples, silence_floor_dbfs,
                      normalization, aggregation rule, labels
    run_config        TrainConfig.to_dict() of the run that produced it
    epoch             1-based epoch the weights are from
    dev               dev EER, its threshold (spoof logit margin and P(spoof)), accuracy there
    parameters, macs_per_window, torch_version

`last.pt` (for --resume) adds ``optimizer``, ``history`` and ``best``.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from train.model import CLAD, MODEL_NAME, ModelConfig, ModelConfigError, build_model

CHECKPOINT_FORMAT = "clad-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "model_name", "model_config", "state_dict", "scoring")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here, naming the file and what does not fit."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class Checkpoint:
    path: str
    data: dict[str, Any]

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.data["model_config"])

    @property
    def scoring(self) -> dict[str, Any]:
        return dict(self.data["scoring"])

    @property
    def window_samples(self) -> int:
        return int(self.data["scoring"]["window_samples"])

    @property
    def hop_samples(self) -> int:
        return int(self.data["scoring"]["hop_samples"])

    @property
    def silence_floor_dbfs(self) -> float:
        return float(self.data["scoring"]["silence_floor_dbfs"])

    @property
    def dev(self) -> dict[str, Any]:
        return dict(self.data.get("dev") or {})

    @property
    def run_config(self) -> dict[str, Any]:
        return dict(self.data.get("run_config") or {})


def save_checkpoint(path: str | Path, data: dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename): a killed run never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load and check the envelope of a checkpoint (not yet the weights' shapes)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found (expected a best.pt or last.pt file)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({error})") from error
    if not isinstance(data, dict):
        raise CheckpointError(path, f"expected a dict checkpoint, got {type(data).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            path,
            f"not a {MODEL_NAME} checkpoint: expected keys {list(REQUIRED_KEYS)} with format "
            f"{CHECKPOINT_FORMAT!r}, missing {missing}, format {data.get('format')!r}",
        )
    if data["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            path,
            f"checkpoint version {data['version']!r}, this code reads version {CHECKPOINT_VERSION}",
        )
    try:
        ModelConfig.from_dict(data["model_config"])
    except (ModelConfigError, TypeError) as error:
        raise CheckpointError(path, f"its model config cannot be built: {error}") from error
    return Checkpoint(str(path), data)


def config_differences(expected: ModelConfig, found: ModelConfig) -> list[str]:
    a, b = expected.to_dict(), found.to_dict()
    return [f"{key}: checkpoint {b[key]!r}, expected {a[key]!r}" for key in a if a[key] != b[key]]


def load_weights(model: CLAD, checkpoint: Checkpoint, state_key: str = "state_dict") -> None:
    """Load the checkpoint's weights into `model`, or say exactly which tensors do not fit."""
    differences = config_differences(model.config, checkpoint.model_config)
    if differences:
        raise CheckpointError(
            checkpoint.path,
            "checkpoint is from another model shape: " + "; ".join(differences),
        )
    state = checkpoint.data[state_key]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{name} {tuple(state[name].shape)} vs {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state and tuple(state[name].shape) != tuple(tensor.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(
                f"{len(mismatched)} tensors of another shape ({'; '.join(mismatched[:5])})"
            )
        if missing:
            parts.append(f"{len(missing)} tensors missing ({', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors ({', '.join(unexpected[:5])})")
        raise CheckpointError(
            checkpoint.path,
            "the weights do not fit the model their config describes: " + "; ".join(parts),
        )
    model.load_state_dict(state)


def model_from_checkpoint(
    path: str | Path, expected: ModelConfig | None = None
) -> tuple[CLAD, Checkpoint]:
    """Rebuild CLAD from a checkpoint's own config and load its weights (eval mode, CPU).

    With `expected`, a checkpoint whose model config differs is refused, naming the fields.
    """
    checkpoint = read_checkpoint(path)
    config = checkpoint.model_config
    if expected is not None:
        differences = config_differences(expected, config)
        if differences:
            raise CheckpointError(
                path, "checkpoint is from another model shape: " + "; ".join(differences)
            )
    model = build_model(config)
    load_weights(model, checkpoint)
    model.eval()
    return model, checkpoint
