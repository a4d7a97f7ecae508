"""Score calibration: the fit (temperature / Platt by held-out dev NLL), ECE, the manifest field."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from convert.score_calibration import (
    expected_calibration_error,
    fit_calibration,
    fit_map,
    manifest_entry,
    plot_reliability,
)
from device.bundle import BundleError, load_bundle
from device.runtime import aggregate
from device.scores import (
    Calibration,
    calibrate_threshold,
    margin_from_p_spoof,
    p_spoof,
    p_spoof_from_margin,
)
from tests.device_fixtures import bundle_for as build_fixture_bundle


@pytest.fixture(scope="session")
def fixture_bundle(request: pytest.FixtureRequest) -> Path:
    return build_fixture_bundle(request)


def overconfident(n: int, seed: int, scale: float = 6.0, shift: float = 0.0):
    """Margins 6x too sharp for their labels: true P(spoof) = sigmoid(z), margin = 6 z + shift."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < p_spoof_from_margin(z)).astype(np.int64)
    return scale * z + shift, labels


def test_fit_recovers_the_sharpness_and_halves_ece_on_held_out_files() -> None:
    dev_m, dev_y = overconfident(600, seed=1)
    eval_m, eval_y = overconfident(600, seed=2)
    fit = fit_calibration(dev_m, dev_y)
    c = fit.calibration
    assert c.method == "temperature"  # no offset in the data: the one-parameter map wins
    assert 1 / 6 * 0.8 < c.a < 1 / 6 * 1.2 and c.b == 0.0
    before = expected_calibration_error(p_spoof_from_margin(eval_m), eval_y)
    after = expected_calibration_error(p_spoof_from_margin(c.margin(eval_m)), eval_y)
    assert after <= before / 2
    assert fit.cv_nll["temperature"] < fit.cv_nll["none"]


def test_an_offset_selects_platt() -> None:
    dev_m, dev_y = overconfident(800, seed=3, shift=8.0)
    fit = fit_calibration(dev_m, dev_y)
    assert fit.calibration.method == "platt" and "platt" in fit.reason
    assert fit.cv_nll["platt"] < fit.cv_nll["temperature"]
    assert fit.calibration.b == pytest.approx(-8.0 / 6.0, rel=0.25)


def test_a_perfectly_separated_dev_split_gets_a_finite_slope() -> None:
    margins = np.concatenate([np.linspace(-30, -5, 50), np.linspace(5, 30, 50)])
    labels = np.array([0] * 50 + [1] * 50)
    c = fit_calibration(margins, labels).calibration
    assert math.isfinite(c.a) and c.a > 0 and math.isfinite(c.b)
    p = p_spoof_from_margin(c.margin(margins))
    assert p.min() > 0.0 and p.max() < 1.0  # Platt's targets: never a certain 0 or 1


def test_fit_refuses_one_class() -> None:
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration(np.zeros(4), np.zeros(4, dtype=np.int64))


def test_fit_map_fits_one_method_with_either_target() -> None:
    m, y = overconfident(800, seed=3, shift=8.0)
    platt = fit_map(m, y, "platt")
    assert platt == fit_calibration(m, y).calibration  # what the chooser fits for platt
    temperature = fit_map(m, y, "temperature")
    assert temperature.method == "temperature" and temperature.b == 0.0
    hard = fit_map(m, y, "platt", hard_labels=True)
    # Platt's targets pull P(spoof) off 0 and 1: the fit on 0/1 labels is at least as sharp.
    assert hard.a >= platt.a and hard.b == pytest.approx(-8.0 / 6.0, rel=0.25)
    with pytest.raises(ValueError, match="both classes"):
        fit_map(m, np.ones_like(y), "platt")


def test_ece_of_perfect_and_worst_scores() -> None:
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(labels.astype(float), labels) == 0.0
    assert expected_calibration_error(1.0 - labels, labels) == 1.0


