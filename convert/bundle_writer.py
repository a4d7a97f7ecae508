"""Write the bundle's manifest.json, and check it the way the device will read it.

The manifest is built as a plain dict in the shape `device.bundle.manifest_from_dict`
parses (file entries by `device.bundle.file_entry_to_dict`, the device's own serializer),
written, then read back through `device.bundle.load_bundle` (sha256 and sizes)
and each TFLite file's declared tensors compared with the interpreter's own details
(`device.bundle.check_tensor_details`): a bundle this module writes is one the device
accepts, or the conversion fails here.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from device.audio import NORMALIZATION_RULE, SAMPLE_RATE
from device.bundle import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MODEL_FILES,
    FileEntry,
    TensorSpec,
    check_tensor_details,
    file_entry_to_dict,
    load_bundle,
    manifest_from_dict,
    sha256_of,
)
from device.scores import FILE_AGGREGATION, LABELS, SCORE_DEFINITION

TOOL_PACKAGES = (
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "onnxsim",
    "onnx2tf",
    "tensorflow",
    "ai-edge-litert",
    "numpy",
    "scipy",
    "soundfile",
)


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in TOOL_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def file_entry(
    path: Path,
    *,
    precision: str = "",
    inputs: Sequence[TensorSpec] = (),
    outputs: Sequence[TensorSpec] = (),
) -> dict[str, Any]:
    """The manifest entry of one bundle file (device.bundle's own serializer)."""
    return file_entry_to_dict(
        FileEntry(
            sha256=sha256_of(path),
            bytes=path.stat().st_size,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            precision=precision,
        )
    )


def build_manifest(
    *,
    model: Mapping[str, Any],
    window_samples: int,
    hop_samples: int,
    silence_floor_dbfs: float,
    threshold: Mapping[str, Any],
    files: Mapping[str, Mapping[str, Any]],
    data: Mapping[str, Any],
    tools: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest dict; `model` holds name, parameters, macs_per_window and the config."""
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": dict(model),
        "audio": {
            "sample_rate": SAMPLE_RATE,
            "window_samples": int(window_samples),
            "hop_samples": int(hop_samples),
            "normalization": NORMALIZATION_RULE,
            "silence_floor_dbfs": float(silence_floor_dbfs),
        },
        "labels": list(LABELS),
        "score": {"definition": SCORE_DEFINITION, "file_aggregation": FILE_AGGREGATION},
        "threshold": dict(threshold),
        "files": {name: dict(entry) for name, entry in files.items()},
        "data": dict(data),
        "tools": dict(tools),
    }
    for key, value in (extra or {}).items():
        if key in manifest:
            raise ValueError(f"extra manifest key {key!r} would replace a contract field")
        manifest[key] = value
    manifest_from_dict(manifest, "manifest (before writing)")  # the device's own parser
    return manifest


def write_manifest(bundle_dir: Path, manifest: Mapping[str, Any]) -> Path:
    path = bundle_dir / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def verify_bundle(bundle_dir: Path) -> None:
    """Read the bundle back as the device does; compare every TFLite file with its interpreter."""
    from convert.litert import open_interpreter

    bundle = load_bundle(bundle_dir)
    for model_format in ("fp32", "int8"):
        name = MODEL_FILES[model_format]
        entry = bundle.manifest.files[name]
        interpreter = open_interpreter(bundle_dir / name)
        check_tensor_details(name, entry.inputs, interpreter.get_input_details(), "input")
        check_tensor_details(name, entry.outputs, interpreter.get_output_details(), "output")
