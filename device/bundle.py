"""The model bundle: the hand-off between the desktop (convert) and the device.

A bundle is a directory with `manifest.json` and the files it lists. The manifest
holds everything the device needs (audio front-end settings, tensor specs, the
decision threshold); nothing is hard-coded elsewhere. `load_bundle` checks the
manifest's fields and every file's sha256; `check_tensor_details` compares a
model file's declared tensors with what the interpreter itself reports.

Only the standard library and numpy: this module runs on the Pi.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.scores import LABELS, Calibration

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODEL_FILES = {"onnx": "model.onnx", "fp32": "model_fp32.tflite", "int8": "model_int8.tflite"}
"""Model format name -> file name inside a bundle."""


class BundleError(ValueError):
    """A bundle that cannot be used: missing, malformed, tampered or mismatched."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a model file, as the converter saw it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32", "int8"
    scale: float = 0.0  # quantization scale; 0.0 for float tensors
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Float values -> this tensor's dtype (identity cast for float tensors)."""
        if not self.quantized:
            return np.asarray(values, dtype=self.dtype)
        info = np.iinfo(self.dtype)
        q = np.round(np.asarray(values, dtype=np.float32) / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """This tensor's values -> float32."""
        if not self.quantized:
            return np.asarray(values, dtype=np.float32)
        return ((np.asarray(values, dtype=np.float32) - self.zero_point) * self.scale).astype(
            np.float32
        )


@dataclass(frozen=True)
class FileEntry:
    """A file listed in the manifest. Model files also carry their tensor specs."""

    sha256: str
    bytes: int
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    precision: str = ""  # "fp32" | "int8" for model files


@dataclass(frozen=True)
class AudioSettings:
    sample_rate: int
    window_samples: int
    hop_samples: int
    normalization: str
    silence_floor_dbfs: float

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate

    @property
    def hop_s(self) -> float:
        return self.hop_samples / self.sample_rate


@dataclass(frozen=True)
class Threshold:
    """The decision threshold on P(spoof) and how it was chosen."""

    value: float  # the default: decide spoof when P(spoof) >= value
    method: str  # e.g. "eer_dev"
    eer_dev: float  # EER on the dev split at that point (fraction)
    far_target: float  # target false-alarm rate (bona fide called spoof) of the second threshold
    far_target_value: float  # threshold reaching at most far_target on dev


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model_name: str
    parameters: int
    macs_per_window: int
    audio: AudioSettings
    labels: tuple[str, ...]
    score_definition: str
    file_aggregation: str
    threshold: Threshold
    files: Mapping[str, FileEntry]
    data: Mapping[str, Any] = field(default_factory=dict)
    tools: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    calibration: Calibration | None = None  # parsed from extra["calibration"]; None: older bundle

    @property
    def operating_points(self) -> dict[str, Any]:
        """Named stream operating points (benchmarks.stream --write-manifest); {} when absent."""
        points = self.extra.get("operating_points", {})
        return dict(points) if isinstance(points, dict) else {}

    @property
    def missing(self) -> tuple[str, ...]:
        """What an older bundle lacks, each with what the device does instead."""
        out = []
        if self.calibration is None:
            out.append(
                "calibration (P(spoof) is the uncalibrated softmax; reconvert with `make "
                "convert` to calibrate it)"
            )
        if not self.operating_points:
            out.append(
                "operating_points (no stream operating table: run `python -m benchmarks.stream "
                "--bundle DIR --write-manifest`)"
            )
        return tuple(out)

    def model_file(self, model_format: str) -> str:
        if model_format not in MODEL_FILES:
            raise BundleError(
                f"unknown model format {model_format!r}; expected one of {sorted(MODEL_FILES)}"
            )
        name = MODEL_FILES[model_format]
        if name not in self.files:
            raise BundleError(f"the bundle has no {name} (model format {model_format!r})")
        return name

    def to_dict(self) -> dict[str, Any]:
        return manifest_to_dict(self)


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    def path(self, name: str) -> Path:
        return self.root / name

    def model_path(self, model_format: str) -> Path:
        return self.root / self.manifest.model_file(model_format)


# --------------------------------------------------------------------------- hashing


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- parsing


class _Reader:
    """Typed access to a JSON object that names the full path of a missing/bad field."""

    def __init__(self, data: Any, where: str, source: str) -> None:
        if not isinstance(data, dict):
            raise BundleError(
                f"{source}: expected an object at {where or 'the top level'}, got "
                f"{type(data).__name__}"
            )
        self.data = data
        self.where = where
        self.source = source

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in self.data:
            raise BundleError(f"{self.source}: missing field {self._name(key)!r}")
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise BundleError(
                f"{self.source}: field {self._name(key)!r} should be {expected}, got "
                f"{type(value).__name__} {value!r}"
            )
        return value

    def child(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict), self._name(key), self.source)


