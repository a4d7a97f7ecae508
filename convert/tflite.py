"""ONNX -> float32 TFLite with onnx2tf, then full-integer int8 from its SavedModel.

onnx2tf translates the graph (ONNX -> TensorFlow SavedModel -> float32 TFLite). The int8
file is then quantized from that SavedModel with TensorFlow's converter, set up as
onnx2tf's own `-oiqt` full-integer step is (Optimize.DEFAULT, per-channel weights, a
representative dataset, int8 input and output) but with builtin int8 ops only, so an op
that cannot be integer fails the conversion instead of shipping a TF-select op.
Why not `-oiqt`: it calibrates four variants (integer-quant, full-integer and two
int16-activation ones) and writes three more the bundle does not use; measured on this
machine, the onnx2tf step took 86-220 s with it, 46 s without (+10 s for one int8
calibration), and `make convert` must fit in three minutes.

Input and output are int8 because the device quantizes the normalized window itself with
the manifest's scale and zero point, so the graph is integer end to end, its edges
included: no float QUANTIZE/DEQUANTIZE ops, nothing for XNNPACK to hand back.

onnx2tf's quirks (docs/toolchain.md), each guarded in `run_onnx2tf`:

- it shells out to the `onnxsim` command and skips simplification when that is not on
  PATH: it runs with this interpreter's `bin/` first on PATH, and refuses to start when
  `onnxsim` is not found there;
- it overwrites its input `.onnx`: it is given a copy, and the original's sha256 is
  checked afterwards;
- it exits 0 with expected files missing (e.g. a calibration array of the wrong layout
  with `-oiqt`): every expected output file is checked after the run, by name. The
  calibration array's layout is also checked against the ONNX input before anything runs.

The whole step (onnx2tf, then quantization) runs as one background process
(`python -m convert.tflite`, see `Onnx2tfJob`), so the caller can decode and score audio
meanwhile, and TensorFlow never loads into the caller's process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convert.errors import ConversionError
from convert.int8 import configure_full_int8, converter_settings

ONNX2TF_FLOAT32_SUFFIX = "_float32.tflite"
SAVED_MODEL_FILE = "saved_model.pb"
INT8_FILE = "model_int8.tflite"
IO_DTYPE_INT8 = "int8"
"""Input and output dtype of the full-integer model (see the module docstring)."""

DEFAULT_TIMEOUT_S = 900.0
_LOG_TAIL_CHARS = 3000
_EXIT_CONVERSION_ERROR = 3


@dataclass(frozen=True)
class TfliteConversion:
    """What one conversion produced."""

    float32_path: Path
    int8_path: Path
    log_path: Path
    seconds: float
    onnx2tf_seconds: float
    quantize_seconds: float
    onnx2tf_arguments: tuple[str, ...]
    quantization: dict[str, Any]  # the int8 converter settings that ran (convert.int8)
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
    """The calibration array must be [K, *input_shape[1:]] float32 (one window per row)."""
    expected_tail = tuple(input_shape[1:])
    if calibration.dtype != np.float32:
        raise ConversionError(f"calibration windows must be float32, got {calibration.dtype}")
    if calibration.ndim != len(input_shape) or tuple(calibration.shape[1:]) != expected_tail:
        raise ConversionError(
            f"calibration array has shape {list(calibration.shape)}; the ONNX input is "
            f"{list(input_shape)}, so it must be [K, {', '.join(map(str, expected_tail))}]"
        )
    if calibration.shape[0] < 1:
        raise ConversionError("calibration array holds no windows")


def _log_tail(log_path: Path) -> str:
    text = log_path.read_text(encoding="utf-8", errors="replace")
    return text[-_LOG_TAIL_CHARS:]


# --------------------------------------------------------------------------- onnx2tf


def run_onnx2tf(
    onnx_path: Path,
    out_dir: Path,
    *,
    extra_arguments: Sequence[str] = (),
    expected_suffixes: Sequence[str] = (ONNX2TF_FLOAT32_SUFFIX,),
    log_path: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Path]:
    """Run onnx2tf on a copy of `onnx_path` into `out_dir`; return suffix -> written file.

    Raises ConversionError when onnxsim is missing, onnx2tf fails or times out, the
    original changed, or any expected file (`<stem><suffix>`, or SAVED_MODEL_FILE) is
    missing although onnx2tf exited 0.
    """
    env = _tool_environment()
    if shutil.which("onnxsim", path=env["PATH"]) is None:
        raise ConversionError(
            f"the `onnxsim` command is not on PATH (looked first in {_venv_bin()}); onnx2tf "
            "would silently skip simplification. Install the convert extra into this venv."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    model_copy = out_dir.parent / f"{onnx_path.stem}_copy.onnx"
    shutil.copyfile(onnx_path, model_copy)
    original_sha256 = _sha256(onnx_path)
    command = [
        sys.executable,
        "-m",
        "onnx2tf",
        "-i",
        str(model_copy),
        "-o",
        str(out_dir),
        *extra_arguments,
    ]
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        try:
            completed = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=out_dir.parent,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise ConversionError(
                f"onnx2tf did not finish within {timeout_s:.0f} s; log: {log_path}"
            ) from error
    if _sha256(onnx_path) != original_sha256:
        raise ConversionError(f"{onnx_path}: changed during conversion (onnx2tf must get a copy)")
    if completed.returncode != 0:
        raise ConversionError(
            f"onnx2tf exited with status {completed.returncode}; log: {log_path}\n"
            + _log_tail(log_path)
        )
    expected = {suffix: out_dir / f"{model_copy.stem}{suffix}" for suffix in expected_suffixes}
    expected[SAVED_MODEL_FILE] = out_dir / SAVED_MODEL_FILE
    missing = [path.name for path in expected.values() if not path.is_file()]
    if missing:
        found = sorted(p.name for p in out_dir.iterdir())
        raise ConversionError(
            f"onnx2tf exited 0 but did not write {', '.join(missing)} in {out_dir}; it wrote "
            f"{found or 'nothing'}. With -oiqt, a calibration array of the wrong layout does "
            f"this. Log: {log_path}\n" + _log_tail(log_path)
        )
    return expected


# --------------------------------------------------------------------------- int8


def quantize_int8(
    saved_model_dir: Path, calibration: np.ndarray, out_path: Path
) -> tuple[Path, dict[str, Any]]:
    """Full-integer int8 TFLite from a SavedModel, calibrated on `calibration` windows.

    Returns the file and the settings the converter ran with (`convert.int8`), as the manifest
    records them: the converter, the settings read back from it, and the calibration size.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))

    def representative():
        for window in calibration:
            yield [np.ascontiguousarray(window[None, :], dtype=np.float32)]

    configure_full_int8(converter, representative)
    out_path.write_bytes(converter.convert())
    names_bytes = strip_intermediate_names(out_path)
    settings = {
        "converter": "tf.lite.TFLiteConverter.from_saved_model (onnx2tf's SavedModel)",
        **converter_settings(converter),
        "calibration_windows": int(calibration.shape[0]),
        "intermediate_tensor_names_removed_bytes": names_bytes,
    }
    return out_path, settings


