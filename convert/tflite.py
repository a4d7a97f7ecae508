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


class Onnx2tfJob:
    """One onnx2tf run in a subprocess: `start()` returns at once, `wait()` checks the result.

    Running in the background lets the caller decode and score audio meanwhile.
    """

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
        self.env = _tool_environment()
        if shutil.which("onnxsim", path=self.env["PATH"]) is None:
            raise ConversionError(
                f"the `onnxsim` command is not on PATH (looked first in {_venv_bin()}); onnx2tf "
                "would silently skip simplification. Install the convert extra into this venv."
            )
        self.calibration = calibration
        self.out_dir = self.work_dir / "onnx2tf"
        self.model_copy = self.work_dir / "model.onnx"
        self.log_path = self.work_dir / "onnx2tf.log"
        self.command: tuple[str, ...] = ()
        self._process: subprocess.Popen[bytes] | None = None
        self._log = None
        self._started = 0.0
        self._original_sha256 = ""

    def start(self) -> Onnx2tfJob:
        if self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        self.out_dir.mkdir(parents=True)
        shutil.copyfile(self.onnx_path, self.model_copy)
        calibration_path = self.work_dir / "calibration.npy"
        np.save(calibration_path, np.ascontiguousarray(self.calibration, dtype=np.float32))
        self._original_sha256 = _sha256(self.onnx_path)
        self.command = (
            sys.executable,
            "-m",
            "onnx2tf",
            "-i",
            str(self.model_copy),
            "-o",
            str(self.out_dir),
            "-oiqt",
            "-qt",
            "per-channel",
            "-cind",
            self.input_name,
            str(calibration_path),
            "[0.0]",
            "[1.0]",
            "-iqd",
            IO_DTYPE_INT8,
            "-oqd",
            IO_DTYPE_INT8,
        )
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in wait)
        self._started = time.perf_counter()
        self._process = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.work_dir,
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
            raise ConversionError("onnx2tf was not started")
        remaining = max(1.0, self.timeout_s - (time.perf_counter() - self._started))
        try:
            returncode = self._process.wait(timeout=remaining)
        except subprocess.TimeoutExpired as error:
            self.cancel()
            raise ConversionError(
                f"onnx2tf did not finish within {self.timeout_s:.0f} s; log: {self.log_path}"
            ) from error
        finally:
            self._log.close()
        seconds = time.perf_counter() - self._started
        if _sha256(self.onnx_path) != self._original_sha256:
            raise ConversionError(
                f"{self.onnx_path}: changed during conversion (onnx2tf must get a copy)"
            )
        if returncode != 0:
            raise ConversionError(
                f"onnx2tf exited with status {returncode}; log: {self.log_path}\n"
                + _log_tail(self.log_path)
            )
        stem = self.model_copy.stem
        expected = {
            "float32": self.out_dir / f"{stem}{ONNX2TF_FLOAT32_SUFFIX}",
            "full-integer int8": self.out_dir / f"{stem}{ONNX2TF_INT8_SUFFIX}",
        }
        missing = [f"{kind} ({path.name})" for kind, path in expected.items() if not path.is_file()]
        if missing:
            found = sorted(p.name for p in self.out_dir.glob("*.tflite"))
            raise ConversionError(
                f"onnx2tf exited 0 but did not write {', '.join(missing)} in {self.out_dir}; it "
                f"wrote {found or 'no .tflite files'}. A calibration array in the wrong layout "
                f"does this. Log: {self.log_path}\n" + _log_tail(self.log_path)
            )
        return TfliteConversion(
            float32_path=expected["float32"],
            int8_path=expected["full-integer int8"],
            log_path=self.log_path,
            seconds=seconds,
            command=self.command,
            input_dtype=IO_DTYPE_INT8,
            output_dtype=IO_DTYPE_INT8,
        )


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
    return Onnx2tfJob(onnx_path, calibration, work_dir, timeout_s=timeout_s).start().wait()


def _log_tail(log_path: Path) -> str:
    text = log_path.read_text(encoding="utf-8", errors="replace")
    return text[-_LOG_TAIL_CHARS:]
