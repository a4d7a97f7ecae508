"""Inference on the device: a verified bundle, one LiteRT interpreter, scores.

    Scorer(bundle, model_format="int8", num_threads=1)
        .score_windows(normalized)  (windows, window_samples) -> logits (windows, 2)
        .score_file(path)           -> {"file", "score", "decision", "windows", ...}

The interpreter comes from `ai_edge_litert.interpreter` or else `tflite_runtime.interpreter`
(imported lazily, one error naming both when neither is there). Its tensor details are
checked against the manifest at load, and the predict function (quantize by the manifest,
invoke, dequantize) is chosen once there, so scoring a window never branches on the format.

The model takes one window at a time ([1, window_samples]): resizing the input to a batch
fails in LiteRT's XNNPACK delegate for models whose graph holds a fixed reshape, and a
window costs about a millisecond, so windows are looped.

Imports only numpy, the standard library and device.*: this module runs on the Pi.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.audio import NORMALIZATION_RULE, SAMPLE_RATE, Windows, windows_from_file
from device.bundle import (
    Bundle,
    BundleError,
    Manifest,
    check_tensor_details,
    load_bundle,
)
from device.runtimes import INTERPRETERS, RUNTIMES
from device.scores import (
    FILE_AGGREGATION,
    LABELS,
    Calibration,
    file_logits,
    p_spoof,
    select_windows,
)

log = logging.getLogger("device.runtime")

softmax_spoof = p_spoof
"""Old name of `device.scores.p_spoof` (uncalibrated unless given the calibration)."""

MODEL_FORMATS = ("int8", "fp32")
"""Formats the device runs. int8 is the default: full-integer, what the Pi is meant to run."""

DECISIONS = ("bonafide", "spoof", "silence")

_RUNTIMES = tuple((RUNTIMES[key].module, RUNTIMES[key].distribution) for key in INTERPRETERS)
"""(module, pip name) of each interpreter, in the order tried (the table is device.runtimes)."""


class InterpreterUnavailableError(ImportError):
    """Neither LiteRT runtime can be imported."""


@dataclass(frozen=True)
class InterpreterRuntime:
    """An Interpreter class and where it came from."""

    interpreter_class: Any
    module: str  # "ai_edge_litert.interpreter" | "tflite_runtime.interpreter"
    version: str


def find_interpreter() -> InterpreterRuntime:
    """`ai_edge_litert.interpreter` first, `tflite_runtime.interpreter` second."""
    import importlib

    problems = []
    for module_name, package in _RUNTIMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            problems.append(f"{module_name} ({package}): {error}")
            continue
        top = importlib.import_module(module_name.split(".")[0])
        version = str(getattr(top, "__version__", "") or getattr(module, "__version__", ""))
        return InterpreterRuntime(module.Interpreter, module_name, version)
    raise InterpreterUnavailableError(
        "no TFLite interpreter: expected ai_edge_litert (pip install ai-edge-litert) or "
        "tflite_runtime (pip install tflite-runtime), found neither: " + "; ".join(problems)
    )


def check_manifest_supported(manifest: Manifest, source: str) -> None:
    """Refuse a bundle whose front end or aggregation differs from what this runtime computes."""
    audio = manifest.audio
    if audio.sample_rate != SAMPLE_RATE:
        raise BundleError(
            f"{source}: audio.sample_rate is {audio.sample_rate} Hz; this runtime's front end "
            f"produces {SAMPLE_RATE} Hz"
        )
    if audio.normalization != NORMALIZATION_RULE:
        raise BundleError(
            f"{source}: audio.normalization is {audio.normalization!r}; this runtime applies "
            f"{NORMALIZATION_RULE!r}"
        )
    if manifest.file_aggregation != FILE_AGGREGATION:
        raise BundleError(
            f"{source}: score.file_aggregation is {manifest.file_aggregation!r}; this runtime "
            f"implements {FILE_AGGREGATION!r}"
        )
    if tuple(manifest.labels) != LABELS:
        raise BundleError(f"{source}: labels {list(manifest.labels)}, expected {list(LABELS)}")


def aggregate(
    logits: np.ndarray,
    silent: np.ndarray,
    threshold: float,
    calibration: Calibration | None = None,
) -> tuple[float, str]:
    """The manifest's file rule (`device.scores`, calibrated) and the decision: all silent -> silence."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, 2)
    silent = np.asarray(silent, dtype=bool).reshape(-1)
    if logits.shape[0] != silent.shape[0] or logits.shape[0] == 0:
        raise ValueError(
            f"expected one silence flag per window and at least one window, got "
            f"{logits.shape[0]} windows and {silent.shape[0]} flags"
        )
    score = float(p_spoof(file_logits(logits[select_windows(silent)]), calibration))
    if silent.all():
        return score, "silence"
    return score, "spoof" if score >= threshold else "bonafide"