def _tensor(data: Any, where: str, source: str) -> TensorSpec:
    r = _Reader(data, where, source)
    shape = r.get("shape", list)
    if not all(isinstance(d, int) for d in shape):
        raise BundleError(f"{source}: {where}.shape should be a list of ints, got {shape!r}")
    dtype = r.get("dtype", str)
    try:
        np.dtype(dtype)
    except TypeError as error:
        raise BundleError(f"{source}: {where}.dtype {dtype!r} is not a numpy dtype") from error
    return TensorSpec(
        name=r.get("name", str),
        shape=tuple(shape),
        dtype=dtype,
        scale=float(r.data.get("scale", 0.0)),
        zero_point=int(r.data.get("zero_point", 0)),
    )


_CONTRACT_KEYS = frozenset(
    {"format_version", "model", "audio", "labels", "score", "threshold", "files", "data", "tools"}
)
"""Top-level manifest keys with a Manifest field; any other key is kept in Manifest.extra."""


def manifest_from_dict(data: Any, source: str = MANIFEST_NAME) -> Manifest:
    """Parse and check a manifest dict; every error names the source and the field."""
    r = _Reader(data, "", source)
    version = r.get("format_version", int)
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{source}: format_version {version} is not supported; this runtime reads "
            f"version {FORMAT_VERSION}"
        )
    model = r.child("model")
    audio = r.child("audio")
    score = r.child("score")
    threshold = r.child("threshold")
    files_reader = r.child("files")
    files = {name: _file_entry(files_reader.child(name)) for name in files_reader.data}
    labels = tuple(r.get("labels", list))
    if labels != LABELS:
        raise BundleError(f"{source}: labels should be {list(LABELS)}, got {list(labels)}")
    settings = _audio_settings(audio)
    thr = _threshold(threshold)
    calibration = _calibration(data.get("calibration"), source)
    return Manifest(
        format_version=version,
        model_name=model.get("name", str),
        parameters=model.get("parameters", int),
        macs_per_window=model.get("macs_per_window", int),
        audio=settings,
        labels=labels,
        score_definition=score.get("definition", str),
        file_aggregation=score.get("file_aggregation", str),
        threshold=thr,
        files=files,
        data=dict(data.get("data", {})),
        tools=dict(data.get("tools", {})),
        extra={k: v for k, v in data.items() if k not in _CONTRACT_KEYS}
        | {"model": dict(model.data)},
        calibration=calibration,
    )


def _calibration(data: Any, source: str) -> Calibration | None:
    """The manifest's optional `calibration` {method, a, b, ...}; None when absent."""
    if data is None:
        return None
    r = _Reader(data, "calibration", source)
    try:
        return Calibration(method=r.get("method", str), a=r.get("a", float), b=r.get("b", float))
    except ValueError as error:
        if isinstance(error, BundleError):
            raise
        raise BundleError(f"{source}: {error}") from error


def _file_entry(r: _Reader) -> FileEntry:
    def tensors(key: str) -> tuple[TensorSpec, ...]:
        items = r.data.get(key, [])
        return tuple(_tensor(t, f"{r.where}.{key}[{i}]", r.source) for i, t in enumerate(items))

    return FileEntry(
        sha256=r.get("sha256", str),
        bytes=r.get("bytes", int),
        inputs=tensors("inputs"),
        outputs=tensors("outputs"),
        precision=str(r.data.get("precision", "")),
    )


def _audio_settings(audio: _Reader) -> AudioSettings:
    settings = AudioSettings(
        sample_rate=audio.get("sample_rate", int),
        window_samples=audio.get("window_samples", int),
        hop_samples=audio.get("hop_samples", int),
        normalization=audio.get("normalization", str),
        silence_floor_dbfs=audio.get("silence_floor_dbfs", float),
    )
    if settings.window_samples <= 0 or settings.hop_samples <= 0:
        raise BundleError(
            f"{audio.source}: audio.window_samples and audio.hop_samples must be positive, got "
            f"{settings.window_samples} and {settings.hop_samples}"
        )
    return settings


