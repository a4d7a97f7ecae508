"""The stress grid: each transform does what its name says, deterministically, and a tiny
grid runs end to end on a real run and writes its table, JSON and plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.audio import SAMPLE_RATE
from train import robustness

REPO = Path(__file__).resolve().parents[1]


def _speech_like(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return 0.3 * np.sin(2 * np.pi * 150 * t) * (
        1 + np.sin(2 * np.pi * 4 * t)
    ) + 0.01 * rng.standard_normal(t.size)


CONTEXT = robustness.Context(
    babble_pool=(_speech_like(1.0, 1), _speech_like(1.5, 2), _speech_like(0.7, 3))
)
GRID, SKIPPED = robustness.conditions()
BY_NAME = {c.name: c for c in GRID}


@pytest.mark.parametrize("name", [c.name for c in GRID if c.group == "noise"])
def test_noise_is_added_at_the_stated_snr(name: str) -> None:
    condition = BY_NAME[name]
    clean = _speech_like()
    noisy = condition.transform(clean, np.random.default_rng(0), CONTEXT)
    noise = noisy - clean
    measured_db = 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))
    assert measured_db == pytest.approx(condition.snr_db, abs=0.01)


@pytest.mark.parametrize("name", [c.name for c in GRID if c.group != "clean"])
def test_every_condition_changes_the_signal_keeps_its_length_and_is_seeded(name: str) -> None:
    condition = BY_NAME[name]
    clean = _speech_like()
    first = condition.transform(clean, np.random.default_rng(5), CONTEXT)
    again = condition.transform(clean, np.random.default_rng(5), CONTEXT)
    assert first.shape == clean.shape and np.all(np.isfinite(first))
    assert np.array_equal(first, again)
    assert not np.allclose(first, clean, atol=1e-4)


def test_narrowband_conditions_remove_what_lies_above_4_khz() -> None:
    clean = _speech_like() + 0.05 * np.sin(2 * np.pi * 6000 * np.arange(32000) / SAMPLE_RATE)
    for name in ("G.711 mu-law 8k", "AMR-NB 12.2k", "8 kHz resampling", "telephone band"):
        out = BY_NAME[name].transform(clean, np.random.default_rng(0), CONTEXT)
        spectrum = np.abs(np.fft.rfft(out)) ** 2
        freqs = np.fft.rfftfreq(out.size, 1 / SAMPLE_RATE)
        assert spectrum[(freqs > 5500) & (freqs < 6500)].sum() < 1e-3 * spectrum.sum(), name


def test_levels_and_packet_loss_do_what_they_say() -> None:
    clean = _speech_like()
    quiet = BY_NAME["quiet -30 dB"].transform(clean, np.random.default_rng(0), CONTEXT)
    assert 20 * np.log10(np.std(quiet) / np.std(clean)) == pytest.approx(-30, abs=0.2)
    clipped = BY_NAME["clipped +12 dB"].transform(clean, np.random.default_rng(0), CONTEXT)
    assert (
        np.max(np.abs(clipped)) == pytest.approx(1.0) and np.mean(np.abs(clipped) >= 0.999) > 0.05
    )
    lossy = BY_NAME["packet loss 20%"].transform(clean, np.random.default_rng(0), CONTEXT)
    frames = lossy[: lossy.size // 320 * 320].reshape(-1, 320)
    assert 0.05 < np.mean(np.all(frames == 0, axis=1)) < 0.4


def test_a_condition_without_an_encoder_is_listed_as_skipped_with_the_reason() -> None:
    names = {c.name for c in GRID}
    for skipped in SKIPPED:
        assert skipped["condition"] not in names and skipped["reason"]
    assert "GSM 8k" in names | {s["condition"] for s in SKIPPED}


@pytest.mark.slow
def test_a_tiny_grid_runs_end_to_end_on_a_real_run(tmp_path: Path) -> None:
    from tests.convert_fixtures import train_tiny_run, write_easy_corpus

    corpus = write_easy_corpus(tmp_path / "corpus")
    run = train_tiny_run(corpus, tmp_path / "runs", epochs=2)
    command = [sys.executable, "-m", "train.robustness", "--run", str(run), "--data", str(corpus)]
    command += ["--files", "12", "--only", "white 0 dB", "MP3 32k", "room RT60 1 s"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads((run / "robustness.json").read_text())
    assert [r["condition"] for r in report["conditions"]] == [
        "clean",
        "white 0 dB",
        "MP3 32k",
        "room RT60 1 s",
    ]
    for row in report["conditions"]:
        assert 0.0 <= row["eer"] <= 1.0 and row["eer_per_attack"]
    assert (run / "robustness_snr.png").stat().st_size > 1000
    assert (run / "robustness_codecs.png").stat().st_size > 1000
    assert "| white 0 dB |" in (run / "robustness.md").read_text()


def test_comparison_flags_conditions_beyond_the_tolerance() -> None:
    rows = [
        {"condition": "clean", "eer": 0.150},
        {"condition": "white 0 dB", "eer": 0.230},
        {"condition": "MP3 32k", "eer": 0.160},
    ]
    reference = {
        "evaluated": "PyTorch checkpoint runs/x/best.pt",
        "conditions": [
            {"condition": "clean", "eer": 0.142},
            {"condition": "white 0 dB", "eer": 0.250},
        ],
    }
    result = robustness.compare(rows, reference, 0.01)
    assert [c["condition"] for c in result["conditions"]] == ["clean", "white 0 dB"]
    assert [c["within"] for c in result["conditions"]] == [True, False]
    assert result["within"] == 1 and result["compared"] == 2
    assert result["max_abs_delta"] == pytest.approx(0.02)
    text = robustness.format_comparison(result)
    assert "| white 0 dB | 23.0% | 25.0% | -2.0 | NO |" in text
    assert "1 of 2 conditions within 1.0 points" in text


@pytest.mark.slow
def test_out_denoise_and_compare_options_end_to_end(tmp_path: Path) -> None:
    from tests.convert_fixtures import train_tiny_run, write_easy_corpus

    corpus = write_easy_corpus(tmp_path / "corpus")
    run = train_tiny_run(corpus, tmp_path / "runs", epochs=2)
    base = [sys.executable, "-m", "train.robustness", "--run", str(run), "--data", str(corpus)]
    base += ["--files", "12", "--only", "white 5 dB"]
    plain, gated = tmp_path / "plain", tmp_path / "gated"
    for command in (
        [*base, "--out", str(plain)],
        [*base, "--out", str(gated), "--denoise", "--compare", str(plain / "robustness.json")],
    ):
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    assert not (run / "robustness.json").exists()  # --out keeps the run folder untouched
    report = json.loads((gated / "robustness_denoise.json").read_text())
    assert report["front_end"] == "spectral gating (device.denoise)"
    assert [c["condition"] for c in report["comparison"]["conditions"]] == ["clean", "white 5 dB"]
    assert "conditions within 1.0 points" in (gated / "robustness_denoise.md").read_text()
    assert (gated / "robustness_denoise_snr.png").stat().st_size > 1000
    # A reference from another sample is refused, not compared.
    other = [*base, "--files", "8", "--out", str(tmp_path / "x")]
    other += ["--compare", str(plain / "robustness.json")]
    done = subprocess.run(other, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "not comparable" in done.stderr
