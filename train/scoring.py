"""The file-scoring rule, in one place, for every desktop runtime.

A file's score is computed the same way whatever runs the model (PyTorch here, ONNX
Runtime or TFLite in convert/ and benchmarks/, LiteRT on the device): the rule itself
(window selection, mean of logits, P(spoof), margin) is ``device.scores``; this module
feeds it windows and batches predictions:

1. ``device.audio.windows_from_file``: decode, mono, 16 kHz, cut into windows of
   ``window_samples`` every ``hop_samples`` (one more aligned to the end), normalize each.
2. Keep the windows that are not silent (raw RMS at or above the floor). If every window is
   silent, keep them all; the file is flagged ``all_silent`` (the device reports it as
   silence rather than bona fide/spoof).
3. Run the model on the kept windows: logits ``(bonafide, spoof)`` per window.
4. File logits = the mean of the window logits. P(spoof) = softmax(file logits)[1].

ASVspoof score files want "higher = more bona fide": we write
``logit_bonafide - logit_spoof`` (= log P(bonafide)/P(spoof)), which ranks files exactly
like ``1 - P(spoof)`` and keeps full precision where P(spoof) saturates at 0 or 1.

This module is numpy-only (no torch): a predictor is any callable mapping
``(n, window_samples)`` float32 normalized windows to ``(n, 2)`` float logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.audio import DEFAULT_SILENCE_FLOOR_DBFS, Windows, windows_from_file
from device.scores import FILE_AGGREGATION, file_logits, p_spoof, select_windows, spoof_margin

Predictor = Callable[[np.ndarray], np.ndarray]
AGGREGATION_RULE = FILE_AGGREGATION
"""The contract text the model bundle carries (owned by device.bundle)."""
ASVSPOOF_SCORE_RULE = "logit_bonafide - logit_spoof of the file logits (higher = more bona fide)"


@dataclass(frozen=True)
class FileScore:
    logits: np.ndarray  # (2,) mean of the kept windows' logits (bonafide, spoof)
    windows_used: int
    windows_total: int
    all_silent: bool

    @property
    def p_spoof(self) -> float:
        return float(p_spoof(self.logits))

    @property
    def asvspoof_score(self) -> float:
        return asvspoof_score(self.logits)


def asvspoof_score(logits: np.ndarray) -> float:
    """logit_bonafide - logit_spoof: higher = more bona fide (ASVspoof convention)."""
    return float(-spoof_margin(np.asarray(logits, dtype=np.float64).reshape(2)))


def aggregate(window_logits: np.ndarray, windows_total: int, all_silent: bool) -> FileScore:
    """File score from the logits of its kept windows (n, 2)."""
    logits = file_logits(window_logits)
    return FileScore(
        logits=logits,
        windows_used=int(np.shape(window_logits)[0]),
        windows_total=int(windows_total),
        all_silent=bool(all_silent),
    )


@dataclass(frozen=True)
class PreparedFile:
    """The windows of one file that the model will see, cut once (cacheable)."""

    windows: np.ndarray  # (kept, window_samples) float32, normalized
    windows_total: int
    all_silent: bool


def prepare_windows(windows: Windows) -> PreparedFile:
    keep = select_windows(windows.silent)
    return PreparedFile(
        windows=np.ascontiguousarray(windows.normalized[keep]),
        windows_total=int(windows.normalized.shape[0]),
        all_silent=bool(windows.silent.all()),
    )


def prepare_file(
    path: str | Path,
    window_samples: int,
    hop_samples: int,
    silence_floor_dbfs: float = DEFAULT_SILENCE_FLOOR_DBFS,
) -> PreparedFile:
    return prepare_windows(windows_from_file(path, window_samples, hop_samples, silence_floor_dbfs))


def score_prepared(
    prepared: Sequence[PreparedFile], predict: Predictor, batch_windows: int = 128
) -> list[FileScore]:
    """Score many prepared files, batching windows across files for speed."""
    scores: list[FileScore] = []
    for chunk in _chunks_by_windows(prepared, batch_windows):
        batch = np.concatenate([p.windows for p in chunk], axis=0)
        logits = np.asarray(predict(batch))
        if logits.shape != (batch.shape[0], 2):
            raise ValueError(
                f"the predictor returned logits shaped {logits.shape}, expected "
                f"({batch.shape[0]}, 2) for {batch.shape[0]} windows"
            )
        offset = 0
        for p in chunk:
            n = p.windows.shape[0]
            scores.append(aggregate(logits[offset : offset + n], p.windows_total, p.all_silent))
            offset += n
    return scores


def _chunks_by_windows(
    prepared: Sequence[PreparedFile], batch_windows: int
) -> Iterator[list[PreparedFile]]:
    chunk: list[PreparedFile] = []
    count = 0
    for p in prepared:
        if chunk and count + p.windows.shape[0] > batch_windows:
            yield chunk
            chunk, count = [], 0
        chunk.append(p)
        count += p.windows.shape[0]
    if chunk:
        yield chunk


def score_file(
    path: str | Path,
    predict: Predictor,
    window_samples: int,
    hop_samples: int,
    silence_floor_dbfs: float = DEFAULT_SILENCE_FLOOR_DBFS,
) -> FileScore:
    """Score one file with any runtime's predictor (the rule in the module docstring)."""
    prepared = prepare_file(path, window_samples, hop_samples, silence_floor_dbfs)
    return score_prepared([prepared], predict, batch_windows=max(1, prepared.windows.shape[0]))[0]


def score_files(
    paths: Iterable[str | Path],
    predict: Predictor,
    window_samples: int,
    hop_samples: int,
    silence_floor_dbfs: float = DEFAULT_SILENCE_FLOOR_DBFS,
    batch_windows: int = 128,
) -> list[FileScore]:
    """Score files in order, decoding one batch of windows' worth at a time."""
    out: list[FileScore] = []
    pending: list[PreparedFile] = []
    pending_windows = 0
    for path in paths:
        prepared = prepare_file(path, window_samples, hop_samples, silence_floor_dbfs)
        pending.append(prepared)
        pending_windows += prepared.windows.shape[0]
        if pending_windows >= batch_windows:
            out.extend(score_prepared(pending, predict, batch_windows))
            pending, pending_windows = [], 0
    if pending:
        out.extend(score_prepared(pending, predict, batch_windows))
    return out


def write_asvspoof_scores(
    path: str | Path,
    utterance_ids: Sequence[str],
    attacks: Sequence[str],
    labels: Sequence[str],
    scores: Sequence[FileScore],
    bonafide_attack: str = "bonafide",
) -> None:
    """ASVspoof 2019 CM score file: ``utterance_id attack key score`` per line.

    attack is '-' for bona fide (as in the protocols), key is bonafide|spoof, and the score
    is `asvspoof_score` (higher = more bona fide), as the official scoring scripts expect.
    """
    lines = []
    for utt, attack, label, score in zip(utterance_ids, attacks, labels, scores, strict=True):
        system = "-" if attack == bonafide_attack else attack
        lines.append(f"{utt} {system} {label} {score.asvspoof_score:.6f}")
    Path(path).write_text("\n".join(lines) + ("\n" if lines else ""))