def test_calibration_is_monotone_and_thresholds_map_exactly() -> None:
    c = Calibration("platt", 0.3, -0.7)
    logits = np.array([[0.0, -4.0], [0.0, 0.5], [1.0, 9.0]])
    raw = p_spoof(logits)
    calibrated = p_spoof(logits, c)
    assert np.all(np.diff(raw) > 0) and np.all(np.diff(calibrated) > 0)
    np.testing.assert_array_equal(
        calibrated, p_spoof_from_margin(0.3 * (logits[:, 1] - logits[:, 0]) - 0.7)
    )
    threshold = calibrate_threshold(0.5, c)
    assert (calibrated >= threshold).tolist() == ((logits[:, 1] - logits[:, 0]) >= 0.5).tolist()
    assert margin_from_p_spoof(float(p_spoof_from_margin(2.5))) == pytest.approx(2.5)
    score, decision = aggregate(logits[2:], np.array([False]), threshold, c)
    assert score == float(calibrated[2]) and decision == "spoof"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"method": "platt", "a": -1.0, "b": 0.0}, "calibration.a: expected a finite slope > 0"),
        ({"method": "temperature", "a": 0.5, "b": 1.0}, "0 for temperature"),
        ({"method": "isotonic", "a": 1.0, "b": 0.0}, "calibration.method"),
        ({"method": "platt", "b": 0.0}, "missing field 'calibration.a'"),
    ],
)
def test_a_bad_calibration_is_refused_by_name(
    fixture_bundle, tmp_path: Path, entry: dict, problem: str
) -> None:
    bundle = shutil.copytree(fixture_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["calibration"] = entry
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=problem):
        load_bundle(bundle)


def test_older_bundle_loads_and_says_what_is_missing(fixture_bundle, caplog) -> None:
    from device.runtime import Scorer

    manifest = load_bundle(fixture_bundle).manifest
    assert manifest.calibration is None
    assert [m.split(" ")[0] for m in manifest.missing] == ["calibration", "operating_points"]
    with caplog.at_level("INFO", logger="device.runtime"):
        scorer = Scorer(fixture_bundle, "int8")
    assert scorer.calibration is None
    assert "no calibration (P(spoof) is the uncalibrated softmax" in caplog.text


def test_a_calibrated_bundle_scores_through_the_map(fixture_bundle, tmp_path: Path) -> None:
    from device.runtime import Scorer
    from tests.device_fixtures import noise, write_wav

    bundle = shutil.copytree(fixture_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    c = Calibration("platt", 0.25, -0.5)
    manifest["calibration"] = {"method": c.method, "a": c.a, "b": c.b}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    wav = write_wav(tmp_path / "n.wav", noise(1.0, 16000, 0.2), 16000)
    plain = Scorer(fixture_bundle, "int8").score_file(wav, window_scores=True)
    calibrated = Scorer(bundle, "int8").score_file(wav, window_scores=True)
    assert calibrated["score"] == pytest.approx(
        float(p_spoof_from_margin(c.a * margin_from_p_spoof(plain["score"]) + c.b)), abs=1e-9
    )
    for w_plain, w_cal in zip(plain["window_scores"], calibrated["window_scores"], strict=True):
        expected = p_spoof_from_margin(c.a * margin_from_p_spoof(w_plain["p_spoof"]) + c.b)
        assert w_cal["p_spoof"] == pytest.approx(float(expected), abs=1e-9)


def test_manifest_entry_and_reliability_png(tmp_path: Path) -> None:
    m, y = overconfident(300, seed=5)
    fit = fit_calibration(m, y)
    fit.ece_before["dev"], fit.ece_after["dev"] = 0.2, 0.05
    entry = manifest_entry(fit, "PyTorch file scores")
    assert {"method", "a", "b", "fitted_on", "ece_before", "ece_after"} <= set(entry)
    json.dumps(entry, allow_nan=False)
    path = plot_reliability({"dev": (m, y)}, fit.calibration, tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
