"""The convert stage's pieces, each on real inputs: thresholds, the gate, calibration, ONNX."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from convert.calibrate import draw_calibration_windows
from convert.cli import EXIT_ERROR, main
from convert.errors import CalibrationError, ConversionError, RunDirectoryError
from convert.int8 import configure_full_int8, converter_settings
from convert.parity import GateLimits, Row, choose_thresholds, gate_checks, plan_device_venvs
from convert.tflite import check_calibration_layout
from device.scores import spoof_margin
from tests.convert_fixtures import write_easy_corpus
from train.data import load_dataset
from train.metrics import error_rates


def _logits_from_margins(m: np.ndarray) -> np.ndarray:
    return np.stack([np.zeros_like(m), m], axis=1)


def test_eer_threshold_sits_between_dev_scores_not_on_one() -> None:
    bonafide = np.array([-3.0, -2.0, -1.0, 0.5])
    spoof = np.array([0.0, 1.0, 2.0, 3.0])
    m = np.concatenate([bonafide, spoof])
    labels = np.array([0] * 4 + [1] * 4)
    t = choose_thresholds(_logits_from_margins(m), labels, far_target=0.01)
    assert t.eer == pytest.approx(0.25)
    assert t.eer_margin not in set(m.tolist())
    called_spoof = m >= t.eer_margin
    assert np.mean(called_spoof[labels == 0]) == pytest.approx(0.25)  # dev rates unchanged
    assert np.mean(~called_spoof[labels == 1]) == pytest.approx(0.25)
    assert t.eer_p_spoof == pytest.approx(1 / (1 + np.exp(-t.eer_margin)))


def test_separated_dev_gets_a_threshold_in_the_gap() -> None:
    m = np.array([-5.0, -4.0, -3.0, 3.0, 4.0, 5.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    t = choose_thresholds(_logits_from_margins(m), labels)
    assert t.eer == 0.0
    assert t.eer_margin == pytest.approx(0.0)  # midway between -3 and 3
    assert t.eer_p_spoof == pytest.approx(0.5)


def test_far_threshold_keeps_false_alarms_under_target() -> None:
    rng = np.random.default_rng(0)
    m = np.concatenate([rng.normal(-2, 1, 500), rng.normal(2, 1, 500)])
    labels = np.array([0] * 500 + [1] * 500)
    t = choose_thresholds(_logits_from_margins(m), labels, far_target=0.01)
    false_alarms = np.mean(m[labels == 0] >= t.far_margin)
    assert false_alarms <= 0.01
    assert false_alarms == pytest.approx(t.far_achieved)
    # the lowest such threshold: one dev score lower would exceed the target
    thresholds, rejection, _ = error_rates(m, labels)
    below = thresholds[thresholds < t.far_margin]
    assert rejection[len(below) - 1] > 0.01
    assert t.far_margin > t.eer_margin


def _row(name: str, fmt: str, **metrics: float) -> Row:
    row = Row(name, fmt, "test", "test")
    row.metrics = dict(metrics)
    return row


def test_gate_fails_each_limit_and_skips_missing_runtimes() -> None:
    torch_row = _row("torch", "torch", eer=0.05)
    rows = [
        torch_row,
        _row("onnx", "onnx", max_abs_logit_diff=5e-5),
        _row("fp32", "fp32", max_abs_logit_diff=2e-4),
        _row("int8", "int8", agreement=0.985, eer=0.055),
        _row("int8 @ b", "int8", agreement=0.999, eer=0.065),
        Row(
            "int8 @ c",
            "int8",
            "-",
            "tflite-runtime",
            environment=".venv-tflite",
            status="skipped",
            reason=".venv-tflite not built",
        ),
    ]
    checks = {
        (c.row, c.check.split(" (")[0]): c for c in gate_checks(rows, torch_row, GateLimits())
    }
    assert checks[("onnx", "max |delta logit| per window vs torch")].passed
    assert not checks[("fp32", "max |delta logit| per window vs torch")].passed
    assert not checks[("int8", "decision agreement with torch")].passed
    assert checks[("int8", "|EER - torch EER|")].passed
    assert checks[("int8 @ b", "decision agreement with torch")].passed
    assert not checks[("int8 @ b", "|EER - torch EER|")].passed  # 1.5 points
    skipped = checks[("int8 @ c", "int8 agreement and EER")]
    assert skipped.skipped and skipped.passed and "not built" in skipped.describe()


def test_the_pis_runtime_not_built_fails_the_gate_unless_skipped_by_name(tmp_path: Path) -> None:
    device, tflite = str(tmp_path / ".venv-device"), str(tmp_path / ".venv-tflite")
    plans = {Path(p.venv).name: p for p in plan_device_venvs([device, tflite])}
    assert plans[".venv-tflite"].action == "skip"  # another build: not built is a skip
    assert plans[".venv-tflite"].reason == f"{tflite} not built (make tflite-venv)"
    pi = plans[".venv-device"]
    assert pi.action == "fail"
    assert pi.reason.startswith("the Pi's runtime (ai-edge-litert 2.3.0, numpy 2, as on a Pi)")
    assert f"{device} is not built (no {device}/bin/python)" in pi.reason
    assert "`make device-venv`" in pi.reason and "`--skip-runtime device`" in pi.reason
    assert "SKIP_RUNTIMES=device" in pi.reason
    for name in ("device", ".venv-device"):  # by its kind or its directory
        (pi,) = [p for p in plan_device_venvs([device], skip=[name])]
        assert (pi.action, pi.reason) == (
            "skip",
            f"{device} skipped by name (--skip-runtime device)",
        )
    # Left out of the list without being named: still a failure.
    left_out = [p for p in plan_device_venvs([tflite]) if p.venv == ".venv-device"]
    assert [p.action for p in left_out] == ["fail"]
    assert ".venv-device is not among the device venvs to run" in left_out[0].reason
    assert plan_device_venvs([], skip=["device", "tflite"]) == []
    # Built (a bin/python that is a real interpreter): it runs.
    (tmp_path / ".venv-device" / "bin").mkdir(parents=True)
    (tmp_path / ".venv-device" / "bin" / "python").symlink_to(sys.executable)
    assert [p.action for p in plan_device_venvs([device])] == ["run"]
    with pytest.raises(
        ValueError, match=r"one of tflite \(\.venv-tflite\), device \(\.venv-device\), got 'litert'"
    ):
        plan_device_venvs([device], skip=["litert"])


def test_a_row_that_failed_to_run_fails_the_gate() -> None:
    torch_row = _row("torch", "torch", eer=0.05)
    failed = Row(
        "int8 @ .venv-device",
        "int8",
        "-",
        "ai-edge-litert",
        environment=".venv-device",
        status="failed",
        reason="the Pi's runtime (ai-edge-litert 2.3.0) could not run: .venv-device is not built",
    )
    (check,) = gate_checks([torch_row, failed], torch_row, GateLimits())
    assert not check.passed and not check.skipped
    assert check.describe() == (
        "FAIL     int8 @ .venv-device: int8 agreement and EER (failed: the Pi's runtime "
        "(ai-edge-litert 2.3.0) could not run: .venv-device is not built)"
    )


def test_cli_refuses_an_unknown_runtime_to_skip_before_converting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--run", str(tmp_path / "nope"), "--skip-runtime", "pi"])
    assert status == EXIT_ERROR
    assert capsys.readouterr().err.strip() == (
        "error: --skip-runtime: expected a device runtime named one of tflite (.venv-tflite), "
        "device (.venv-device), got 'pi'"
    )


def test_calibration_layout_is_checked_before_onnx2tf_runs() -> None:
    check_calibration_layout(np.zeros((300, 4000), np.float32), (1, 4000))
    with pytest.raises(ConversionError, match=r"must be \[K, 4000\]"):
        check_calibration_layout(np.zeros((300, 4000, 1), np.float32), (1, 4000))
    with pytest.raises(ConversionError, match=r"shape \[300, 3000\]"):
        check_calibration_layout(np.zeros((300, 3000), np.float32), (1, 4000))
    with pytest.raises(ConversionError, match="must be float32, got float64"):
        check_calibration_layout(np.zeros((300, 4000)), (1, 4000))


@pytest.fixture(scope="module")
def easy_records(tmp_path_factory: pytest.TempPathFactory) -> list:
    corpus = write_easy_corpus(tmp_path_factory.mktemp("easy"))
    return load_dataset("asvspoof2019", corpus).records


def test_calibration_draws_real_normalized_windows_from_every_attack(easy_records: list) -> None:
    calibration = draw_calibration_windows(easy_records, 4000, 500, -50.0, windows=320, seed=3)
    windows = calibration.windows
    assert windows.shape == (320, 4000) and windows.dtype == np.float32
    assert np.allclose(np.max(np.abs(windows), axis=1), 1.0)  # normalized by device.audio
    assert np.allclose(windows.mean(axis=1), 0.0, atol=1e-5)
    assert set(calibration.by_attack) == {"bonafide", "A01", "A02", "A03"}
    assert sum(calibration.by_attack.values()) == 320
    assert calibration.by_label["bonafide"] >= 100 and calibration.by_label["spoof"] >= 100
    again = draw_calibration_windows(easy_records, 4000, 500, -50.0, windows=320, seed=3)
    assert np.array_equal(again.windows, windows)
    other = draw_calibration_windows(easy_records, 4000, 500, -50.0, windows=320, seed=4)
    assert not np.array_equal(other.windows, windows)


def test_calibration_refuses_too_few_windows_or_one_class(easy_records: list) -> None:
    with pytest.raises(CalibrationError, match="at least 300 are required"):
        draw_calibration_windows(easy_records, 4000, 500, -50.0, windows=200)
    # 48 training files of 1 s give 13 windows each at a 4000-sample hop: 624 at most
    with pytest.raises(CalibrationError, match=r"only \d+ non-silent windows in 48 train files"):
        draw_calibration_windows(easy_records, 4000, 4000, -50.0, windows=5000)
    bonafide_only = [r for r in easy_records if r.label == "bonafide"]
    with pytest.raises(CalibrationError, match=r"holds \['bonafide'\]"):
        draw_calibration_windows(bonafide_only, 4000, 500, -50.0)


def test_onnx_export_matches_torch_on_real_windows(easy_records: list, tmp_path: Path) -> None:
    import torch

    from convert.export import check_onnx, compare_onnxruntime, export_onnx
    from train.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            window_samples=4000,
            frontend_channels=8,
            frontend_kernel=33,
            frontend_stride=4,
            block_channels=(16,),
            attention_hidden=8,
        )
    ).eval()
    path = export_onnx(model, 4000, tmp_path / "model.onnx")
    check_onnx(path, 4000)
    with pytest.raises(ConversionError, match=r"shaped \[1, 8000\]"):
        check_onnx(path, 8000)
    windows = draw_calibration_windows(easy_records, 4000, 500, -50.0, windows=300).windows
    result = compare_onnxruntime(model, path, windows[:40])
    assert result.windows == 40
    assert result.passed and result.max_abs_logit_diff <= 1e-4
    assert spoof_margin(np.zeros((1, 2))).tolist() == [0.0]


def test_cli_reports_a_missing_run_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "b")])
    assert status == EXIT_ERROR
    assert "no such run directory" in capsys.readouterr().err


def test_convert_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    from convert.pipeline import ConvertSettings, convert_run

    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not a bundle")
    with pytest.raises(ConversionError, match=r"holds no manifest\.json; refusing to replace"):
        convert_run(ConvertSettings(run_dir=tmp_path / "run", out_dir=out, show_progress=False))
    assert (out / "holiday.jpg").read_bytes() == b"not a bundle"


def test_a_second_conversion_into_the_same_bundle_is_refused(tmp_path: Path) -> None:
    from convert.pipeline import ConvertSettings, _BundleLock, convert_run

    out = tmp_path / "bundles" / "demo"
    running = _BundleLock(out)  # what a conversion in progress holds
    try:
        with pytest.raises(ConversionError, match=r"another conversion is writing this bundle"):
            convert_run(ConvertSettings(run_dir=tmp_path / "run", out_dir=out))
    finally:
        running.release()
    with pytest.raises(RunDirectoryError, match="no such run directory"):
        convert_run(ConvertSettings(run_dir=tmp_path / "run", out_dir=out))
    assert not [p for p in out.parent.iterdir() if ".staging" in p.name]  # cleaned up


def test_full_int8_settings_are_what_the_converter_reads_back() -> None:
    tf = pytest.importorskip("tensorflow")

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x):
            return 2.0 * x

    module = Double()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module
    )
    before = converter_settings(converter)
    assert (before["supported_ops"], before["inference_input_type"]) == (
        ["TFLITE_BUILTINS"],
        "float32",
    )
    configure_full_int8(converter, lambda: iter([[np.ones((1, 4), np.float32)]]))
    assert converter_settings(converter) == {
        "optimizations": ["DEFAULT"],
        "supported_ops": ["TFLITE_BUILTINS_INT8"],
        "inference_input_type": "int8",
        "inference_output_type": "int8",
        "representative_dataset": True,
        "per_channel_weights": True,
        "per_channel_dense_weights": False,
    }
