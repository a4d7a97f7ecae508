"""What `make bench` measures, as data: formats, runtimes, the Python environments they run in.

One row of the benchmark table is one (format, runtime, environment, threads). Adding a
format or a runtime is adding an entry here and, for a new runtime, one loader function in
`benchmarks.worker`; nothing else branches on names.

Runtimes (module, pip name) and the device venvs come from `device.runtimes`, the one table
the device, convert and the Arm harness read too; this module adds what the benchmark needs.

Only the standard library: the worker imports this module inside the device venvs too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from device import runtimes


@dataclass(frozen=True)
class Format:
    key: str  # row key: "pytorch", "onnx", "tflite_fp32", "tflite_int8"
    label: str  # shown in the table
    precision: str  # "fp32" | "int8": picks the compute peak the row is compared with
    bundle_format: str | None  # device.bundle MODEL_FILES key; None: weights come from the run
    parity_names: tuple[str, ...]  # names this format may have in the bundle's parity.json


@dataclass(frozen=True)
class Runtime:
    key: str  # "torch", "onnxruntime", "litert", "tflite-runtime"
    module: str  # what the worker imports
    distribution: str  # pip name (for the version and the install hint)
    formats: tuple[str, ...]  # Format keys this runtime runs


@dataclass(frozen=True)
class Environment:
    """A Python interpreter the rows run in: this one, or a device venv next to the repository."""

    key: str  # "current" | ".venv-device" | ".venv-tflite"
    venv_dir: str | None  # relative to the repository; None: the interpreter running the benchmark
    runtimes: tuple[str, ...]  # Runtime keys measured in this environment
    build_hint: str  # how to create it when it is missing
    optional_runtimes: tuple[str, ...] = ()  # measured only when installed there (no skip row)


FORMATS: dict[str, Format] = {
    f.key: f
    for f in (
        Format("pytorch", "PyTorch fp32 (eager)", "fp32", None, ("pytorch", "torch")),
        Format("onnx", "ONNX fp32", "fp32", "onnx", ("onnx", "onnxruntime", "model.onnx")),
        Format(
            "tflite_fp32",
            "TFLite fp32",
            "fp32",
            "fp32",
            ("tflite_fp32", "fp32", "model_fp32.tflite"),
        ),
        Format(
            "tflite_int8",
            "TFLite int8",
            "int8",
            "int8",
            ("tflite_int8", "int8", "model_int8.tflite"),
        ),
    )
}

RUNTIMES: dict[str, Runtime] = {
    r.key: Runtime(
        r.key,
        r.module,
        r.distribution,
        tuple(f.key for f in FORMATS.values() if set(f.parity_names) & set(r.formats)),
    )
    for r in runtimes.RUNTIMES.values()
}


def _device_venv(name: str) -> Environment:
    venv = runtimes.DEVICE_VENVS[name]
    return Environment(venv.name, venv.name, (venv.runtime,), venv.build_hint)


ENVIRONMENTS: tuple[Environment, ...] = (
    # On a Pi with tflite-runtime instead of LiteRT, the current interpreter measures that.
    Environment(
        runtimes.CURRENT_ENVIRONMENT,
        None,
        ("torch", "onnxruntime", "litert"),
        "",
        ("tflite-runtime",),
    ),
    _device_venv(".venv-device"),
    _device_venv(".venv-tflite"),
)
"""Rows run in this order within a round (the next round runs them in reverse)."""


def venv_python(repo: Path, environment: Environment) -> Path | None:
    """The environment's interpreter, or None for the current one."""
    if environment.venv_dir is None:
        return None
    return repo / environment.venv_dir / "bin" / "python"
