"""`make convert` end to end on a tiny trained CLAD: the bundle, the gate, onnx2tf's quirks.

A small corpus (tests/convert_fixtures.py) is written, a tiny CLAD trained on it with the
real training loop for a few seconds, and converted by the real pipeline (onnx2tf, LiteRT,
the device venvs when they are built). Then:

- the bundle loads on the device path and lists every file it holds, with its sha256;
- every format agrees with PyTorch within the gate's limits, and the gate passes;
- an int8 model calibrated on near-silent windows (un-normalized quiet audio, the failure
  that per-window normalization in device/audio.py prevents: int8 input steps of about 1/128) is built for real and the gate trips on it;
- onnx2tf exiting 0 without the int8 files is caught and named.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from convert.calibrate import CalibrationSet, draw_calibration_windows
from convert.cli import EXIT_GATE_FAILED, EXIT_PASSED, main
from convert.errors import ConversionError
from convert.parity import device_venv_python
from convert.pipeline import ConvertSettings, convert_run, load_records, load_run
from convert.tflite import run_onnx2tf
from device.bundle import MANIFEST_NAME, MODEL_FILES, load_bundle
from device.runtimes import DEVICE_VENVS, RUNTIMES
from tests.convert_fixtures import train_tiny_run, write_easy_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("convert-e2e")
    corpus = write_easy_corpus(root / "corpus")
    return train_tiny_run(corpus, root / "runs", epochs=12)


@pytest.fixture(scope="module")
def converted(tiny_run: Path) -> tuple[Path, int]:
    out = tiny_run.parent.parent / "bundles" / "tiny"
    status = main(["--run", str(tiny_run), "--out", str(out), "--no-progress"])
    return out, status


def test_convert_writes_a_bundle_the_device_loads(converted: tuple[Path, int]) -> None:
    out, status = converted
    assert status == EXIT_PASSED
    bundle = load_bundle(out)  # sizes and sha256 of every listed file
    manifest = bundle.manifest
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk - {MANIFEST_NAME} == set(manifest.files)  # every file is listed
    for name in (*MODEL_FILES.values(), "parity.json", "parity.md", "plots/det.png"):
        assert name in manifest.files
    int8 = manifest.files[MODEL_FILES["int8"]]
    assert int8.precision == "int8"
    assert [(t.shape, t.dtype) for t in int8.inputs] == [((1, 4000), "int8")]
    assert [(t.shape, t.dtype) for t in int8.outputs] == [((1, 2), "int8")]
    assert manifest.audio.window_samples == 4000
    assert manifest.parameters > 0 and manifest.macs_per_window > 0
    assert manifest.extra["parity"]["passed"] is True
    calibrated = manifest.data["calibrated_on"]
    assert calibrated["windows"] >= 300
    assert set(calibrated["by_attack"]) == {"bonafide", "A01", "A02", "A03"}
    assert set(calibrated["by_label"]) == {"bonafide", "spoof"}
    for tool in ("torch", "onnx2tf", "tensorflow", "ai-edge-litert", "onnxruntime"):
        assert manifest.tools[tool] != "not installed"
    # The int8 settings as read back from the converter that wrote model_int8.tflite.
    assert manifest.tools["int8_quantization"] == {
        "converter": "tf.lite.TFLiteConverter.from_saved_model (onnx2tf's SavedModel)",
        "optimizations": ["DEFAULT"],
        "supported_ops": ["TFLITE_BUILTINS_INT8"],
        "inference_input_type": "int8",
        "inference_output_type": "int8",
        "representative_dataset": True,
        "per_channel_weights": True,
        "per_channel_dense_weights": False,
        "calibration_windows": calibrated["windows"],
        "intermediate_tensor_names_removed_bytes": manifest.tools["int8_quantization"][
            "intermediate_tensor_names_removed_bytes"
        ],
    }
    assert manifest.tools["int8_quantization"]["intermediate_tensor_names_removed_bytes"] > 0


def test_int8_file_is_lean(converted: tuple[Path, int]) -> None:
    """Conv weights per channel, fully connected weights per tensor, only the I/O named."""
    from tensorflow.lite.tools import flatbuffer_utils

    out, _ = converted
    model = flatbuffer_utils.read_model(str(out / MODEL_FILES["int8"]))
    (graph,) = model.subgraphs
    # (scales, output channels) of each weight tensor, by op
    scales_by_op: dict[str, list[tuple[int, int]]] = {"CONV_2D": [], "FULLY_CONNECTED": []}
    for op in graph.operators:
        name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
        if name in scales_by_op:
            weights = graph.tensors[op.inputs[1]]
            scales_by_op[name].append((len(weights.quantization.scale), int(weights.shape[0])))
    conv, dense = scales_by_op["CONV_2D"], scales_by_op["FULLY_CONNECTED"]
    assert conv and all(scales == channels for scales, channels in conv)
    assert any(channels > 1 for _, channels in conv)
    assert dense and all(scales == 1 for scales, _ in dense)
    assert any(channels > 1 for _, channels in dense)
    io = set(graph.inputs) | set(graph.outputs)
    named = {i for i, tensor in enumerate(graph.tensors) if tensor.name}
    assert named == io
    assert model.signatureDefs, "the signature must survive the name stripping"


def test_thresholds_come_from_the_dev_split(converted: tuple[Path, int]) -> None:
    out, _ = converted
    manifest = load_bundle(out).manifest
    threshold = manifest.threshold
    details = manifest.extra["threshold_details"]
    assert threshold.method == "eer_dev"
    assert 0.0 < threshold.value < 1.0
    assert details["far_achieved"] <= threshold.far_target == 0.01
    assert details["files"] == 24  # the corpus' dev split


def test_every_format_agrees_with_torch(converted: tuple[Path, int]) -> None:
    out, _ = converted
    report = json.loads((out / "parity.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert report["passed"] is True
    assert rows["torch"]["files"] == 30
    for name in ("onnx", "fp32"):
        assert rows[name]["max_abs_logit_diff"] <= 1e-4
        assert rows[name]["agreement"] == 1.0
    assert rows["int8"]["agreement"] >= 0.99
    assert abs(rows["int8"]["eer"] - rows["torch"]["eer"]) <= 0.01
    for venv in DEVICE_VENVS.values():
        for model_format in venv.parity_formats:
            row = rows[f"{model_format} @ {venv.name}"]
            assert (row["format"], row["environment"]) == (model_format, venv.name)
            assert row["distribution"] == RUNTIMES[venv.runtime].distribution
            if device_venv_python(venv.name) is not None:  # built: it must have scored
                assert row["status"] == "ok", row
                assert row["runtime"].startswith(row["distribution"] + " ")
                assert row["agreement"] >= 0.99
            elif os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"{venv.name} not built under CI: {row['reason']}")
            elif venv.pi_runtime:
                pytest.fail(f"the gate passed without the Pi's runtime: {row}")
            else:
                assert (row["status"], row["reason"]) == (
                    "skipped",
                    f"{venv.name} not built (make {venv.make_target})",
                )
    fp32_xnnpack = report["xnnpack"]["fp32"]
    assert fp32_xnnpack["partitions"] == 1 and fp32_xnnpack["in_one_piece"]
    int8_xnnpack = report["xnnpack"]["int8"]
    assert int8_xnnpack["delegated_ops"] + len(int8_xnnpack["undelegated"]) == int8_xnnpack["ops"]
    latency = report["latency_1_thread"]
    assert latency["fp32"]["median_ms"] > 0 and latency["int8"]["median_ms"] > 0


def test_the_bundle_carries_a_dev_calibration_the_device_applies(
    converted: tuple[Path, int],
) -> None:
    """calibration {method, a, b, fitted_on, ece_*}: fitted on dev, applied after aggregation."""
    from device.runtime import Scorer
    from device.scores import CALIBRATED_SCORE_DEFINITION, calibrate_threshold, p_spoof_from_margin

    out, _ = converted
    bundle = load_bundle(out)
    manifest = bundle.manifest
    entry = manifest.extra["calibration"]
    assert manifest.calibration is not None and manifest.calibration.method == entry["method"]
    assert entry["fitted_on"]["split"] == "dev" and entry["fitted_on"]["files"] == 24
    assert set(entry["ece_before"]) == set(entry["ece_after"]) == {"dev", "eval"}
    assert entry["method"] in entry["selection"]["reason"]
    assert "plots/reliability.png" in manifest.files
    assert manifest.score_definition == CALIBRATED_SCORE_DEFINITION
    assert not any(m.startswith("calibration") for m in manifest.missing)
    # The threshold is the dev EER margin mapped by the calibration: the same decisions.
    details = manifest.extra["threshold_details"]
    assert manifest.threshold.value == calibrate_threshold(
        details["eer_margin"], manifest.calibration
    )
    scorer = Scorer(bundle, "int8")
    assert scorer.calibration == manifest.calibration
    root = Path(manifest.data["trained_on"]["root"]) / "ASVspoof2019_LA_eval" / "flac"
    path = sorted(root.glob("*.flac"))[0]
    result = scorer.score_file(path, window_scores=True)
    from device.audio import windows_from_file
    from device.scores import file_logits, select_windows, spoof_margin

    windows = windows_from_file(
        path, scorer.window_samples, scorer.hop_samples, scorer.silence_floor_dbfs
    )
    logits = scorer.score_windows(windows.normalized)
    raw_margin = spoof_margin(file_logits(logits[select_windows(windows.silent)]))
    c = manifest.calibration
    assert result["score"] == float(p_spoof_from_margin(c.a * raw_margin + c.b))
    assert (result["score"] >= manifest.threshold.value) == (raw_margin >= details["eer_margin"])


def test_the_device_scores_a_file_with_the_bundle(converted: tuple[Path, int]) -> None:
    from device.runtime import Scorer

    out, _ = converted
    bundle = load_bundle(out)
    root = Path(bundle.manifest.data["trained_on"]["root"])
    protocol = root / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.eval.trl.txt"
    lines = [line.split() for line in protocol.read_text().splitlines()]
    scorer = Scorer(bundle, "int8")
    for speaker_utterance in (lines[0], lines[-1]):
        path = root / "ASVspoof2019_LA_eval" / "flac" / f"{speaker_utterance[1]}.flac"
        result = scorer.score_file(path)
        assert result["decision"] == speaker_utterance[4]


def test_the_gate_trips_on_an_int8_model_calibrated_on_near_silence(
    tiny_run: Path, tmp_path: Path
) -> None:
    run = load_run(tiny_run)
    records, _ = load_records(run.config)
    real = draw_calibration_windows(records, 4000, 500, -50.0)
    near_silent = CalibrationSet(
        windows=(real.windows * 1e-3).astype(np.float32),  # -60 dB: quiet, not normalized
        seed=real.seed,
        split="train",
        files=real.files,
        windows_per_file_max=real.windows_per_file_max,
        source="training windows scaled to -60 dBFS peak (not normalized)",
    )
    out = tmp_path / "bad"
    result = convert_run(
        ConvertSettings(
            run_dir=tiny_run,
            out_dir=out,
            device_venvs=(),
            skip_runtimes=("device",),  # skipped by name: its rows do not fail the gate
            show_progress=False,
        ),
        calibration=near_silent,
    )
    assert result.passed is False
    failed = [check for check in result.report["gate"] if not check["passed"]]
    assert failed and {check["row"] for check in failed} == {"int8"}
    rows = {row["name"]: row for row in result.report["rows"]}
    assert rows["int8"]["agreement"] < 0.99
    assert rows["fp32"]["max_abs_logit_diff"] <= 1e-4  # only the int8 file is bad
    # the report and the bundle are written all the same, and say so
    manifest = load_bundle(out).manifest
    assert manifest.extra["parity"]["passed"] is False
    assert "FAILED" in (out / "parity.md").read_text()


def test_the_gate_fails_when_the_pis_runtime_cannot_run(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "elsewhere" / ".venv-device"  # the Pi's venv, pointed away
    out = tmp_path / "bundle"
    status = main(
        ["--run", str(tiny_run), "--out", str(out), "--no-progress", "--device-venv", str(missing)]
    )
    printed = capsys.readouterr()
    assert status == EXIT_GATE_FAILED
    assert "parity gate FAILED" in printed.err
    report = json.loads((out / "parity.json").read_text())
    row = {r["name"]: r for r in report["rows"]}[f"int8 @ {missing}"]
    assert row["status"] == "failed"
    assert row["reason"].startswith("the Pi's runtime (ai-edge-litert 2.3.0, numpy 2, as on a Pi)")
    assert "`--skip-runtime device`" in row["reason"]
    (failed,) = [c for c in report["gate"] if not c["passed"]]  # every other row passed
    assert failed["row"] == f"int8 @ {missing}"
    assert f"FAIL     int8 @ {missing}: int8 agreement and EER (failed: the Pi's" in printed.out
    assert load_bundle(out).manifest.extra["parity"]["passed"] is False


def test_onnx2tf_exiting_0_without_an_expected_file_is_caught(
    converted: tuple[Path, int], tmp_path: Path
) -> None:
    out, _ = converted
    # onnx2tf's own int8 route (-oiqt) with calibration windows of the wrong length (3000
    # samples for a 4000-sample input): the quantization fails inside onnx2tf, which
    # still exits 0 with the int8 files missing (the quirk docs/toolchain.md describes).
    wrong = tmp_path / "wrong_length.npy"
    np.save(wrong, np.random.default_rng(0).uniform(-1, 1, (300, 3000)).astype(np.float32))
    onnx_path = out / MODEL_FILES["onnx"]
    before = onnx_path.read_bytes()
    with pytest.raises(
        ConversionError, match=r"exited 0 but did not write model_copy_full_integer_quant\.tflite"
    ):
        run_onnx2tf(
            onnx_path,
            tmp_path / "onnx2tf",
            extra_arguments=["-oiqt", "-cind", "waveform", str(wrong), "[0.0]", "[1.0]"],
            expected_suffixes=("_float32.tflite", "_full_integer_quant.tflite"),
            log_path=tmp_path / "onnx2tf.log",
        )
    assert onnx_path.read_bytes() == before  # it worked on a copy
