"""Stress grid: how a detector's EER moves under noise, codecs, band limits, rooms and levels.

    python -m train.robustness --run runs/demo [--data data/demo/LA] [--files 240] [--seed 0]
    python -m train.robustness --bundle bundles/demo   # the int8 file through device.runtime

Takes a stratified, seeded sample of the eval split (half bona fide, the spoofs spread over
the attacks), applies every condition to every file (each file and condition with its own
seeded generator), scores the result with the PyTorch checkpoint of a run or with the
bundle's int8 model exactly as the Pi does, and reports the EER and the accuracy at the
model's own threshold per condition, and the EER per attack under each condition. Written
next to what was evaluated: `robustness.json`, `robustness.md`, `robustness_snr.png`,
`robustness_codecs.png`. A condition this machine cannot run (no encoder) is listed as
skipped with the reason.

Conditions: clean; white, pink, babble (other eval speakers mixed) and mains hum with music-like
tones at 20/10/5/0 dB SNR; MP3 32/64/128, Opus 8/16/32, AAC 32/64 kbit/s, Vorbis, G.711
mu-law 8 kHz, G.722, AMR-NB, GSM and codec2 where an encoder exists; telephone band
(300-3400 Hz), 8 kHz resampling, three simulated rooms, quiet (-30 dB), clipped (+12 dB),
packet loss (20% of 20 ms frames dropped).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

from device.audio import SAMPLE_RATE, load_audio, resample, windows_from_signal
from device.scores import file_logits, select_windows, spoof_margin
from train.synth.codecs import Codec, CodecError, roundtrip
from train.synth.cues import equal_error_rate

Transform = Callable[[np.ndarray, np.random.Generator, "Context"], np.ndarray]


@dataclass(frozen=True)
class Context:
    """What some conditions need besides the file: other speakers for babble."""

    babble_pool: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Condition:
    name: str
    group: str  # clean, noise, codec, channel, level
    transform: Transform
    snr_db: float | None = None
    noise: str | None = None


def _at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    speech_power = float(np.mean(signal**2)) or 1e-12
    noise = noise[: signal.size]
    noise_power = float(np.mean(noise**2)) or 1e-12
    return signal + noise * np.sqrt(speech_power / noise_power / 10.0 ** (snr_db / 10.0))


def _pink(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.maximum(np.fft.rfftfreq(num_samples, 1.0 / SAMPLE_RATE), 20.0)
    return np.fft.irfft(spectrum / np.sqrt(freqs), num_samples)


def _babble(num_samples: int, rng: np.random.Generator, context: Context) -> np.ndarray:
    total = np.zeros(num_samples)
    picks = rng.choice(
        len(context.babble_pool), size=min(4, len(context.babble_pool)), replace=False
    )
    for index in picks:
        voice = context.babble_pool[int(index)]
        voice = np.resize(voice, num_samples)  # loop a short file
        total += np.roll(voice, int(rng.integers(0, num_samples))) / (np.std(voice) + 1e-9)
    return total


def _hum_and_music(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum with harmonics under a bed of slowly changing tones (a room with a TV on)."""
    t = np.arange(num_samples) / SAMPLE_RATE
    mains = float(rng.choice([50.0, 60.0]))
    hum = sum(np.sin(2 * np.pi * mains * h * t) / h for h in range(1, 6))
    music = np.zeros(num_samples)
    note_samples = int(0.25 * SAMPLE_RATE)
    for start in range(0, num_samples, note_samples):
        pitch_hz = 220.0 * 2 ** (int(rng.integers(0, 24)) / 12)
        seg = t[start : start + note_samples]
        music[start : start + note_samples] = sum(
            np.sin(2 * np.pi * pitch_hz * k * seg) / k for k in (1, 2, 3)
        )
    return hum + music


