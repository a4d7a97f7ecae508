"""ONNX -> float32 and full-integer int8 TFLite with onnx2tf, guarding its known quirks.

onnx2tf (TOOLCHAIN.md) has three ways of failing quietly, each guarded here:

- it shells out to the `onnxsim` command and skips simplification when that is not on
  PATH: it runs with this interpreter's `bin/` first on PATH, and refuses to start when
  `onnxsim` is not found there;
- it overwrites its input `.onnx`: it is given a copy, and the original's sha256 is
  checked afterwards;
- a calibration array in the wrong layout exits 0 with the int8 files simply missing:
  the array's shape is checked against the ONNX input before the run, and every
  expected output file is checked after it.

One run writes float32, float16, dynamic-range, integer-quant and full-integer variants;
the bundle keeps float32 and full-integer int8 (int8 weights, activations, input and
output). Input and output are int8 because the device quantizes the normalized window
itself with the manifest's scale and zero point, so the whole graph, its ends included,
stays integer: no float QUANTIZE/DEQUANTIZE ops at the edges.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.errors import ConversionError

ONNX2TF_FLOAT32_SUFFIX = "_float32.tflite"
ONNX2TF_INT8_SUFFIX = "_full_integer_quant.tflite"
IO_DTYPE_INT8 = "int8"
"""Input and output dtype of the full-integer model (see the module docstring)."""

DEFAULT_TIMEOUT_S = 900.0
_LOG_TAIL_CHARS = 3000


@dataclass(frozen=True)
class TfliteConversion:
    """What one onnx2tf run produced."""

    float32_path: Path
    int8_path: Path
    log_path: Path
    seconds: float
    command: tuple[str, ...]
    input_dtype: str
    output_dtype: str


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def _tool_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{_venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def onnx_input(onnx_path: Path) -> tuple[str, tuple[int, ...]]:
    """The single input of an ONNX model: (name, static shape)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ConversionError(
            f"{onnx_path}: expected one input, found {len(inputs)} ({[i.name for i in inputs]})"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in dims)
    return inputs[0].name, shape


def check_calibration_layout(calibration: np.ndarray, input_shape: tuple[int, ...]) -> None:
    """The calibration array must be [K, *input_shape[1:]] float32, or onnx2tf drops int8 quietly."""
    expected_tail = tuple(input_shape[1:])
    if calibration.dtype != np.float32:
        raise ConversionError(
            f"calibration windows must be float32, got {calibration.dtype} (onnx2tf would "
            "skip the int8 models without an error)"
        )
    if calibration.ndim != len(input_shape) or tuple(calibration.shape[1:]) != expected_tail:
        raise ConversionError(
            f"calibration array has shape {list(calibration.shape)}; the ONNX input is "
            f"{list(input_shape)}, so it must be [K, {', '.join(map(str, expected_tail))}]"
        )
    if calibration.shape[0] < 1:
        raise ConversionError("calibration array holds no windows")


def convert_onnx(
    onnx_path: str | Path,
    calibration: np.ndarray,
    work_dir: str | Path,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> TfliteConversion:
    """Run onnx2tf once on a copy of `onnx_path`; return the float32 and full-int8 files.

    `calibration` holds normalized windows shaped like the ONNX input without its batch
    axis ([K, window_samples]); it is passed with mean 0 and std 1, i.e. unchanged.
    """
    onnx_path = Path(onnx_path)
    work_dir = Path(work_dir)
    if not onnx_path.is_file():
        raise ConversionError(f"{onnx_path}: ONNX model not found")
    input_name, input_shape = onnx_input(onnx_path)
    if any(d <= 0 for d in input_shape):
        raise ConversionError(
            f"{onnx_path}: input {input_name!r} has a dynamic shape {list(input_shape)}; "
            "export with a fixed [1, window_samples] input"
        )
    check_calibration_layout(calibration, input_shape)

    env = _tool_environment()
    if shutil.which("onnxsim", path=env["PATH"]) is None:
        raise ConversionError(
            f"the `onnxsim` command is not on PATH (looked first in {_venv_bin()}); onnx2tf "
            "would silently skip simplification. Install the convert extra into this venv."
        )

    if work_dir.exists():
        shutil.rmtree(work_dir)
    out_dir = work_dir / "onnx2tf"
    out_dir.mkdir(parents=True)
    model_copy = work_dir / "model.onnx"
    shutil.copyfile(onnx_path, model_copy)
    calibration_path = work_dir / "calibration.npy"
    np.save(calibration_path, np.ascontiguousarray(calibration, dtype=np.float32))
    original_sha256 = _sha256(onnx_path)

    command = (
        sys.executable,
        "-m",
        "onnx2tf",
        "-i",
        str(model_copy),
        "-o",
        str(out_dir),
        "-oiqt",
        "-qt",
        "per-channel",
        "-cind",
        input_name,
        str(calibration_path),
        "[0.0]",
        "[1.0]",
        "-iqd",
        IO_DTYPE_INT8,
        "-oqd",
        IO_DTYPE_INT8,
    )
    log_path = work_dir / "onnx2tf.log"
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            completed = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=work_dir,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise ConversionError(
                f"onnx2tf did not finish within {timeout_s:.0f} s; log: {log_path}"
            ) from error
    seconds = time.perf_counter() - started

    if _sha256(onnx_path) != original_sha256:
        raise ConversionError(f"{onnx_path}: changed during conversion (onnx2tf must get a copy)")
    if completed.returncode != 0:
        raise ConversionError(
            f"onnx2tf exited with status {completed.returncode}; log: {log_path}\n"
            + _log_tail(log_path)
        )
    stem = model_copy.stem
    expected = {
        "float32": out_dir / f"{stem}{ONNX2TF_FLOAT32_SUFFIX}",
        "full-integer int8": out_dir / f"{stem}{ONNX2TF_INT8_SUFFIX}",
    }
    missing = [f"{kind} ({path.name})" for kind, path in expected.items() if not path.is_file()]
    if missing:
        found = sorted(p.name for p in out_dir.glob("*.tflite"))
        raise ConversionError(
            f"onnx2tf exited 0 but did not write {', '.join(missing)} in {out_dir}; it wrote "
            f"{found or 'no .tflite files'}. A calibration array in the wrong layout does this. "
            f"Log: {log_path}\n" + _log_tail(log_path)
        )
    return TfliteConversion(
        float32_path=expected["float32"],
        int8_path=expected["full-integer int8"],
        log_path=log_path,
        seconds=seconds,
        command=command,
        input_dtype=IO_DTYPE_INT8,
        output_dtype=IO_DTYPE_INT8,
    )


def _log_tail(log_path: Path) -> str:
    text = log_path.read_text(encoding="utf-8", errors="replace")
    return text[-_LOG_TAIL_CHARS:]