def strip_intermediate_names(path: Path) -> int:
    """Drop the names of a TFLite file's intermediate tensors; returns the bytes they took.

    The converter names each tensor after the TensorFlow ops fused into it ("model/conv/
    Conv2D;model/bn/FusedBatchNorm;..."), about 7.6 KB in the int8 file, which nothing reads
    at run time. Graph inputs and outputs keep their names and the signature stays, so
    `get_input_details()` and signature runners see what they saw before; ops, weights and
    quantization are untouched (the parity gate runs on the stripped file).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    removed = 0
    for subgraph in model.subgraphs:
        keep = set(subgraph.inputs) | set(subgraph.outputs)
        for index, tensor in enumerate(subgraph.tensors):
            if index not in keep and tensor.name:
                removed += len(tensor.name)
                tensor.name = None
    flatbuffer_utils.write_model(model, str(path))
    return removed


def _build(onnx_path: Path, calibration_path: Path, work_dir: Path, timeout_s: float) -> dict:
    """The background step: onnx2tf to float32, then int8. Writes result.json into work_dir."""
    log_path = work_dir / "convert.log"
    started = time.perf_counter()
    written = run_onnx2tf(onnx_path, work_dir / "onnx2tf", log_path=log_path, timeout_s=timeout_s)
    onnx2tf_seconds = time.perf_counter() - started
    started = time.perf_counter()
    calibration = np.load(calibration_path)
    int8_path, int8_settings = quantize_int8(
        written[SAVED_MODEL_FILE].parent, calibration, work_dir / INT8_FILE
    )
    result = {
        "float32": str(written[ONNX2TF_FLOAT32_SUFFIX]),
        "int8": str(int8_path),
        "onnx2tf_seconds": onnx2tf_seconds,
        "quantize_seconds": time.perf_counter() - started,
        "int8_settings": int8_settings,
    }
    (work_dir / "result.json").write_text(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m convert.tflite`: the background step of Onnx2tfJob."""
    parser = argparse.ArgumentParser(prog="python -m convert.tflite")
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--calibration", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)
    args = parser.parse_args(argv)
    try:
        _build(args.onnx, args.calibration, args.work_dir, args.timeout_s)
    except ConversionError as error:
        (args.work_dir / "error.txt").write_text(str(error))
        print(f"error: {error}", file=sys.stderr)
        return _EXIT_CONVERSION_ERROR
    return 0


