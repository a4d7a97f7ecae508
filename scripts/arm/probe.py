"""What one device environment computes, as JSON: run on x86 and under qemu, then compared.

Runs with the device runtime only (numpy, scipy, soundfile, LiteRT or tflite-runtime, and the
repository's device/audio.py), never torch or tensorflow, so it runs unchanged in .venv-device,
.venv-tflite and the emulated aarch64 environments of `make test-arm`:

    python scripts/arm/probe.py --audio F... --model int8=PATH --model fp32=PATH --out result.json

(the front end's arrays go next to it, in result.npz)

For every audio file it records hashes of the decoded samples, the 16 kHz mono signal and the
normalized windows (the front end's output, to be compared bit for bit). For every model it runs
every window (cut to the model's input length, hop half of it) through each interpreter variant the environment has: `default` (the runtime's
default delegates, XNNPACK) and `plain` (BUILTIN_WITHOUT_DEFAULT_DELEGATES, the reference
kernels), and records the raw outputs, the logits and P(spoof).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import soundfile as sf

from device import audio
from device.runtimes import INTERPRETERS, RUNTIMES

RUNTIME_MODULES = tuple(RUNTIMES[key].module for key in INTERPRETERS)


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def load_runtime() -> tuple[str, Any]:
    """The first runtime that imports, as the device does (LiteRT first)."""
    problems = []
    for name in RUNTIME_MODULES:
        try:
            return name, importlib.import_module(name)
        except ImportError as error:
            problems.append(f"{name}: {error}")
    raise ImportError("neither runtime imports: " + "; ".join(problems))


def probe_audio(
    paths: list[Path], window_samples: int, hop_samples: int, arrays: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Hashes of each front-end stage per file; the stages themselves go into `arrays`."""
    results: dict[str, Any] = {}
    for path in paths:
        samples, rate = audio.decode(path)
        signal = audio.resample(audio.to_mono(samples), rate)
        windows = audio.windows_from_signal(signal, window_samples, hop_samples)
        results[path.name] = {
            "sample_rate": rate,
            "channels": int(samples.shape[1]),
            "decoded_sha256": sha256(samples),
            "signal_sha256": sha256(signal),
            "windows_sha256": sha256(windows.normalized),
            "num_samples": windows.num_samples,
            "silent": windows.silent.tolist(),
        }
        arrays[f"{path.name}:decoded"] = samples
        arrays[f"{path.name}:signal"] = signal
        arrays[f"{path.name}:windows"] = windows.normalized
    return results


class WindowSets:
    """Every normalized window of every file, in order, per window length (a model's input)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._sets: dict[int, np.ndarray] = {}

    def get(self, window_samples: int) -> np.ndarray:
        """(windows, window_samples) float32, hop = half a window."""
        if window_samples not in self._sets:
            hop_samples = max(1, window_samples // 2)
            self._sets[window_samples] = np.concatenate(
                [
                    audio.windows_from_file(p, window_samples, hop_samples).normalized
                    for p in self.paths
                ]
            )
        return self._sets[window_samples]


def run_model(
    runtime: Any, model_path: Path, variant: str, window_sets: WindowSets
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model_path": str(model_path), "num_threads": 1}
    if variant == "plain":
        kwargs["experimental_op_resolver_type"] = (
            runtime.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    try:
        interpreter = runtime.Interpreter(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        return {"error": f"{type(error).__name__}: {error}"}
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    windows = window_sets.get(int(np.prod(inp["shape"])))
    raw_outputs, logits = [], []
    start_s = time.perf_counter()
    for window in windows:
        x = window.reshape(inp["shape"])
        if inp["dtype"] == np.int8:
            x = np.clip(np.round(x / in_scale) + in_zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).reshape(-1)
        raw_outputs.append(y.tolist())
        if out["dtype"] == np.int8:
            y = (y.astype(np.float32) - out_zero) * out_scale
        logits.append(y.astype(np.float64))
    elapsed_s = time.perf_counter() - start_s
    logit_array = np.array(logits)
    shifted = logit_array - logit_array.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return {
        "input_dtype": np.dtype(inp["dtype"]).name,
        "window_samples": int(windows.shape[1]),
        "raw_outputs": raw_outputs,
        "p_spoof": probabilities[:, 1].tolist(),
        "ms_per_window": 1000.0 * elapsed_s / max(1, len(windows)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, nargs="+", required=True)
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME=PATH", help="default and plain"
    )
    parser.add_argument(
        "--model-default", action="append", default=[], metavar="NAME=PATH", help="default only"
    )
    parser.add_argument("--window-samples", type=int, default=16000)
    parser.add_argument("--hop-samples", type=int, default=8000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    runtime_name, runtime = load_runtime()
    result: dict[str, Any] = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "soundfile": sf.__version__,
        "libsndfile": sf.__libsndfile_version__,
        "runtime": runtime_name,
        "audio": {},
        "models": {},
    }
    arrays: dict[str, np.ndarray] = {}
    result["audio"] = probe_audio(args.audio, args.window_samples, args.hop_samples, arrays)
    # The stages themselves, so that a stage that is not bit-exact can be measured.
    np.savez(args.out.with_suffix(".npz"), **arrays)
    window_sets = WindowSets(args.audio)
    specs = [(spec, ("default", "plain")) for spec in args.model]
    specs += [(spec, ("default",)) for spec in args.model_default]
    for spec, variants in specs:
        name, _, path = spec.partition("=")
        result["models"][name] = {
            variant: run_model(runtime, Path(path), variant, window_sets) for variant in variants
        }
    args.out.write_text(json.dumps(result))
    print(
        f"{args.out}: {platform.machine()} {runtime_name}, {len(specs)} models",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
