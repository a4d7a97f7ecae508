"""One benchmark row in a process of its own: `python -m benchmarks.worker` (spec on stdin).

The process imports only the runtime of its row, loads that one model, scores one window
(the parent measures cold start from its own spawn time to that first score), warms up,
then times windows one at a time for a bounded time. Peak RSS is this process's own
`VmHWM` (device.measure.peak_rss_bytes), so it is the memory of a process that loads and
runs only that format.

The result is one JSON line on stdout after RESULT_MARKER; anything a library prints
before it is ignored. A row that cannot run still answers: "skipped" when its runtime is
not installed here, "failed" with the error otherwise. A crash with no answer (a segfault in
a runtime, a timeout) is recorded by the parent.

`{"mode": "gemm", ...}` instead measures this machine's fp32 matrix-multiply rate with numpy
(the compute peak the rows are compared with).

Imports the standard library, numpy, device.* and benchmarks.formats at the top: it runs in
the device venvs, where there is no torch, onnx or tensorflow.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.formats import FORMATS, RUNTIMES, Runtime
from device.measure import timed_windows, worker_identity

RESULT_MARKER = "@@clad-bench-result@@ "

Predict = Callable[[np.ndarray], np.ndarray]
"""One normalized window (window_samples,) float32 -> logits (2,)."""


class RuntimeMissingError(Exception):
    """The row's runtime is not installed in this interpreter: the row is skipped."""


# --------------------------------------------------------------------------- loaders


def _import_runtime(runtime: Runtime) -> Any:
    try:
        return importlib.import_module(runtime.module)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (runtime.module == missing or runtime.module.startswith(missing + ".")):
            raise RuntimeMissingError(
                f"{runtime.distribution} is not installed in {sys.executable} "
                f"(`import {runtime.module}`: {error})"
            ) from error
        raise


def _version(distribution: str, module: Any) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        top = sys.modules.get(module.__name__.split(".")[0], module)
        return str(getattr(top, "__version__", "unknown"))


def load_torch(spec: dict[str, Any], module: Any) -> Predict:
    torch = module
    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    torch.set_grad_enabled(False)
    from train.checkpoint import model_from_checkpoint
    from train.model import ModelConfig

    # The network is rebuilt from the checkpoint's own config; when the manifest records the
    # config it was converted with, a checkpoint of another shape is refused.
    config = spec.get("model_config")
    expected = ModelConfig.from_dict(config) if isinstance(config, dict) else None
    model, _ = model_from_checkpoint(spec["checkpoint"], expected=expected)
    model.eval()

    def predict(window: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(window).reshape(1, -1))[0].numpy()

    return predict


def load_onnxruntime(spec: dict[str, Any], module: Any) -> Predict:
    ort = module
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(spec["threads"])
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        spec["model_path"], sess_options=options, providers=["CPUExecutionProvider"]
    )
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"{spec['model_path']}: expected one input, the model has {len(inputs)}")
    input_name = inputs[0].name
    run = session.run

    def predict(window: np.ndarray) -> np.ndarray:
        return run(None, {input_name: window.reshape(1, -1)})[0][0]

    return predict


def load_tflite(spec: dict[str, Any], module: Any) -> Predict:
    """The device's own path: device.runtime.Scorer with this row's interpreter."""
    from device.bundle import load_bundle
    from device.runtime import InterpreterRuntime, Scorer

    runtime = RUNTIMES[spec["runtime"]]
    interpreter = InterpreterRuntime(
        interpreter_class=module.Interpreter,
        module=runtime.module,
        version=_version(runtime.distribution, module),
    )
    # The parent checked this row's file against the manifest; a corrupt file of another
    # format must not fail this row, so the bundle is not verified again as a whole.
    scorer = Scorer(
        load_bundle(spec["bundle"], verify_files=False),
        model_format=FORMATS[spec["format"]].bundle_format or "",
        num_threads=int(spec["threads"]),
        runtime=interpreter,
    )

    def predict(window: np.ndarray) -> np.ndarray:
        return scorer.score_window(window)[0]

    return predict


