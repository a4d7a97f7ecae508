"""Which runtimes run a model, and which Python environments hold them: one table.

`device.runtime` searches `INTERPRETERS` in order; convert's parity gate, the benchmarks and
the Arm harness read the same rows for module names, pip names and the device venvs.

Only the standard library: this module runs on the Pi and inside the device venvs.
"""

from __future__ import annotations

from dataclasses import dataclass

CURRENT_ENVIRONMENT = "current"
"""The environment key of the interpreter that is running (not a device venv)."""


@dataclass(frozen=True)
class Runtime:
    key: str  # "torch" | "onnxruntime" | "litert" | "tflite-runtime"
    module: str  # what is imported to run a model
    distribution: str  # the pip name (versions, install hints)
    formats: tuple[str, ...]  # model formats it runs: "torch" | "onnx" | "fp32" | "int8"


RUNTIMES: dict[str, Runtime] = {
    r.key: r
    for r in (
        Runtime("torch", "torch", "torch", ("torch",)),
        Runtime("onnxruntime", "onnxruntime", "onnxruntime", ("onnx",)),
        Runtime("litert", "ai_edge_litert.interpreter", "ai-edge-litert", ("fp32", "int8")),
        Runtime("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime", ("fp32", "int8")),
    )
}

INTERPRETERS = ("litert", "tflite-runtime")
"""The TFLite interpreters the device can use, in the order it tries them."""


@dataclass(frozen=True)
class DeviceVenv:
    """An x86 venv next to the repository with exactly one device runtime (scripts/device-venv.sh)."""

    name: str  # directory relative to the repository, also the environment key
    kind: str  # the argument of scripts/device-venv.sh
    make_target: str
    requirements: str
    runtime: str  # a RUNTIMES key
    holds: str  # what it pins, for messages
    parity_formats: tuple[str, ...]  # formats the parity gate scores in it
    pi_runtime: bool = False  # the Pi's own runtime: the gate fails when it cannot run here

    @property
    def build_hint(self) -> str:
        return f"scripts/device-venv.sh {self.kind} ({self.holds})"


DEVICE_VENVS: dict[str, DeviceVenv] = {
    v.name: v
    for v in (
        # A different build with its own known faults (docs/toolchain.md): every TFLite file.
        DeviceVenv(
            ".venv-tflite",
            "tflite",
            "tflite-venv",
            "requirements/device-tflite.txt",
            "tflite-runtime",
            "tflite-runtime 2.14, numpy<2",
            ("fp32", "int8"),
        ),
        # The Pi's pinned LiteRT: int8, the device's default format (its fp32 kernels are
        # LiteRT 2.1's); the benchmarks take the accuracy columns of its rows from here.
        DeviceVenv(
            ".venv-device",
            "device",
            "device-venv",
            "requirements/device.txt",
            "litert",
            "ai-edge-litert 2.3.0, numpy 2, as on a Pi",
            ("int8",),
            pi_runtime=True,
        ),
    )
}


def device_venv_named(name: str) -> DeviceVenv:
    """The device venv called `name`: its kind ("device") or its directory (".venv-device")."""
    for venv in DEVICE_VENVS.values():
        if name in (venv.kind, venv.name):
            return venv
    known = ", ".join(f"{v.kind} ({v.name})" for v in DEVICE_VENVS.values())
    raise ValueError(f"expected a device runtime named one of {known}, got {name!r}")


def runtime_for_module(module: str) -> Runtime | None:
    """The row whose module is `module` ("ai_edge_litert.interpreter"), None if unknown."""
    return next((r for r in RUNTIMES.values() if r.module == module), None)


def runtime_label(module: str, version: str) -> str:
    """ "ai-edge-litert 2.3.0": the pip name (or the module, if unknown) and the version."""
    runtime = runtime_for_module(module)
    return f"{runtime.distribution if runtime else module} {version}".strip()