# --------------------------------------------------------------------------- the job


class Onnx2tfJob:
    """The conversion in a background process: `start()` returns at once, `wait()` checks it."""

    def __init__(
        self,
        onnx_path: str | Path,
        calibration: np.ndarray,
        work_dir: str | Path,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.onnx_path = Path(onnx_path)
        self.work_dir = Path(work_dir)
        self.timeout_s = timeout_s
        if not self.onnx_path.is_file():
            raise ConversionError(f"{self.onnx_path}: ONNX model not found")
        self.input_name, input_shape = onnx_input(self.onnx_path)
        if any(d <= 0 for d in input_shape):
            raise ConversionError(
                f"{self.onnx_path}: input {self.input_name!r} has a dynamic shape "
                f"{list(input_shape)}; export with a fixed [1, window_samples] input"
            )
        check_calibration_layout(calibration, input_shape)
        self.calibration = calibration
        self.log_path = self.work_dir / "convert.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = None
        self._started = 0.0

    def start(self) -> Onnx2tfJob:
        if self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        self.work_dir.mkdir(parents=True)
        calibration_path = self.work_dir / "calibration.npy"
        np.save(calibration_path, np.ascontiguousarray(self.calibration, dtype=np.float32))
        command = [
            sys.executable,
            "-m",
            "convert.tflite",
            "--onnx",
            str(self.onnx_path.resolve()),
            "--calibration",
            str(calibration_path.resolve()),
            "--work-dir",
            str(self.work_dir.resolve()),
            "--timeout-s",
            str(self.timeout_s),
        ]
        self._log = open(self.work_dir / "driver.log", "w", encoding="utf-8")  # noqa: SIM115
        self._started = time.perf_counter()
        self._process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_tool_environment(),
            cwd=Path(__file__).resolve().parents[1],
        )
        return self

    def cancel(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._log is not None:
            self._log.close()

    def wait(self) -> TfliteConversion:
        if self._process is None or self._log is None:
            raise ConversionError("the conversion was not started")
        remaining = max(1.0, self.timeout_s + 120.0 - (time.perf_counter() - self._started))
        try:
            returncode = self._process.wait(timeout=remaining)
        except subprocess.TimeoutExpired as error:
            self.cancel()
            raise ConversionError(
                f"the TFLite conversion did not finish within {remaining:.0f} s; log: "
                f"{self.log_path}"
            ) from error
        finally:
            self._log.close()
        seconds = time.perf_counter() - self._started
        error_file = self.work_dir / "error.txt"
        if returncode == _EXIT_CONVERSION_ERROR and error_file.is_file():
            raise ConversionError(error_file.read_text())
        result_file = self.work_dir / "result.json"
        if returncode != 0 or not result_file.is_file():
            driver_log = self.work_dir / "driver.log"
            raise ConversionError(
                f"the TFLite conversion (python -m convert.tflite) exited {returncode}; "
                f"log: {driver_log}\n" + _log_tail(driver_log)
            )
        result = json.loads(result_file.read_text())
        paths = {"float32": Path(result["float32"]), "int8": Path(result["int8"])}
        for kind, path in paths.items():
            if not path.is_file():
                raise ConversionError(f"the {kind} TFLite file {path} is missing after conversion")
        return TfliteConversion(
            float32_path=paths["float32"],
            int8_path=paths["int8"],
            log_path=self.log_path,
            seconds=seconds,
            onnx2tf_seconds=float(result["onnx2tf_seconds"]),
            quantize_seconds=float(result["quantize_seconds"]),
            onnx2tf_arguments=("-i", "model.onnx", "-o", "onnx2tf"),
            quantization=dict(result["int8_settings"]),
            input_dtype=IO_DTYPE_INT8,
            output_dtype=IO_DTYPE_INT8,
        )


if __name__ == "__main__":
    sys.exit(main())