def _noise_condition(kind: str, snr_db: float) -> Condition:
    def transform(signal: np.ndarray, rng: np.random.Generator, context: Context) -> np.ndarray:
        if kind == "white":
            noise = rng.standard_normal(signal.size)
        elif kind == "pink":
            noise = _pink(signal.size, rng)
        elif kind == "babble":
            noise = _babble(signal.size, rng, context)
        else:
            noise = _hum_and_music(signal.size, rng)
        return _at_snr(signal, noise, snr_db)

    return Condition(f"{kind} {snr_db:g} dB", "noise", transform, snr_db, kind)


def _codec_condition(name: str, codec: Codec) -> Condition:
    def transform(signal: np.ndarray, _rng: np.random.Generator, _c: Context) -> np.ndarray:
        return roundtrip(signal, SAMPLE_RATE, codec)

    return Condition(name, "codec", transform)


def _codec2_condition() -> Condition:
    def transform(signal: np.ndarray, _rng: np.random.Generator, _c: Context) -> np.ndarray:
        import subprocess
        import tempfile

        pcm = np.clip(resample(signal, SAMPLE_RATE, 8000) * 32767, -32768, 32767)
        with tempfile.TemporaryDirectory() as folder:
            raw, bits, out = (Path(folder) / n for n in ("in.raw", "in.c2", "out.raw"))
            raw.write_bytes(pcm.astype("<i2").tobytes())
            for command in (["c2enc", "1300", raw, bits], ["c2dec", "1300", bits, out]):
                subprocess.run([str(c) for c in command], check=True, capture_output=True)
            decoded = np.frombuffer(out.read_bytes(), dtype="<i2").astype(np.float64) / 32768
        back = resample(decoded, 8000, SAMPLE_RATE).astype(np.float64)
        return np.pad(back, (0, max(0, signal.size - back.size)))[: signal.size]

    return Condition("codec2 1300", "codec", transform)


def _filter_condition(name: str, sos: np.ndarray) -> Condition:
    def transform(signal: np.ndarray, _rng: np.random.Generator, _c: Context) -> np.ndarray:
        return sosfilt(sos, signal)

    return Condition(name, "channel", transform)


def _room(rt60_s: float) -> Condition:
    def transform(signal: np.ndarray, rng: np.random.Generator, _c: Context) -> np.ndarray:
        length = int(rt60_s * SAMPLE_RATE)
        t = np.arange(length) / SAMPLE_RATE
        tail = rng.standard_normal(length) * np.exp(-6.908 * t / rt60_s)
        tail *= np.sqrt(10 ** (-3 / 10) / np.sum(tail**2))  # direct-to-reverberant 3 dB
        rir = np.concatenate([[1.0], np.zeros(int(0.005 * SAMPLE_RATE)), tail])
        return fftconvolve(signal, rir)[: signal.size]

    return Condition(f"room RT60 {rt60_s:g} s", "channel", transform)


def _gain(name: str, gain_db: float) -> Condition:
    def transform(signal: np.ndarray, _rng: np.random.Generator, _c: Context) -> np.ndarray:
        scaled = signal * 10 ** (gain_db / 20)
        return np.round(np.clip(scaled, -1.0, 1.0) * 32767) / 32767  # 16-bit, clipped

    return Condition(name, "level", transform)


def _packet_loss(share: float) -> Condition:
    def transform(signal: np.ndarray, rng: np.random.Generator, _c: Context) -> np.ndarray:
        frame_samples = int(0.02 * SAMPLE_RATE)
        out = signal.copy()
        for start in range(0, out.size, frame_samples):
            if rng.random() < share:
                out[start : start + frame_samples] = 0.0
        return out

    return Condition(f"packet loss {int(share * 100)}%", "channel", transform)


def _resample_8k() -> Condition:
    def transform(signal: np.ndarray, _rng: np.random.Generator, _c: Context) -> np.ndarray:
        narrow = resample(signal, SAMPLE_RATE, 8000)
        return resample(narrow, 8000, SAMPLE_RATE).astype(np.float64)[: signal.size]

    return Condition("8 kHz resampling", "channel", transform)


SNRS_DB = (20.0, 10.0, 5.0, 0.0)
NOISES = ("white", "pink", "babble", "hum+music")


