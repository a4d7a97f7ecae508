"""A small, easy corpus and a tiny trained CLAD for the convert tests.

The corpus is written in the ASVspoof 2019 LA layout (so `train.data.load_dataset` reads it
like real data): bona fide files are harmonic, syllable-modulated tones below 3 kHz; each
spoof system adds what a crude synthesizer leaves behind above them (A01: a 4-7 kHz noise
band, A02: hard clipping, A03: a pulse-train excitation). The classes are easy to tell
apart, so a tiny model trained for seconds gives well-separated scores: a parity gate on
it measures the conversion, not a coin toss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, sosfilt

SAMPLE_RATE = 16000
FILE_SECONDS = 1.0
ATTACKS = ("A01", "A02", "A03")
SPLIT_SIZES = {"train": (24, 8), "dev": (12, 4), "eval": (15, 5)}
"""split -> (bona fide files, files per attack)."""

PROTOCOLS = {
    "train": "ASVspoof2019.LA.cm.train.trn.txt",
    "dev": "ASVspoof2019.LA.cm.dev.trl.txt",
    "eval": "ASVspoof2019.LA.cm.eval.trl.txt",
}
PREFIX = {"train": "T", "dev": "D", "eval": "E"}


def _voice(rng: np.random.Generator, samples: int, pulses: bool = False) -> np.ndarray:
    t = np.arange(samples) / SAMPLE_RATE
    f0 = rng.uniform(90.0, 220.0) * (1.0 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    if pulses:
        harmonics = int(7000 // f0.max())
        weights = np.ones(harmonics)  # a flat pulse-train spectrum up to 7 kHz
    else:
        harmonics = int(3000 // f0.max())
        weights = 1.0 / np.arange(1, harmonics + 1)
    signal = sum(
        w * np.sin(k * phase) for k, w in zip(range(1, harmonics + 1), weights, strict=True)
    )
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(2.5, 5.0) * t + rng.uniform(0, 6.3))
    signal = signal * envelope + 0.01 * rng.standard_normal(samples)
    return signal / np.max(np.abs(signal))


def _utterance(rng: np.random.Generator, attack: str, seconds: float = FILE_SECONDS) -> np.ndarray:
    samples = int(seconds * SAMPLE_RATE)
    signal = _voice(rng, samples, pulses=attack == "A03")
    if attack == "A01":
        sos = butter(6, [4000, 7000], btype="bandpass", fs=SAMPLE_RATE, output="sos")
        band = sosfilt(sos, rng.standard_normal(samples))
        signal = signal + rng.uniform(0.5, 1.0) * band / np.max(np.abs(band))
    elif attack == "A02":
        signal = np.clip(signal * rng.uniform(4.0, 8.0), -1.0, 1.0)
    level = 10 ** (rng.uniform(-20.0, -6.0) / 20.0)  # the level carries no class information
    return (level * signal / np.max(np.abs(signal))).astype(np.float32)


def write_easy_corpus(
    root: Path,
    seed: int = 7,
    sizes: dict[str, tuple[int, int]] | None = None,
    seconds: float = FILE_SECONDS,
) -> Path:
    """Write the corpus under root/LA; return root/LA (what load_dataset takes).

    sizes: split -> (bona fide files, files per attack), SPLIT_SIZES by default.
    """
    la = root / "LA"
    protocols = la / "ASVspoof2019_LA_cm_protocols"
    protocols.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counter = 1000000
    for split, (bonafide, per_attack) in (sizes or SPLIT_SIZES).items():
        audio_dir = la / f"ASVspoof2019_LA_{split}" / "flac"
        audio_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        plan = [("bonafide", "-")] * bonafide + [
            ("spoof", attack) for attack in ATTACKS for _ in range(per_attack)
        ]
        for index, (key, attack) in enumerate(plan):
            counter += 1
            utterance = f"LA_{PREFIX[split]}_{counter}"
            speaker = f"LA_{split[0].upper()}{index % 6:03d}"
            sf.write(audio_dir / f"{utterance}.flac", _utterance(rng, attack, seconds), SAMPLE_RATE)
            lines.append(f"{speaker} {utterance} - {attack} {key}")
        (protocols / PROTOCOLS[split]).write_text("\n".join(lines) + "\n")
    return la


def train_tiny_run(corpus_la: Path, runs_dir: Path, name: str = "tiny", epochs: int = 6) -> Path:
    """Train a tiny CLAD (0.25 s windows) with the real training loop; return the run dir."""
    from train.config import TrainConfig
    from train.model import ModelConfig
    from train.train import train

    config = TrainConfig(
        format="asvspoof2019",
        root=str(corpus_la),
        name=name,
        runs_dir=str(runs_dir),
        model=ModelConfig(
            window_samples=4000,
            frontend_channels=8,
            frontend_kernel=33,
            frontend_stride=4,
            block_channels=(16, 16),
            attention_hidden=8,
            dropout=0.0,
        ),
        epochs=epochs,
        batch_size=8,
        learning_rate=3e-3,
        threads=1,
        seed=0,
    )
    result = train(config, overwrite=True, show_progress=False)
    return result.run_dir


def write_tiny_tflite_pair(directory: Path, window_samples: int = 400) -> tuple[Path, Path]:
    """A real fp32 and full-int8 TFLite pair ([1, window_samples] -> [1, 2]), built with TF.

    Seconds instead of the minute an onnx2tf run takes: for the bundle tests, which need
    real model files and real interpreters, not a trained detector.
    """
    import tensorflow as tf

    from convert.int8 import configure_full_int8

    rng = np.random.default_rng(0)
    w1 = tf.constant(rng.standard_normal((window_samples, 16)).astype(np.float32) * 0.05)
    w2 = tf.constant(rng.standard_normal((16, 2)).astype(np.float32))

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, window_samples], tf.float32)])
        def __call__(self, x):
            return tf.matmul(tf.nn.relu(tf.matmul(x, w1)), w2)

    module = Tiny()
    concrete = module.__call__.get_concrete_function()
    directory.mkdir(parents=True, exist_ok=True)
    fp32 = directory / "tiny_fp32.tflite"
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    fp32.write_bytes(converter.convert())

    def representative():
        for _ in range(50):
            window = rng.standard_normal((1, window_samples)).astype(np.float32)
            yield [window / np.max(np.abs(window))]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    configure_full_int8(converter, representative)
    int8 = directory / "tiny_int8.tflite"
    int8.write_bytes(converter.convert())
    return fp32, int8
