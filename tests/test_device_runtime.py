"""device.runtime on a real fp32 + int8 TFLite bundle: load checks, window and file scores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.audio import SAMPLE_RATE, AudioError, frame, normalize_windows, windows_from_file
from device.bundle import BundleError
from device.runtime import Scorer, aggregate, find_interpreter
from device.scores import file_logits, p_spoof, select_windows
from tests.device_fixtures import (
    HOP_SAMPLES,
    REPO,
    WINDOW_SAMPLES,
    device_env,
    json_lines,
    noise,
    run_device,
    scenario,
    silence,
    tone,
    write_wav,
)


@pytest.fixture(scope="module")
def int8_scorer(fixture_bundle: Path) -> Scorer:
    return Scorer(fixture_bundle, "int8")


def _windows(*signals: np.ndarray) -> np.ndarray:
    return normalize_windows(
        np.stack([frame(s, WINDOW_SAMPLES, WINDOW_SAMPLES)[0] for s in signals])
    )


def test_int8_and_fp32_load_and_separate_low_tones_from_noise(fixture_bundle: Path) -> None:
    windows = _windows(
        tone(220.0, 0.25, SAMPLE_RATE),
        noise(0.25, SAMPLE_RATE, 0.2, seed=3),
        tone(6000.0, 0.25, SAMPLE_RATE),
    )
    p = {}
    for model_format in ("int8", "fp32"):
        scorer = Scorer(fixture_bundle, model_format)
        assert scorer.runtime.module == "ai_edge_litert.interpreter"
        logits = scorer.score_windows(windows)
        assert logits.shape == (3, 2) and logits.dtype == np.float32
        p[model_format] = p_spoof(logits)
    assert p["fp32"][0] < 0.01 and p["fp32"][1] > 0.8 and p["fp32"][2] > 0.99
    # Full int8 against fp32 on the same windows: the quantization error of this model.
    np.testing.assert_allclose(p["int8"], p["fp32"], atol=0.02)


def test_score_file_applies_the_manifest_aggregation(int8_scorer: Scorer, tmp_path: Path) -> None:
    path = write_wav(tmp_path / "scene.wav", scenario(44100), 44100)
    result = int8_scorer.score_file(path, window_scores=True)
    windows = windows_from_file(path, WINDOW_SAMPLES, HOP_SAMPLES, -50.0)
    logits = int8_scorer.score_windows(windows.normalized)
    expected = p_spoof(file_logits(logits[select_windows(windows.silent)]))
    assert result["file"] == str(path)
    assert result["score"] == float(expected)  # the device.scores rule, bit for bit
    assert result["decision"] == ("spoof" if result["score"] >= 0.5 else "bonafide")
    assert result["windows"] == len(windows.starts) == len(result["window_scores"])
    assert result["silent_windows"] == int(windows.silent.sum()) > 0
    assert result["duration_s"] == pytest.approx(3.5, abs=1e-4)
    silent_flags = [w["silent"] for w in result["window_scores"]]
    assert silent_flags == windows.silent.tolist()
    np.testing.assert_array_equal([w["p_spoof"] for w in result["window_scores"]], p_spoof(logits))


def test_spoof_file_and_silent_file(int8_scorer: Scorer, tmp_path: Path) -> None:
    spoof = int8_scorer.score_file(write_wav(tmp_path / "n.wav", noise(1.0, 16000, 0.3), 16000))
    assert spoof["decision"] == "spoof" and spoof["score"] > 0.8
    quiet = int8_scorer.score_file(write_wav(tmp_path / "q.wav", silence(1.0, 48000), 48000))
    assert quiet["decision"] == "silence" and quiet["silent_windows"] == quiet["windows"]


def test_aggregate_rule() -> None:
    logits = np.array([[0.0, 4.0], [0.0, -2.0], [0.0, 30.0]])
    score, decision = aggregate(logits, np.array([False, False, True]), 0.5)
    assert score == pytest.approx(1 / (1 + np.exp(-1.0)))  # mean logit 1.0; silent window left out
    assert decision == "spoof"
    assert aggregate(logits, np.array([True, True, True]), 0.5)[1] == "silence"
    with pytest.raises(ValueError, match="one silence flag per window"):
        aggregate(logits, np.array([False]), 0.5)


def test_bad_audio_raises_audio_error(int8_scorer: Scorer, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x10\x00\x00WAVEfmt garbage")
    with pytest.raises(AudioError, match=r"corrupt\.wav"):
        int8_scorer.score_file(corrupt)


def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(root: Path, edit) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_manifest_that_disagrees_with_the_interpreter_is_refused(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    root = _copy_bundle(fixture_bundle, tmp_path / "b")

    def wrong_scale(data: dict) -> None:
        data["files"]["model_int8.tflite"]["inputs"][0]["scale"] *= 2

    _edit_manifest(root, wrong_scale)
    with pytest.raises(BundleError, match=r"model_int8\.tflite: input .*scale"):
        Scorer(root, "int8")
    Scorer(root, "fp32")  # the fp32 entry is intact


def test_tampered_model_and_unsupported_rules_are_refused(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    root = _copy_bundle(fixture_bundle, tmp_path / "tampered")
    model = root / "model_int8.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    with pytest.raises(BundleError, match="sha256 differs"):
        Scorer(root, "int8")

    root = _copy_bundle(fixture_bundle, tmp_path / "rule")
    _edit_manifest(root, lambda d: d["score"].update(file_aggregation="median of windows"))
    with pytest.raises(BundleError, match="file_aggregation"):
        Scorer(root)

    root = _copy_bundle(fixture_bundle, tmp_path / "window")
    _edit_manifest(root, lambda d: d["audio"].update(window_samples=8000))
    with pytest.raises(BundleError, match=r"expected input shape \[1, 8000\]"):
        Scorer(root)


def test_unknown_format_and_threads(fixture_bundle: Path) -> None:
    with pytest.raises(BundleError, match="expected one of"):
        Scorer(fixture_bundle, "onnx")
    with pytest.raises(ValueError, match="num_threads"):
        Scorer(fixture_bundle, num_threads=0)
    scorer = Scorer(fixture_bundle, num_threads=2, threshold=0.7)
    assert scorer.describe()["num_threads"] == 2 and scorer.threshold == 0.7


def test_importing_device_pulls_no_desktop_stack() -> None:
    code = (
        "import sys\n"
        "import device, device.audio, device.bundle, device.runtime, device.stream,"
        " device.sources, device.events, device.api, device.config, device.agent, device.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in"
        " {'torch', 'tensorflow', 'onnx', 'onnxruntime', 'train', 'convert', 'keras',"
        " 'pyaudio', 'ai_edge_litert', 'tflite_runtime'})\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=device_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    # The interpreter and PyAudio are imported only when used.
    assert out.stdout.strip() == "[]"


def test_scoring_pulls_only_the_runtime(fixture_bundle: Path) -> None:
    code = (
        "import sys\n"
        "from device.runtime import Scorer\n"
        f"Scorer({str(fixture_bundle)!r}).score_windows(__import__('numpy').zeros((1, {WINDOW_SAMPLES})))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " {'torch', 'tensorflow', 'onnx', 'onnxruntime', 'train', 'convert', 'keras', 'pyaudio'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=device_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


DEVICE_VENV = REPO / ".venv-device" / "bin" / "python"
TFLITE_VENV = REPO / ".venv-tflite" / "bin" / "python"


@pytest.mark.skipif(not DEVICE_VENV.exists(), reason="no .venv-device (scripts/device-venv.sh)")
def test_no_runtime_at_all_names_both(fixture_bundle: Path) -> None:
    # .venv-device holds LiteRT and no tflite_runtime; hiding LiteRT (sys.modules[...] = None
    # is Python's own way to make an import fail) leaves a machine with neither installed.
    code = (
        "import sys; sys.modules['ai_edge_litert'] = None\n"
        "from device.runtime import Scorer, InterpreterUnavailableError\n"
        f"try:\n    Scorer({str(fixture_bundle)!r})\n"
        "except InterpreterUnavailableError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [str(DEVICE_VENV), "-c", code], cwd=REPO, env=device_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "ai_edge_litert" in out.stdout and "tflite_runtime" in out.stdout
    assert "pip install ai-edge-litert" in out.stdout


@pytest.mark.parametrize(
    ("python", "module"),
    [(DEVICE_VENV, "ai_edge_litert.interpreter"), (TFLITE_VENV, "tflite_runtime.interpreter")],
    ids=["litert-2.3-numpy2", "tflite-runtime-2.14"],
)
def test_device_only_venvs_score_like_the_desktop(
    python: Path, module: str, fixture_bundle: Path, int8_scorer: Scorer, tmp_path: Path
) -> None:
    """The Pi's runtimes (no torch/tensorflow, no pyaudio) give the desktop's scores."""
    if not python.exists():
        pytest.skip(f"no {python.parent.parent.name} (scripts/device-venv.sh)")
    path = write_wav(tmp_path / "scene.wav", scenario(48000), 48000)
    out = run_device(
        ["score", str(path), "--bundle", str(fixture_bundle), "--json", "--windows"],
        python=str(python),
    )
    assert out.returncode == 0, out.stderr.decode()
    (theirs,) = json_lines(out.stdout)
    ours = int8_scorer.score_file(path, window_scores=True)
    p_theirs = [w["p_spoof"] for w in theirs["window_scores"]]
    p_ours = [w["p_spoof"] for w in ours["window_scores"]]
    # The int8 logits are the same on every runtime here; numpy 2's exp (in .venv-device)
    # differs from numpy 1.26's in the last bit, measured at most 1.1e-16 in P(spoof). A
    # 1-LSB int8 difference (docs/toolchain.md: possible between runtimes) would be ~1e-2.
    np.testing.assert_allclose(p_theirs, p_ours, rtol=0, atol=1e-15)
    assert theirs["score"] == pytest.approx(ours["score"], rel=0, abs=1e-15)
    assert theirs["decision"] == ours["decision"]
    probe = subprocess.run(
        [str(python), "-c", "from device.runtime import find_interpreter as f; print(f().module)"],
        cwd=REPO,
        env=device_env(),
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == module


def test_find_interpreter_prefers_litert() -> None:
    runtime = find_interpreter()
    assert runtime.module == "ai_edge_litert.interpreter"
    assert runtime.version