def conditions() -> tuple[list[Condition], list[dict[str, str]]]:
    """Every condition that can run here, and the ones that cannot with the reason."""
    out = [Condition("clean", "clean", lambda s, _r, _c: s)]
    out += [_noise_condition(kind, snr) for kind in NOISES for snr in SNRS_DB]
    codecs = [
        ("MP3 32k", Codec("mp3-32k", "libmp3lame", "mp3float", 16000, 32000, "fltp")),
        ("MP3 64k", Codec("mp3-64k", "libmp3lame", "mp3float", 16000, 64000, "fltp")),
        ("MP3 128k", Codec("mp3-128k", "libmp3lame", "mp3float", 16000, 128000, "fltp")),
        ("Opus 8k", Codec("opus-8k", "libopus", "libopus", 16000, 8000)),
        ("Opus 16k", Codec("opus-16k", "libopus", "libopus", 16000, 16000)),
        ("Opus 32k", Codec("opus-32k", "libopus", "libopus", 16000, 32000)),
        ("AAC 32k", Codec("aac-32k", "aac", "aac", 16000, 32000, "fltp")),
        ("AAC 64k", Codec("aac-64k", "aac", "aac", 16000, 64000, "fltp")),
        ("Vorbis", Codec("vorbis-16k", "sndfile-vorbis", "sndfile-vorbis", 16000)),
        ("G.711 mu-law 8k", Codec("mulaw-8k", "pcm_mulaw", "pcm_mulaw", 8000)),
        ("G.722", Codec("g722", "g722", "g722", 16000, 64000)),
        ("AMR-NB 12.2k", Codec("amr-nb-12k", "libopencore_amrnb", "amrnb", 8000, 12200)),
        ("GSM 8k", Codec("gsm-8k", "libgsm", "libgsm", 8000, 13000)),
    ]
    skipped = []
    probe = np.sin(np.arange(SAMPLE_RATE) / 10.0) * 0.3
    for name, codec in codecs:
        try:
            roundtrip(probe, SAMPLE_RATE, codec)
        except (CodecError, ValueError) as error:
            skipped.append({"condition": name, "reason": f"no working encoder here: {error}"})
            continue
        out.append(_codec_condition(name, codec))
    if shutil.which("c2enc") and shutil.which("c2dec"):
        out.append(_codec2_condition())
    else:
        skipped.append(
            {
                "condition": "codec2 1300",
                "reason": "c2enc/c2dec not found (Debian package codec2)",
            }
        )
    telephone = butter(4, (300.0, 3400.0), "bandpass", fs=SAMPLE_RATE, output="sos")
    out += [
        _filter_condition("telephone band", telephone),
        _resample_8k(),
        *(_room(rt60) for rt60 in (0.3, 0.6, 1.0)),
        _gain("quiet -30 dB", -30.0),
        _gain("clipped +12 dB", 12.0),
        _packet_loss(0.2),
    ]
    return out, skipped


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Model:
    """Windows in, logits out, with the windowing and threshold of what is evaluated."""

    predict: Callable[[np.ndarray], np.ndarray]
    window_samples: int
    hop_samples: int
    silence_floor_dbfs: float
    threshold_margin: float  # spoof when the file margin is at or above it
    description: str