class Scorer:
    """One bundle's model in one interpreter. Thread-safe: one window is scored at a time."""

    def __init__(
        self,
        bundle: Bundle | str | Path,
        model_format: str = "int8",
        num_threads: int = 1,
        threshold: float | None = None,
        silence_floor_dbfs: float | None = None,
        runtime: InterpreterRuntime | None = None,
    ) -> None:
        if model_format not in MODEL_FORMATS:
            raise BundleError(
                f"model format {model_format!r} is not run on the device; expected one of "
                f"{list(MODEL_FORMATS)}"
            )
        if num_threads < 1:
            raise ValueError(f"num_threads must be at least 1, got {num_threads}")
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        manifest = self.bundle.manifest
        check_manifest_supported(manifest, str(self.bundle.root / "manifest.json"))
        self.model_format = model_format
        self.num_threads = int(num_threads)
        self.window_samples = manifest.audio.window_samples
        self.hop_samples = manifest.audio.hop_samples
        self.calibration = manifest.calibration
        for missing in manifest.missing:
            log.info("%s: no %s", self.bundle.root / "manifest.json", missing)
        self.threshold = manifest.threshold.value if threshold is None else float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a P(spoof) in [0, 1], got {self.threshold}")
        self.silence_floor_dbfs = (
            manifest.audio.silence_floor_dbfs
            if silence_floor_dbfs is None
            else float(silence_floor_dbfs)
        )
        self.model_file = manifest.model_file(model_format)
        self.model_path = self.bundle.path(self.model_file)
        self.runtime = runtime or find_interpreter()
        self._lock = threading.Lock()
        self._predict = self._load(manifest)

    # ----------------------------------------------------------------- loading

    def _load(self, manifest: Manifest) -> Callable[[np.ndarray], np.ndarray]:
        entry = manifest.files[self.model_file]
        if len(entry.inputs) != 1 or len(entry.outputs) != 1:
            raise BundleError(
                f"{self.model_path}: expected one input and one output tensor in the manifest, "
                f"got {len(entry.inputs)} and {len(entry.outputs)}"
            )
        try:
            interpreter = self.runtime.interpreter_class(
                model_path=str(self.model_path), num_threads=self.num_threads
            )
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise BundleError(
                f"{self.model_path}: {self.runtime.module} cannot load the model ({error})"
            ) from error
        input_details = interpreter.get_input_details()
        output_details = interpreter.get_output_details()
        check_tensor_details(self.model_file, entry.inputs, input_details, "input")
        check_tensor_details(self.model_file, entry.outputs, output_details, "output")
        in_spec, out_spec = entry.inputs[0], entry.outputs[0]
        expected_in = (1, self.window_samples)
        if tuple(in_spec.shape) != expected_in:
            raise BundleError(
                f"{self.model_path}: expected input shape {list(expected_in)} "
                f"(audio.window_samples), the manifest declares {list(in_spec.shape)}"
            )
        if tuple(out_spec.shape) != (1, len(LABELS)):
            raise BundleError(
                f"{self.model_path}: expected output shape [1, {len(LABELS)}] (logits), the "
                f"manifest declares {list(out_spec.shape)}"
            )
        self._interpreter = interpreter  # keep alive: the closures below use its tensors
        input_index = int(input_details[0]["index"])
        output_index = int(output_details[0]["index"])
        set_tensor, invoke, get_tensor = (
            interpreter.set_tensor,
            interpreter.invoke,
            interpreter.get_tensor,
        )
        if in_spec.quantized or out_spec.quantized:
            quantize, dequantize = in_spec.quantize, out_spec.dequantize

            def predict(window: np.ndarray) -> np.ndarray:
                set_tensor(input_index, quantize(window))
                invoke()
                return dequantize(get_tensor(output_index))[0]

        else:
            dtype = np.dtype(in_spec.dtype)

            def predict(window: np.ndarray) -> np.ndarray:
                set_tensor(input_index, window.astype(dtype, copy=False))
                invoke()
                return get_tensor(output_index)[0].astype(np.float32)

        return predict

    # ----------------------------------------------------------------- scoring

    def describe(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle.root),
            "model": self.bundle.manifest.model_name,
            "model_format": self.model_format,
            "model_file": self.model_file,
            "runtime": self.runtime.module,
            "runtime_version": self.runtime.version,
            "num_threads": self.num_threads,
            "threshold": self.threshold,
            "calibration": None if self.calibration is None else self.calibration.method,
            "window_samples": self.window_samples,
            "hop_samples": self.hop_samples,
            "silence_floor_dbfs": self.silence_floor_dbfs,
        }

    def score_window(self, normalized: np.ndarray) -> tuple[np.ndarray, float]:
        """One normalized window (window_samples,) -> (logits (2,), inference_ms)."""
        window = np.asarray(normalized, dtype=np.float32).reshape(1, self.window_samples)
        with self._lock:
            start = time.perf_counter()
            logits = self._predict(window)
            inference_ms = (time.perf_counter() - start) * 1000.0
        return logits, inference_ms

    def score_windows(self, normalized: np.ndarray) -> np.ndarray:
        """Normalized windows (n, window_samples) -> logits (n, 2) float32."""
        windows = np.asarray(normalized, dtype=np.float32)
        if windows.ndim != 2 or windows.shape[1] != self.window_samples:
            raise ValueError(
                f"expected normalized windows shaped (n, {self.window_samples}), got "
                f"{windows.shape}"
            )
        out = np.empty((windows.shape[0], len(LABELS)), dtype=np.float32)
        for i, window in enumerate(windows):
            out[i] = self.score_window(window)[0]
        return out

    def score_prepared(
        self, windows: Windows, name: str, window_scores: bool = False
    ) -> dict[str, Any]:
        logits = self.score_windows(windows.normalized)
        score, decision = aggregate(logits, windows.silent, self.threshold, self.calibration)
        result: dict[str, Any] = {
            "file": name,
            "score": score,
            "decision": decision,
            "windows": int(windows.normalized.shape[0]),
            "silent_windows": int(np.count_nonzero(windows.silent)),
            "duration_s": round(windows.duration_s, 6),
        }
        if window_scores:
            window_p_spoof = p_spoof(logits, self.calibration)
            result["window_scores"] = [
                {
                    "start_s": round(int(start) / SAMPLE_RATE, 6),
                    "p_spoof": float(p),
                    "silent": bool(silent),
                }
                for start, p, silent in zip(
                    windows.starts, window_p_spoof, windows.silent, strict=True
                )
            ]
        return result

    def score_file(self, path: str | Path, window_scores: bool = False) -> dict[str, Any]:
        """Decode, window and score a file as the bundle defines. Raises AudioError on bad audio."""
        windows = windows_from_file(
            path, self.window_samples, self.hop_samples, self.silence_floor_dbfs
        )
        return self.score_prepared(windows, str(path), window_scores)


def score_files(
    scorer: Scorer,
    paths: Sequence[str | Path],
    window_scores: bool = False,
    max_duration_s: float | None = None,
):
    """Yield one result per file: the score dict, or {"file", "error"} for a file that failed.

    Any failure of one file (bad audio, a file too short or too long, and MemoryError or any
    other error from a library) is that file's result; the batch goes on. `max_duration_s`
    is the decode limit (None: device.audio.DEFAULT_MAX_DURATION_S).
    """
    from device.audio import DEFAULT_MAX_DURATION_S, AudioError, windows_for_scoring

    limit_s = DEFAULT_MAX_DURATION_S if max_duration_s is None else max_duration_s
    for path in paths:
        try:
            windows = windows_for_scoring(
                path, scorer.window_samples, scorer.hop_samples, scorer.silence_floor_dbfs, limit_s
            )
            yield scorer.score_prepared(windows, str(path), window_scores)
        except AudioError as error:
            yield {"file": str(path), "error": error.problem}
        except Exception as error:  # one file's failure (even MemoryError) must not end the batch
            yield {"file": str(path), "error": f"{type(error).__name__}: {error}"}
