"""The bundle convert writes is one the device accepts, and a changed one is refused.

Real TFLite files (a tiny fp32 + full-int8 pair built with TensorFlow in seconds), a real
manifest written by convert.bundle_writer, read back by device.bundle and compared with
LiteRT's own tensor details. Every refusal is caused for real: a byte changed on disk, a
field deleted from manifest.json, a shape or dtype declared wrongly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from convert.bundle_writer import (
    build_manifest,
    file_entry,
    tool_versions,
    verify_bundle,
    write_manifest,
)
from convert.litert import tensor_specs
from device.bundle import MANIFEST_NAME, MODEL_FILES, BundleError, load_bundle
from tests.convert_fixtures import write_tiny_tflite_pair

WINDOW_SAMPLES = 400


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_tiny_tflite_pair(tmp_path_factory.mktemp("tiny-tflite"), WINDOW_SAMPLES)


def _write_bundle(root: Path, fp32_source: Path, int8_source: Path) -> Path:
    root.mkdir(parents=True)
    fp32 = root / MODEL_FILES["fp32"]
    int8 = root / MODEL_FILES["int8"]
    shutil.copyfile(fp32_source, fp32)
    shutil.copyfile(int8_source, int8)
    (root / "parity.json").write_text('{"passed": true}\n')
    fp32_in, fp32_out = tensor_specs(fp32)
    int8_in, int8_out = tensor_specs(int8)
    manifest = build_manifest(
        model={"name": "tiny", "parameters": WINDOW_SAMPLES * 16 + 32, "macs_per_window": 6432},
        window_samples=WINDOW_SAMPLES,
        hop_samples=WINDOW_SAMPLES // 2,
        silence_floor_dbfs=-50.0,
        threshold={
            "value": 0.5,
            "method": "eer_dev",
            "eer_dev": 0.1,
            "far_target": 0.01,
            "far_target_value": 0.8,
        },
        files={
            fp32.name: file_entry(fp32, precision="fp32", inputs=fp32_in, outputs=fp32_out),
            int8.name: file_entry(int8, precision="int8", inputs=int8_in, outputs=int8_out),
            "parity.json": file_entry(root / "parity.json"),
        },
        data={"trained_on": "nothing: a test model"},
        tools=tool_versions(),
    )
    write_manifest(root, manifest)
    return root


@pytest.fixture
def bundle(tmp_path: Path, tiny_models: tuple[Path, Path]) -> Path:
    return _write_bundle(tmp_path / "bundle", *tiny_models)


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_written_bundle_is_accepted_by_the_device_loader(bundle: Path) -> None:
    verify_bundle(bundle)
    loaded = load_bundle(bundle)
    spec = loaded.manifest.files[MODEL_FILES["int8"]].inputs[0]
    assert spec.shape == (1, WINDOW_SAMPLES)
    assert spec.dtype == "int8"
    assert spec.quantized
    # a normalized window's full range survives quantization to int8 and back
    window = np.linspace(-1.0, 1.0, WINDOW_SAMPLES, dtype=np.float32)
    assert np.max(np.abs(spec.dequantize(spec.quantize(window)) - window)) <= spec.scale


def test_a_changed_model_file_is_refused(bundle: Path) -> None:
    path = bundle / MODEL_FILES["int8"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model_int8\.tflite: sha256 differs"):
        load_bundle(bundle)


def test_a_grown_file_is_refused_by_size(bundle: Path) -> None:
    with open(bundle / "parity.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(BundleError, match=r"parity\.json: size differs.*expected \d+ bytes"):
        load_bundle(bundle)


def test_a_missing_file_is_refused(bundle: Path) -> None:
    (bundle / MODEL_FILES["fp32"]).unlink()
    with pytest.raises(BundleError, match=r"lists model_fp32\.tflite, but the file is missing"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("path", "named"),
    [
        (("threshold", "far_target"), "threshold.far_target"),
        (("audio", "window_samples"), "audio.window_samples"),
        (("model", "macs_per_window"), "model.macs_per_window"),
        (("files", "model_int8.tflite", "sha256"), "files.model_int8.tflite.sha256"),
        (("score",), "score"),
        (("format_version",), "format_version"),
    ],
)
def test_a_missing_field_is_refused_by_name(
    bundle: Path, path: tuple[str, ...], named: str
) -> None:
    def drop(data: dict) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    _edit_manifest(bundle, drop)
    with pytest.raises(BundleError, match=f"missing field '{named}'"):
        load_bundle(bundle)


def test_a_declared_shape_that_differs_from_the_interpreter_is_refused(bundle: Path) -> None:
    def wrong_shape(data: dict) -> None:
        data["files"][MODEL_FILES["int8"]]["inputs"][0]["shape"] = [1, 2 * WINDOW_SAMPLES]

    _edit_manifest(bundle, wrong_shape)
    load_bundle(bundle)  # the files are intact: only the interpreter check can see this
    with pytest.raises(BundleError, match=r"shape: manifest \[1, 800\], model \[1, 400\]"):
        verify_bundle(bundle)


def test_a_declared_dtype_that_differs_from_the_interpreter_is_refused(bundle: Path) -> None:
    def float_input(data: dict) -> None:
        spec = data["files"][MODEL_FILES["int8"]]["inputs"][0]
        spec.update(dtype="float32", scale=0.0, zero_point=0)

    _edit_manifest(bundle, float_input)
    with pytest.raises(BundleError, match=r"dtype: manifest float32, model int8"):
        verify_bundle(bundle)


def test_the_device_scorer_refuses_a_mismatched_quantization(bundle: Path) -> None:
    from device.runtime import Scorer

    def wrong_scale(data: dict) -> None:
        data["files"][MODEL_FILES["int8"]]["outputs"][0]["scale"] *= 2

    _edit_manifest(bundle, wrong_scale)
    with pytest.raises(
        BundleError, match=r"output .* does not match the manifest \(scale: manifest"
    ):
        Scorer(bundle, "int8")
    Scorer(bundle, "fp32")  # the fp32 file's declaration is untouched and still loads


def test_build_manifest_refuses_an_extra_key_that_shadows_the_contract(
    tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="'threshold' would replace a contract field"):
        build_manifest(
            model={"name": "tiny", "parameters": 1, "macs_per_window": 1},
            window_samples=WINDOW_SAMPLES,
            hop_samples=WINDOW_SAMPLES,
            silence_floor_dbfs=-50.0,
            threshold={
                "value": 0.5,
                "method": "eer_dev",
                "eer_dev": 0.1,
                "far_target": 0.01,
                "far_target_value": 0.8,
            },
            files={},
            data={},
            tools={},
            extra={"threshold": 0.3},
        )