def model_of_run(run: Path) -> Model:
    import torch

    from train.checkpoint import model_from_checkpoint

    network, checkpoint = model_from_checkpoint(run / "best.pt")

    def predict(windows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return network(torch.from_numpy(windows)).numpy()

    return Model(
        predict,
        checkpoint.window_samples,
        checkpoint.hop_samples,
        checkpoint.silence_floor_dbfs,
        float(checkpoint.dev.get("threshold_margin", 0.0)),
        f"PyTorch checkpoint {run / 'best.pt'}",
    )


def model_of_bundle(bundle: Path) -> Model:
    from device.runtime import Scorer
    from device.scores import margin_from_p_spoof

    scorer = Scorer(bundle)
    calibration = getattr(scorer, "calibration", None)
    threshold = margin_from_p_spoof(scorer.threshold)
    if calibration is not None:  # the threshold is a calibrated P(spoof): back to raw margin
        threshold = (threshold - calibration.b) / calibration.a
    return Model(
        scorer.score_windows,
        scorer.window_samples,
        scorer.hop_samples,
        scorer.silence_floor_dbfs,
        float(threshold),
        f"int8 TFLite of {bundle} through device.runtime",
    )


def file_margin(model: Model, signal: np.ndarray) -> float:
    windows = windows_from_signal(
        signal.astype(np.float32), model.window_samples, model.hop_samples, model.silence_floor_dbfs
    )
    keep = select_windows(windows.silent)
    logits = model.predict(windows.normalized[keep])
    return float(spoof_margin(file_logits(logits)[None, :])[0])


# --------------------------------------------------------------------------- the grid


def sample_eval(root: Path, data_format: str, files: int, seed: int) -> list[Any]:
    from train.data import load_dataset

    records = load_dataset(data_format, root, splits=["eval"]).split("eval")
    rng = np.random.default_rng(seed)
    bona = [r for r in records if r.label == "bonafide"]
    spoof = [r for r in records if r.label == "spoof"]
    picked_bona = [
        bona[i] for i in sorted(rng.choice(len(bona), min(files // 2, len(bona)), False))
    ]
    by_attack: dict[str, list[Any]] = {}
    for record in spoof:
        by_attack.setdefault(record.attack or "?", []).append(record)
    per_attack = max(1, (files - len(picked_bona)) // max(1, len(by_attack)))
    picked_spoof = []
    for attack in sorted(by_attack):
        pool = by_attack[attack]
        picked_spoof += [
            pool[i] for i in sorted(rng.choice(len(pool), min(per_attack, len(pool)), False))
        ]
    return picked_bona + picked_spoof


def run_grid(
    model: Model,
    records: list[Any],
    seed: int,
    only: list[str] | None = None,
    front_end: Callable[[np.ndarray], np.ndarray] | None = None,
):
    """EER etc. per condition; ``front_end`` (e.g. noise reduction) runs on every changed
    signal before it is scored."""
    signals = [load_audio(r.path).astype(np.float64) for r in records]
    labels = np.array([r.label == "spoof" for r in records])
    attacks = [r.attack if r.label == "spoof" else "-" for r in records]
    babble_pool = tuple(s for s, is_spoof in zip(signals, labels, strict=True) if not is_spoof)
    context = Context(babble_pool)
    grid, skipped = conditions()
    if only:
        grid = [c for c in grid if c.name in only or c.name == "clean"]
    rows = []
    for c_index, condition in enumerate(grid):
        started = time.perf_counter()
        margins = np.empty(len(records))
        for f_index, signal in enumerate(signals):
            rng = np.random.default_rng(np.random.SeedSequence([seed, c_index, f_index]))
            try:
                changed = condition.transform(signal, rng, context)
                if front_end is not None:
                    changed = front_end(np.asarray(changed, dtype=np.float64))
            except (CodecError, OSError, ValueError) as error:
                skipped.append({"condition": condition.name, "reason": str(error)})
                break
            margins[f_index] = file_margin(model, np.asarray(changed, dtype=np.float64))
        else:
            bona_m, spoof_m = margins[~labels], margins[labels]
            accuracy = float(np.mean((margins >= model.threshold_margin) == labels))
            per_attack = {
                attack: round(equal_error_rate(bona_m, margins[[a == attack for a in attacks]]), 4)
                for attack in sorted(set(attacks) - {"-"})
            }
            rows.append(
                {
                    "condition": condition.name,
                    "group": condition.group,
                    "noise": condition.noise,
                    "snr_db": condition.snr_db,
                    "eer": round(equal_error_rate(bona_m, spoof_m), 4),
                    "accuracy_at_threshold": round(accuracy, 4),
                    "bonafide_called_spoof": round(
                        float(np.mean(bona_m >= model.threshold_margin)), 4
                    ),
                    "eer_per_attack": per_attack,
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
    return rows, skipped


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    clean = next(r["eer"] for r in rows if r["condition"] == "clean")
    stressed = [r for r in rows if r["condition"] != "clean"]
    worst = max(stressed, key=lambda r: r["eer"]) if stressed else rows[0]
    return {
        "clean_eer": clean,
        "mean_eer": round(float(np.mean([r["eer"] for r in rows])), 4),
        "worst_condition": worst["condition"],
        "worst_eer": worst["eer"],
        "worst_over_clean": round(worst["eer"] / clean, 2) if clean > 0 else None,
    }


def compare(
    rows: list[dict[str, Any]], reference: dict[str, Any], max_eer_delta: float
) -> dict[str, Any]:
    """Per condition |EER - reference EER| against the parity gate's int8 EER tolerance."""
    ref = {r["condition"]: r["eer"] for r in reference["conditions"]}
    per_condition = []
    for r in rows:
        if r["condition"] not in ref:
            continue
        delta = round(r["eer"] - ref[r["condition"]], 4)
        per_condition.append(
            {
                "condition": r["condition"],
                "eer": r["eer"],
                "reference_eer": ref[r["condition"]],
                "delta": delta,
                "within": abs(delta) <= max_eer_delta + 1e-9,
            }
        )
    deltas = [abs(c["delta"]) for c in per_condition]
    return {
        "reference": reference.get("evaluated"),
        "max_eer_delta": max_eer_delta,
        "conditions": per_condition,
        "within": sum(c["within"] for c in per_condition),
        "compared": len(per_condition),
        "max_abs_delta": round(max(deltas), 4) if deltas else None,
        "mean_abs_delta": round(float(np.mean(deltas)), 4) if deltas else None,
    }


def format_comparison(comparison: dict[str, Any]) -> str:
    lines = [
        f"Against {comparison['reference']} (tolerance: the parity gate's int8 EER delta, "
        f"{100 * comparison['max_eer_delta']:.1f} points):",
        "",
        "| condition | EER | reference EER | delta (points) | within |",
        "|---|---:|---:|---:|---|",
    ]
    for c in comparison["conditions"]:
        lines.append(
            f"| {c['condition']} | {100 * c['eer']:.1f}% | {100 * c['reference_eer']:.1f}% "
            f"| {100 * c['delta']:+.1f} | {'yes' if c['within'] else 'NO'} |"
        )
    lines.append(
        f"\n{comparison['within']} of {comparison['compared']} conditions within "
        f"{100 * comparison['max_eer_delta']:.1f} points; max |delta| "
        f"{100 * comparison['max_abs_delta']:.1f}, mean |delta| "
        f"{100 * comparison['mean_abs_delta']:.2f} points"
    )
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]], skipped: list[dict[str, str]]) -> str:
    attacks = sorted({a for r in rows for a in r["eer_per_attack"]})
    lines = [
        "| condition | EER | accuracy at threshold | bona fide called spoof | "
        + " | ".join(attacks)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(attacks),
    ]
    for r in rows:
        per = " | ".join(f"{100 * r['eer_per_attack'].get(a, float('nan')):.1f}%" for a in attacks)
        lines.append(
            f"| {r['condition']} | {100 * r['eer']:.1f}% | {100 * r['accuracy_at_threshold']:.1f}% "
            f"| {100 * r['bonafide_called_spoof']:.1f}% | {per} |"
        )
    for s in skipped:
        lines.append(f"| {s['condition']} | skipped: {s['reason']} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out_dir: Path, stem: str = "robustness") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = next(r["eer"] for r in rows if r["condition"] == "clean")
    figure, axes = plt.subplots(figsize=(6, 4))
    for kind in NOISES:
        points = sorted(
            (r["snr_db"], r["eer"]) for r in rows if r["noise"] == kind and r["snr_db"] is not None
        )
        if points:
            axes.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=kind)
    axes.axhline(100 * clean, color="grey", linestyle="--", label="clean")
    axes.set_xlabel("SNR (dB)")
    axes.set_ylabel("EER (%)")
    axes.invert_xaxis()
    axes.set_title("EER under additive noise")
    axes.legend()
    figure.tight_layout()
    snr_png = out_dir / f"{stem}_snr.png"
    figure.savefig(snr_png, dpi=120)
    plt.close(figure)

    others = [r for r in rows if r["group"] in ("codec", "channel", "level", "clean")]
    figure, axes = plt.subplots(figsize=(8, 4))
    axes.bar(range(len(others)), [100 * r["eer"] for r in others], color="tab:blue")
    axes.set_xticks(range(len(others)), [r["condition"] for r in others], rotation=60, ha="right")
    axes.set_ylabel("EER (%)")
    axes.set_title("EER per codec and channel condition")
    figure.tight_layout()
    codec_png = out_dir / f"{stem}_codecs.png"
    figure.savefig(codec_png, dpi=120)
    plt.close(figure)
    return [snr_png, codec_png]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.robustness",
        description="EER of a run or a bundle under noise, codecs, band limits, rooms, levels.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--run", type=Path, help="a training run folder (scores best.pt)")
    target.add_argument("--bundle", type=Path, help="a bundle folder (scores model_int8.tflite)")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("data/demo/LA"),
        help="dataset root (default: data/demo/LA)",
    )
    parser.add_argument(
        "--format", default="asvspoof2019", help="dataset layout (default: asvspoof2019)"
    )
    parser.add_argument(
        "--files",
        type=int,
        default=240,
        help="eval files in the sample, half bona fide (default: 240)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="sample and condition seed (default: 0)"
    )
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="run only these conditions (and clean); default: all",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the reports (default: the --run or --bundle folder)",
    )
    parser.add_argument(
        "--denoise",
        action="store_true",
        help="spectral gating (device.denoise) on every signal before scoring; the reports "
        "are named robustness_denoise* (default: off)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="a robustness.json of the same files and seed (e.g. the PyTorch run's, for a "
        "bundle): per-condition EER deltas against the parity gate's int8 EER tolerance "
        "(default: none)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.files < 4:
        print(f"error: --files must be at least 4, got {args.files}", file=sys.stderr)
        return 2
    try:
        model = model_of_run(args.run) if args.run else model_of_bundle(args.bundle)
        records = sample_eval(args.data, args.format, args.files, args.seed)
        reference = json.loads(args.compare.read_text()) if args.compare else None
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if reference is not None and (
        reference.get("files") != len(records) or reference.get("seed") != args.seed
    ):
        print(
            f"error: {args.compare} was made from {reference.get('files')} files with seed "
            f"{reference.get('seed')}; this grid uses {len(records)} files with seed "
            f"{args.seed}: the EERs are not comparable",
            file=sys.stderr,
        )
        return 2
    front_end = None
    if args.denoise:
        from device.denoise import spectral_gate

        front_end = spectral_gate
    stem = "robustness_denoise" if args.denoise else "robustness"
    started = time.perf_counter()
    rows, skipped = run_grid(model, records, args.seed, args.only, front_end)
    out_dir = args.out or args.run or args.bundle
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "evaluated": model.description,
        "data": str(args.data),
        "files": len(records),
        "seed": args.seed,
        "summary": summarize(rows),
        "conditions": rows,
        "skipped": skipped,
        "front_end": "spectral gating (device.denoise)" if args.denoise else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    table = format_table(rows, skipped)
    if reference is not None:
        from convert.parity import INT8_MAX_EER_DELTA

        report["comparison"] = compare(rows, reference, INT8_MAX_EER_DELTA)
        table += "\n\n" + format_comparison(report["comparison"])
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(table + "\n")
    plots = plot(rows, out_dir, stem)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table)
        s = report["summary"]
        print(
            f"clean EER {100 * s['clean_eer']:.1f}%, mean over the grid {100 * s['mean_eer']:.1f}%, "
            f"worst {s['worst_condition']} {100 * s['worst_eer']:.1f}% "
            f"({s['worst_over_clean']}x clean); {len(records)} files in {report['wall_s']} s"
        )
        print(f"wrote {out_dir / (stem + '.json')}, {stem}.md, " + ", ".join(p.name for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