def _threshold(threshold: _Reader) -> Threshold:
    thr = Threshold(
        value=threshold.get("value", float),
        method=threshold.get("method", str),
        eer_dev=threshold.get("eer_dev", float),
        far_target=threshold.get("far_target", float),
        far_target_value=threshold.get("far_target_value", float),
    )
    if not 0.0 <= thr.value <= 1.0:
        raise BundleError(
            f"{threshold.source}: threshold.value must be a P(spoof) in [0, 1], got {thr.value}"
        )
    return thr


def tensor_to_dict(spec: TensorSpec) -> dict[str, Any]:
    """A tensor spec as the manifest stores it (the inverse of the parser's reading)."""
    out = asdict(spec)
    out["shape"] = list(spec.shape)
    return out


def file_entry_to_dict(entry: FileEntry) -> dict[str, Any]:
    """A file entry as the manifest stores it: empty precision and tensor lists are left out."""
    item: dict[str, Any] = {"sha256": entry.sha256, "bytes": entry.bytes}
    if entry.precision:
        item["precision"] = entry.precision
    if entry.inputs:
        item["inputs"] = [tensor_to_dict(t) for t in entry.inputs]
    if entry.outputs:
        item["outputs"] = [tensor_to_dict(t) for t in entry.outputs]
    return item


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    model = dict(manifest.extra.get("model", {}))
    model.update(
        name=manifest.model_name,
        parameters=manifest.parameters,
        macs_per_window=manifest.macs_per_window,
    )
    files = {name: file_entry_to_dict(entry) for name, entry in manifest.files.items()}
    out = {k: v for k, v in manifest.extra.items() if k != "model"}
    out.update(
        format_version=manifest.format_version,
        model=model,
        audio=asdict(manifest.audio),
        labels=list(manifest.labels),
        score={
            "definition": manifest.score_definition,
            "file_aggregation": manifest.file_aggregation,
        },
        threshold=asdict(manifest.threshold),
        files=files,
        data=dict(manifest.data),
        tools=dict(manifest.tools),
    )
    return out


# --------------------------------------------------------------------------- loading


def load_bundle(root: str | Path, *, verify_files: bool = True) -> Bundle:
    """Read `root/manifest.json`; with verify_files, check every listed file's size and sha256."""
    root = Path(root)
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: expected a bundle directory with {MANIFEST_NAME}, found none")
    if not manifest_path.is_file():
        raise BundleError(
            f"{root}: no {MANIFEST_NAME}; expected a bundle written by `make convert`"
        )
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{manifest_path}: not valid JSON ({error})") from error
    manifest = manifest_from_dict(data, str(manifest_path))
    if verify_files:
        for name, entry in manifest.files.items():
            path = root / name
            if not path.is_file():
                raise BundleError(f"{root}: manifest lists {name}, but the file is missing")
            size = path.stat().st_size
            if size != entry.bytes:
                raise BundleError(
                    f"{path}: size differs from the manifest: expected {entry.bytes} bytes, "
                    f"found {size}"
                )
            digest = sha256_of(path)
            if digest != entry.sha256:
                raise BundleError(
                    f"{path}: sha256 differs from the manifest (file changed after conversion): "
                    f"expected {entry.sha256[:16]}..., found {digest[:16]}..."
                )
    return Bundle(root=root, manifest=manifest)


def check_tensor_details(
    file_name: str,
    declared: Sequence[TensorSpec],
    actual: Sequence[Mapping[str, Any]],
    kind: str,
) -> None:
    """Compare declared specs with an interpreter's get_input/output_details(); raise on any difference."""
    if len(declared) != len(actual):
        raise BundleError(
            f"{file_name}: manifest declares {len(declared)} {kind}(s), the model has {len(actual)}"
        )
    for spec, detail in zip(declared, actual, strict=True):
        shape = tuple(int(d) for d in detail["shape"])
        dtype = np.dtype(detail["dtype"]).name
        scale, zero_point = detail.get("quantization", (0.0, 0))
        problems = []
        if shape != spec.shape:
            problems.append(f"shape: manifest {list(spec.shape)}, model {list(shape)}")
        if dtype != spec.dtype:
            problems.append(f"dtype: manifest {spec.dtype}, model {dtype}")
        if spec.quantized or scale:
            if not np.isclose(float(scale), spec.scale, rtol=1e-6, atol=0.0):
                problems.append(f"scale: manifest {spec.scale}, model {float(scale)}")
            if int(zero_point) != spec.zero_point:
                problems.append(f"zero_point: manifest {spec.zero_point}, model {int(zero_point)}")
        if problems:
            raise BundleError(
                f"{file_name}: {kind} {spec.name!r} does not match the manifest ("
                + "; ".join(problems)
                + ")"
            )