LOADERS: dict[str, Callable[[dict[str, Any], Any], Predict]] = {
    "torch": load_torch,
    "onnxruntime": load_onnxruntime,
    "litert": load_tflite,
    "tflite-runtime": load_tflite,
}


# --------------------------------------------------------------------------- measuring


def measure(spec: dict[str, Any], main_ns: int) -> dict[str, Any]:
    """Cold-start stages are CLOCK_MONOTONIC stamps, which the parent compares with its
    spawn time: main_ns (interpreter and numpy up), imported_ns (the runtime imported),
    loaded_ns (the model loaded, with the loader's own imports), first_score_ns."""
    runtime = RUNTIMES[spec["runtime"]]
    windows = np.load(spec["windows_path"]).astype(np.float32)
    module = _import_runtime(runtime)
    imported_ns = time.monotonic_ns()
    load_start = time.perf_counter()
    predict = LOADERS[runtime.key](spec, module)
    load_ms = (time.perf_counter() - load_start) * 1000.0
    loaded_ns = time.monotonic_ns()
    first_logits = np.asarray(predict(windows[0]), dtype=np.float32)
    first_score_ns = time.monotonic_ns()
    logits = [first_logits] + [
        np.asarray(predict(w), dtype=np.float32) for w in windows[1 : int(spec["check_windows"])]
    ]

    timed = timed_windows(predict, windows, spec)
    return {
        "status": "ok",
        "reason": "",
        "runtime_version": _version(runtime.distribution, module),
        "load_ms": load_ms,
        "first_score_monotonic_ns": first_score_ns,
        "stages_monotonic_ns": {
            "main": main_ns,
            "imported": imported_ns,
            "loaded": loaded_ns,
            "first_score": first_score_ns,
        },
        **timed,  # latencies_ms, warmup_runs, cpu_ms_per_window
        "logits": np.stack(logits).astype(float).tolist(),
    }


def gemm_rate(spec: dict[str, Any]) -> dict[str, Any]:
    """fp32 multiply-accumulates per second of numpy's matmul (its BLAS): for each square size,
    the best of repeats over a time budget. Short multiplies (256^3 takes ~0.5 ms here) make
    the best repeat one that no other process interrupted, so a busy machine still shows the
    rate its cores can reach."""
    rng = np.random.default_rng(0)
    per_size: dict[str, float] = {}
    for size in spec.get("sizes", (256, 512)):
        size = int(size)
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        out = np.empty((size, size), dtype=np.float32)
        np.matmul(a, b, out=out)  # warm-up: threads started, pages touched
        best_s = float("inf")
        deadline = time.perf_counter() + float(spec.get("seconds_per_size", 0.5))
        repeats = 0
        while repeats < 3 or time.perf_counter() < deadline:
            start = time.perf_counter()
            np.matmul(a, b, out=out)
            best_s = min(best_s, time.perf_counter() - start)
            repeats += 1
        per_size[str(size)] = size**3 / best_s
    return {
        "status": "ok",
        "reason": "",
        "macs_per_s_by_size": per_size,
        "macs_per_s": max(per_size.values()),
    }


def run(spec: dict[str, Any], main_ns: int = 0) -> dict[str, Any]:
    try:
        result = gemm_rate(spec) if spec.get("mode") == "gemm" else measure(spec, main_ns)
    except RuntimeMissingError as error:
        result = {"status": "skipped", "reason": str(error)}
    except Exception as error:  # a failing row is a row, not a crash: report it to the parent
        last = traceback.extract_tb(error.__traceback__)[-1:]
        where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
        result = {"status": "failed", "reason": f"{type(error).__name__}: {error}{where}"}
    result.update(worker_identity(), pid=os.getpid())
    return result


def main() -> int:
    main_ns = time.monotonic_ns()
    spec = json.loads(sys.stdin.read())
    result = run(spec, main_ns)
    sys.stdout.write("\n" + RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
