"""x86 against emulated Cortex-A53 / A72 / A76: the device runtime gives the same answers.

Run by `make test-arm` (scripts/test-arm.sh) after scripts/arm/build-env.sh has built the
emulated environments and scripts/device-venv.sh the x86 ones. Two checks:

1. runtime (always): scripts/arm/probe.py in every environment, on audio files this script
   writes (8 / 16 / 22.05 / 44.1 / 48 kHz; WAV int16 / 24-bit / float, FLAC, FLAC in a .wav,
   OGG Vorbis, MP3; mono and stereo; a short and a mostly silent one). It compares the front
   end (decoded samples, 16 kHz signal, normalized windows) bit for bit, and the raw outputs of
   a tiny CNN (scripts/arm/tiny_model.py, fp32 and full int8) through each runtime's default
   (XNNPACK) and plain kernels, and of the bundle's int8 model on the default path.
2. cli (once the device CLI and a bundle exist): `python -m device score FILE... --json` for
   every environment x format, and `python -m device listen --source stdin` fed with raw PCM,
   compared per file and per window with the same command on x86.

Every emulated result is compared with x86 on the same runtime. The JSON report holds every
row; the table printed at the end is the summary. Exits 1 when a decision differs (an int8
model window whose raw outputs are within INT8_LSB_TOLERANCE of x86's is a tie, reported and
allowed: see decision_flips), the WAV/FLAC front end is not bit-exact, OGG/MP3 decoding differs
by more than 1e-5, full int8 on LiteRT's default path differs by more than INT8_LSB_TOLERANCE,
or a run fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
CPUS = ("cortex-a53", "cortex-a72", "cortex-a76")
"""Pi Zero 2 W and Pi 3 (Cortex-A53), Pi 4 (A72), Pi 5 (A76)."""
RUNTIMES = ("litert", "tflite")
FORMATS = ("int8", "fp32")
RUN_TIMEOUT_S = 900
PROBE_WINDOW_SAMPLES = 16000
PROBE_HOP_SAMPLES = 8000


class CompareError(RuntimeError):
    """An environment that could not run, with the command and what it printed."""


@dataclass(frozen=True)
class Env:
    """One place the device runtime runs: x86 natively, or a CPU model under qemu."""

    machine: str  # "x86_64" | "cortex-a53" | "cortex-a72" | "cortex-a76"
    runtime: str  # "litert" | "tflite"
    python: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.machine}/{self.runtime}"

    @property
    def emulated(self) -> bool:
        return self.machine != "x86_64"


def environments(cache: Path, cpus: tuple[str, ...]) -> list[Env]:
    envs = [
        Env("x86_64", "litert", (str(REPO / ".venv-device/bin/python"),)),
        Env("x86_64", "tflite", (str(REPO / ".venv-tflite/bin/python"),)),
    ]
    for cpu in cpus:
        for runtime in RUNTIMES:
            envs.append(Env(cpu, runtime, (str(cache / "bin" / f"python-{cpu}-{runtime}"),)))
    for env in envs:
        if not Path(env.python[0]).exists():
            raise CompareError(
                f"{env.name}: expected an interpreter at {env.python[0]}, found none "
                "(run scripts/device-venv.sh and scripts/arm/build-env.sh first)"
            )
    return envs


# --------------------------------------------------------------------------- test audio


def speech_like(rate: int, seconds: float, seed: int) -> np.ndarray:
    """A voiced, syllable-paced harmonic signal with a little noise: (frames,) float64."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    f0_hz = 110.0 + 25.0 * seed + 20.0 * np.sin(2 * np.pi * 0.8 * t)
    phase = 2 * np.pi * np.cumsum(f0_hz) / rate
    voiced = np.zeros_like(t)
    for k in range(1, 30):
        if k * f0_hz.max() > 0.45 * rate:
            break
        voiced += np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k
    envelope = np.abs(np.sin(2 * np.pi * 2.5 * t)) ** 0.6
    signal = envelope * voiced + 0.02 * rng.standard_normal(t.size)
    return 0.45 * signal / np.max(np.abs(signal))


def stereo(mono: np.ndarray, rate: int) -> np.ndarray:
    """A second channel: the first delayed by 1 ms, quieter, with its own noise."""
    delay = rate // 1000
    right = 0.7 * np.concatenate([np.zeros(delay), mono[:-delay]])
    right += 0.005 * np.random.default_rng(99).standard_normal(mono.size)
    return np.stack([mono, right], axis=1)


# name, sample rate, channels, seconds, soundfile format, subtype
AUDIO_SET = (
    ("wav_pcm16_16k_mono.wav", 16000, 1, 2.3, "WAV", "PCM_16"),
    ("wav_pcm16_8k_mono.wav", 8000, 1, 2.1, "WAV", "PCM_16"),
    ("wav_float_48k_stereo.wav", 48000, 2, 2.2, "WAV", "FLOAT"),
    ("wav_pcm24_44k1_mono.wav", 44100, 1, 1.9, "WAV", "PCM_24"),
    ("flac_22k05_mono.flac", 22050, 1, 2.4, "FLAC", "PCM_16"),
    ("flac_in_wav_44k1_stereo.wav", 44100, 2, 2.0, "FLAC", "PCM_16"),
    ("ogg_vorbis_48k_mono.ogg", 48000, 1, 2.2, "OGG", "VORBIS"),
    ("mp3_44k1_stereo.mp3", 44100, 2, 2.1, "MP3", "MPEG_LAYER_III"),
    ("mp3_22k05_mono.mp3", 22050, 1, 1.8, "MP3", "MPEG_LAYER_III"),
    ("short_0s6_48k_mono.wav", 48000, 1, 0.6, "WAV", "PCM_16"),
    ("mostly_silent_16k_mono.flac", 16000, 1, 2.0, "FLAC", "PCM_16"),
)


def write_test_audio(directory: Path) -> list[Path]:
    """The fixed audio set (the same samples every run for the lossless files)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, (name, rate, channels, seconds, fmt, subtype) in enumerate(AUDIO_SET):
        mono = speech_like(rate, seconds, seed)
        if name.startswith("mostly_silent"):
            mono[int(0.4 * rate) :] *= 1e-5  # below the silence floor after 0.4 s
        data = stereo(mono, rate) if channels == 2 else mono
        path = directory / name
        sf.write(path, data, rate, format=fmt, subtype=subtype)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class PcmStream:
    path: Path
    sample_rate: int
    channels: int


def write_stdin_pcm(directory: Path) -> list[PcmStream]:
    """Raw S16_LE streams for the stdin source: speech-like, a pause, noise, speech-like again."""
    streams = []
    for rate, channels in ((48000, 2), (44100, 1)):
        rng = np.random.default_rng(rate)
        parts = [
            speech_like(rate, 1.7, 1),
            np.zeros(int(0.9 * rate)),
            0.3 * rng.standard_normal(int(1.1 * rate)).clip(-3, 3) / 3,
            speech_like(rate, 1.3, 2),
        ]
        mono = np.concatenate(parts)
        data = stereo(mono, rate) if channels == 2 else mono[:, None]
        pcm = np.clip(np.round(data * 32767), -32768, 32767).astype("<i2")
        path = directory / f"stdin_{rate}hz_{channels}ch.s16le"
        path.write_bytes(pcm.tobytes())
        streams.append(PcmStream(path, rate, channels))
    return streams


# --------------------------------------------------------------------------- running


def run(
    env: Env,
    args: list[str],
    stdin_path: Path | None = None,
    ok_returncodes: tuple[int, ...] = (0,),
) -> tuple[str, float]:
    """Run `python ARGS` in an environment; stdout and the wall time. Raises on failure.

    `score` exits 1 when some files failed (the harness's set holds files that must fail:
    too short, broken); their error lines are compared with x86 like the scores."""
    command = [*env.python, *args]
    # Only the environment's own packages: nothing from the desktop venv through PYTHONPATH.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    start_s = time.monotonic()
    with open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as stdin:
        completed = subprocess.run(
            command,
            stdin=stdin,
            capture_output=True,
            text=True,
            cwd=REPO,
            env=clean,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    wall_s = time.monotonic() - start_s
    if completed.returncode not in ok_returncodes:
        raise CompareError(
            f"{env.name}: `{' '.join(command)}` exited {completed.returncode}:\n"
            f"{completed.stderr[-3000:]}"
        )
    return completed.stdout, wall_s


def run_all(
    tasks: list[tuple[str, Callable[[], Any]]], jobs: int, timings_s: dict[str, float]
) -> dict[str, Any]:
    """Run named tasks on `jobs` threads (each starts a subprocess); name -> result or error.

    Tasks start in the order given: put the slow (emulated) ones first.
    """
    results: dict[str, Any] = {}

    def one(name: str, task: Callable[[], Any]) -> None:
        start_s = time.monotonic()
        try:
            results[name] = task()
        except (CompareError, subprocess.TimeoutExpired, OSError, ValueError) as error:
            results[name] = CompareError(str(error))
        timings_s[name] = round(time.monotonic() - start_s, 1)
        state = "FAILED" if isinstance(results[name], Exception) else "done"
        print(f"  {name}: {state} in {timings_s[name]} s", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(one, name, task) for name, task in tasks]:
            future.result()
    return results


def ensure_tiny_models(cache: Path, host_python: str) -> dict[str, Path]:
    """Build the tiny fp32/int8 models once per version of tiny_model.py (tensorflow, x86)."""
    script = REPO / "scripts/arm/tiny_model.py"

    helper = REPO / "convert/int8.py"  # the int8 settings the script imports
    key = hashlib.sha256(script.read_bytes() + helper.read_bytes()).hexdigest()[:16]
    directory = cache / "tiny" / key
    models = {
        "tiny:fp32": directory / "tiny_fp32.tflite",
        "tiny:int8": directory / "tiny_int8.tflite",
    }
    if not all(p.exists() for p in models.values()):
        completed = subprocess.run(
            [host_python, str(script), "--out", str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0 or not all(p.exists() for p in models.values()):
            raise CompareError(
                f"building the tiny models with {host_python} failed:\n{completed.stderr[-3000:]}"
            )
    return models


# --------------------------------------------------------------------------- comparing


def max_abs_diff(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


LOSSY_CODECS = (".ogg", ".mp3")
"""Decoded with float arithmetic inside libsndfile's codecs (libvorbis, mpg123): their last bits
depend on the CPU's instructions (seen: up to 5e-7 of full scale, a few float32 steps).
WAV and FLAC decode with integer arithmetic and must be bit-exact."""

LOSSY_DECODE_LIMIT = 1e-5
"""Largest |difference| of decoded lossy audio accepted between CPUs: -100 dBFS, 20x above the
codecs' float rounding and far below the int8 model input's step (1/128); a decoder that is
wrong rather than rounded differently lands far above it."""

INT8_LSB_TOLERANCE = 2
"""Raw int8 outputs of LiteRT's default path may differ from x86 by this many steps of the
output scale; every decision must still be equal. Measured: 1 LSB on the demo bundle, 2 LSB in
2 of 332 outputs of the convert tests' tiny CLAD, the same on Cortex-A53, A72 and A76 (an x86
vs Arm rounding difference inside an int8 kernel). Bit-exactness is reported, not required."""


def stage_diffs(ours: Path, ref: Path, name: str) -> dict[str, float]:
    """Max |difference| of each front-end stage of one file, from the probes' .npz files."""
    with np.load(ours) as mine, np.load(ref) as reference:
        return {
            stage: max_abs_diff(mine[f"{name}:{stage}"], reference[f"{name}:{stage}"])
            if mine[f"{name}:{stage}"].shape == reference[f"{name}:{stage}"].shape
            else float("inf")
            for stage in ("decoded", "signal", "windows")
        }


def compare_front_end(env: Env, ours: dict[str, Any], ref: dict[str, Any]) -> list[dict[str, Any]]:
    """Two rows, lossless and lossy files: bit-exact or not, and the largest difference."""
    rows = []
    for kind in ("lossless", "lossy"):
        names = [n for n in ref["audio"] if (Path(n).suffix in LOSSY_CODECS) == (kind == "lossy")]
        mismatches, diffs, silent_equal = [], {"decoded": 0.0, "signal": 0.0, "windows": 0.0}, True
        for name in names:
            mine, reference = ours["audio"].get(name, {}), ref["audio"][name]
            silent_equal &= mine.get("silent") == reference["silent"]
            if any(
                mine.get(s) != reference[s]
                for s in ("decoded_sha256", "signal_sha256", "windows_sha256")
            ):
                found = stage_diffs(Path(ours["npz"]), Path(ref["npz"]), name)
                mismatches.append({"file": name, **found})
                diffs = {s: max(diffs[s], found[s]) for s in diffs}
        rows.append(
            {
                "check": f"front end, {kind}",
                "cpu": env.machine,
                "runtime": env.runtime,
                "files": len(names),
                "bit_exact": not mismatches,
                "silence_flags_equal": silent_equal,
                "max_decoded_diff": diffs["decoded"],
                "max_signal_diff": diffs["signal"],
                "max_window_diff": diffs["windows"],
                "mismatches": mismatches,
            }
        )
    return rows


def compare_probes(env: Env, ours: dict[str, Any], ref: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows: the front end (lossless, lossy), one per model format x interpreter variant."""
    rows = compare_front_end(env, ours, ref)
    for model_key, variants in ref["models"].items():
        model, _, model_format = model_key.partition(":")
        for variant, reference in variants.items():
            mine = ours["models"].get(model_key, {}).get(variant, {})
            row: dict[str, Any] = {
                "check": f"{model} model",
                "cpu": env.machine,
                "runtime": env.runtime,
                "format": model_format,
                "variant": variant,
            }
            if "error" in reference or "error" in mine:
                row.update(
                    same_error=reference.get("error") == mine.get("error"),
                    error=mine.get("error") or reference.get("error"),
                    reference_error=reference.get("error"),
                )
            else:
                p_ref, p_ours = reference["p_spoof"], mine["p_spoof"]
                flips = decision_flips(model_format, mine, reference)
                row.update(
                    windows=len(p_ref),
                    bit_exact=mine["raw_outputs"] == reference["raw_outputs"],
                    max_raw_diff=max_abs_diff(mine["raw_outputs"], reference["raw_outputs"]),
                    max_p_spoof_diff=max_abs_diff(p_ours, p_ref),
                    decisions_equal=not flips,
                    decision_flips=flips,
                    emulated_ms_per_window=round(mine["ms_per_window"], 2),
                )
            rows.append(row)
    return rows


def decision_flips(
    model_format: str, mine: dict[str, Any], reference: dict[str, Any]
) -> list[dict[str, Any]]:
    """Windows whose decision (P(spoof) >= 0.5) differs from x86, each marked whether a tie.

    A tie: an int8 window whose two raw outputs are each within INT8_LSB_TOLERANCE of x86's.
    Such a window sits within 2 x INT8_LSB_TOLERANCE steps of the decision boundary on x86
    (seen: logits [-10, -10] on x86, [-9, -10] under tflite-runtime on Arm, P(spoof) 0.5 vs
    0.4925), so the tolerated rounding alone decides it; the tolerance on raw outputs already
    says such a difference is allowed. Every other flip fails the run, and fp32 has no ties.
    """
    flipped: list[dict[str, Any]] = []
    pairs = zip(mine["p_spoof"], reference["p_spoof"], strict=True)
    for index, (p_ours, p_ref) in enumerate(pairs):
        if (p_ours >= 0.5) == (p_ref >= 0.5):
            continue
        raw_ours, raw_ref = mine["raw_outputs"][index], reference["raw_outputs"][index]
        tie = model_format == "int8" and max_abs_diff(raw_ours, raw_ref) <= INT8_LSB_TOLERANCE
        flipped.append(
            {
                "window": index,
                "raw": raw_ours,
                "x86_raw": raw_ref,
                "p_spoof": p_ours,
                "x86_p_spoof": p_ref,
                "tie": tie,
            }
        )
    return flipped


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def compare_scores(
    env: Env, model_format: str, ours: list[dict[str, Any]], ref: list[dict[str, Any]]
) -> dict[str, Any]:
    by_file_ref = {Path(r["file"]).name: r for r in ref if "file" in r}
    by_file = {Path(r["file"]).name: r for r in ours if "file" in r}
    decisions_equal, errors_equal, score_diffs, window_diffs = True, True, [], []
    for name, reference in by_file_ref.items():
        mine = by_file.get(name, {"error": "missing from the output"})
        if ("error" in reference) or ("error" in mine):
            errors_equal &= reference.get("error") == mine.get("error")
            continue
        decisions_equal &= reference["decision"] == mine["decision"]
        decisions_equal &= reference["windows"] == mine["windows"]
        score_diffs.append(abs(float(reference["score"]) - float(mine["score"])))
        for w_ref, w_mine in zip(
            reference.get("window_scores", []), mine.get("window_scores", []), strict=False
        ):
            window_diffs.append(abs(float(w_ref["p_spoof"]) - float(w_mine["p_spoof"])))
    return {
        "check": "clad-agent score",
        "cpu": env.machine,
        "runtime": env.runtime,
        "format": model_format,
        "files": len(by_file_ref),
        "errors": sum("error" in r for r in by_file_ref.values()),
        "errors_equal": errors_equal and set(by_file) == set(by_file_ref),
        "decisions_equal": decisions_equal,
        "bit_exact": not any(score_diffs) and not any(window_diffs),
        "max_p_spoof_diff": max(score_diffs, default=0.0),
        "max_window_p_spoof_diff": max(window_diffs, default=0.0) if window_diffs else None,
    }


WINDOW_EVENT_TYPES = ("window", "decision")
"""Events written once per window (a decision event replaces the window's window event);
heartbeats depend on the clock, so they are left out."""


def window_events(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-window events of `listen --json --every-window`, in window order."""
    events = [r for r in records if r.get("type") in WINDOW_EVENT_TYPES and "p_spoof" in r]
    return sorted(events, key=lambda r: int(r.get("window", 0)))


def compare_listen(
    env: Env,
    model_format: str,
    stream: PcmStream,
    ours: list[dict[str, Any]],
    ref: list[dict[str, Any]],
) -> dict[str, Any]:
    mine, reference = window_events(ours), window_events(ref)
    diffs = [
        abs(float(a["p_spoof"]) - float(b["p_spoof"]))
        for a, b in zip(mine, reference, strict=False)
    ]

    def sequence(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (e.get("window"), e.get("type"), e.get("decision"), e.get("silent")) for e in events
        ]

    decisions = sequence(mine) == sequence(reference)
    return {
        "check": "clad-agent listen",
        "cpu": env.machine,
        "runtime": env.runtime,
        "format": model_format,
        "stream": f"{stream.sample_rate} Hz, {stream.channels} ch",
        "windows": len(reference),
        "windows_equal": len(mine) == len(reference) and len(reference) > 0,
        "decisions_equal": decisions,
        "bit_exact": len(mine) == len(reference) and not any(diffs),
        "max_p_spoof_diff": max(diffs, default=0.0),
    }


# --------------------------------------------------------------------------- the checks


def check_runtime(
    envs: list[Env],
    audio_paths: list[Path],
    models: dict[str, Path],
    out: Path,
    jobs: int,
    timings_s: dict[str, float],
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    probe = str(REPO / "scripts/arm/probe.py")
    probe_dir = out / "probe"
    probe_dir.mkdir(parents=True, exist_ok=True)

    def task(env: Env) -> Callable[[], Any]:
        target = probe_dir / f"{env.machine}-{env.runtime}.json"
        args = [probe, "--out", str(target), "--audio", *map(str, audio_paths)]
        args += ["--window-samples", str(PROBE_WINDOW_SAMPLES)]
        args += ["--hop-samples", str(PROBE_HOP_SAMPLES)]
        for name, path in models.items():
            # The bundle's models run as the device runs them (default path) only: under
            # emulation they cost far more than the tiny model, which covers the plain kernels.
            option = "--model-default" if name.startswith("bundle:") else "--model"
            args += [option, f"{name}={path}"]

        def go() -> dict[str, Any]:
            run(env, args)
            result = json.loads(target.read_text())
            result["npz"] = str(target.with_suffix(".npz"))
            return result

        return go

    ordered = sorted(envs, key=lambda env: not env.emulated)
    tasks = [(f"probe {env.name}", task(env)) for env in ordered]
    results = {
        name.removeprefix("probe "): result
        for name, result in run_all(tasks, jobs, timings_s).items()
    }
    rows: list[dict[str, Any]] = []
    failures = [f"{name}: {r}" for name, r in results.items() if isinstance(r, Exception)]
    refs = {env.runtime: results.get(f"x86_64/{env.runtime}") for env in envs}
    for env in envs:
        result = results[env.name]
        ref = refs[env.runtime]
        if not env.emulated or isinstance(result, Exception) or isinstance(ref, Exception):
            continue
        rows += compare_probes(env, result, ref)
    # Across runtimes on x86: informative (the two runtimes' kernels are not the same code).
    x86_litert, x86_tflite = results.get("x86_64/litert"), results.get("x86_64/tflite")
    if isinstance(x86_litert, dict) and isinstance(x86_tflite, dict):
        for row in compare_probes(Env("x86_64", "tflite", ()), x86_tflite, x86_litert):
            row["runtime"] = "tflite vs litert"
            rows.append(row)
    versions = {
        name: {k: r[k] for k in ("machine", "python", "numpy", "scipy", "libsndfile", "runtime")}
        for name, r in results.items()
        if isinstance(r, dict)
    }
    return rows, versions, failures


def cli_help(env: Env) -> tuple[str, str] | str:
    """(score --help, listen --help) when `python -m device` runs here; else why not."""
    if not (REPO / "device/__main__.py").exists():
        return "device/__main__.py does not exist yet"
    try:
        score_help, _ = run(env, ["-m", "device", "score", "--help"])
        listen_help, _ = run(env, ["-m", "device", "listen", "--help"])
    except CompareError as error:
        return f"`python -m device ... --help` fails: {error}"
    if "--json" not in score_help or "--json" not in listen_help:
        return "`python -m device score/listen` has no --json option"
    return score_help, listen_help


def check_cli(
    envs: list[Env],
    bundle: Path,
    audio_paths: list[Path],
    streams: list[PcmStream],
    helps: tuple[str, str],
    jobs: int,
    out: Path,
    timings_s: dict[str, float],
) -> tuple[list[dict[str, Any]], list[str]]:
    """score on every file and listen on one stdin stream per format, in every environment."""
    score_extra = ["--windows"] if "--windows" in helps[0] else []
    listen_extra = ["--every-window"] if "--every-window" in helps[1] else []
    raw_dir = out / "cli"
    raw_dir.mkdir(parents=True, exist_ok=True)
    # One stream per format keeps the emulated runs few; each stream still runs everywhere.
    stream_of = dict(zip(FORMATS, streams, strict=True))

    def score_task(env: Env, model_format: str) -> Callable[[], Any]:
        args = ["-m", "device", "score", *map(str, audio_paths), "--bundle", str(bundle)]
        args += ["--model", model_format, "--json", *score_extra]

        def go() -> list[dict[str, Any]]:
            stdout, _ = run(env, args, ok_returncodes=(0, 1))
            (raw_dir / f"score-{env.machine}-{env.runtime}-{model_format}.jsonl").write_text(stdout)
            return parse_json_lines(stdout)

        return go

    def listen_task(env: Env, model_format: str) -> Callable[[], Any]:
        stream = stream_of[model_format]
        args = ["-m", "device", "listen", "--bundle", str(bundle), "--source", "stdin"]
        args += ["--rate", str(stream.sample_rate), "--channels", str(stream.channels)]
        args += ["--model", model_format, "--json", *listen_extra]

        def go() -> list[dict[str, Any]]:
            stdout, _ = run(env, args, stdin_path=stream.path)
            name = f"listen-{env.machine}-{env.runtime}-{model_format}.jsonl"
            (raw_dir / name).write_text(stdout)
            return parse_json_lines(stdout)

        return go

    tasks: list[tuple[str, Callable[[], Any]]] = []
    for env in sorted(envs, key=lambda env: not env.emulated):
        for model_format in FORMATS:
            tasks.append((f"score {env.name} {model_format}", score_task(env, model_format)))
            tasks.append((f"listen {env.name} {model_format}", listen_task(env, model_format)))
    results = run_all(tasks, jobs, timings_s)
    failures = [f"{name}: {r}" for name, r in results.items() if isinstance(r, Exception)]
    rows: list[dict[str, Any]] = []
    for env in envs:
        if not env.emulated:
            continue
        for model_format in FORMATS:
            mine = results[f"score {env.name} {model_format}"]
            ref = results[f"score x86_64/{env.runtime} {model_format}"]
            if isinstance(mine, list) and isinstance(ref, list):
                rows.append(compare_scores(env, model_format, mine, ref))
            mine = results[f"listen {env.name} {model_format}"]
            ref = results[f"listen x86_64/{env.runtime} {model_format}"]
            if isinstance(mine, list) and isinstance(ref, list):
                rows.append(compare_listen(env, model_format, stream_of[model_format], mine, ref))
    return rows, failures


# --------------------------------------------------------------------------- verdict and table


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """What must hold: equal decisions, a bit-exact front end, int8 on LiteRT's default path
    within INT8_LSB_TOLERANCE of x86 (bit-exactness reported, not required)."""
    problems = []
    for row in rows:
        if row["runtime"] == "tflite vs litert":
            continue  # informative only
        where = f"{row['check']} {row['cpu']}/{row['runtime']} {row.get('format', '')} {row.get('variant', '')}".strip()
        if row.get("same_error") is False:
            problems.append(f"{where}: errors differ from x86 ({row['error']})")
        if "decision_flips" in row:
            untied = sum(not flip["tie"] for flip in row["decision_flips"])
            if untied:
                problems.append(
                    f"{where}: decisions differ from x86 in {untied} window(s) beyond a tie "
                    f"within {INT8_LSB_TOLERANCE} LSB"
                )
        elif row.get("decisions_equal") is False:
            problems.append(f"{where}: decisions differ from x86")
        if row.get("windows_equal") is False or row.get("errors_equal") is False:
            problems.append(f"{where}: windows or errors differ from x86")
        if row["check"] == "front end, lossless" and not row["bit_exact"]:
            files = ", ".join(m["file"] for m in row["mismatches"])
            problems.append(f"{where}: WAV/FLAC front end not bit-exact: {files}")
        if row["check"] == "front end, lossy" and row["max_decoded_diff"] > LOSSY_DECODE_LIMIT:
            problems.append(
                f"{where}: OGG/MP3 decode differs by {row['max_decoded_diff']:.3g}, "
                f"more than {LOSSY_DECODE_LIMIT:g}"
            )
        if row.get("silence_flags_equal") is False:
            problems.append(f"{where}: silence flags differ from x86")
        default_path = row.get("variant", "default") == "default"
        if (
            row["check"].endswith(" model")
            and row.get("format") == "int8"
            and row["runtime"] == "litert"
            and default_path
            and row.get("bit_exact") is False
            and (row.get("max_raw_diff") is None or row["max_raw_diff"] > INT8_LSB_TOLERANCE)
        ):
            problems.append(
                f"{where}: int8 on LiteRT's default path differs from x86 by "
                f"{row.get('max_raw_diff')} LSB, more than {INT8_LSB_TOLERANCE}"
            )
    return problems


def tie_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per window whose decision a tolerated int8 rounding flipped (see decision_flips)."""
    lines = []
    for row in rows:
        for tie in (flip for flip in row.get("decision_flips", []) if flip["tie"]):
            lines.append(
                f"tie: {row['check']} {row['cpu']}/{row['runtime']} {row['format']} window "
                f"{tie['window']}: raw {tie['raw']} (P(spoof) {tie['p_spoof']:.4f}) against x86 "
                f"{tie['x86_raw']} ({tie['x86_p_spoof']:.4f}), within {INT8_LSB_TOLERANCE} LSB"
            )
    return lines


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "check",
        "cpu",
        "runtime",
        "format",
        "variant",
        "n",
        "decisions",
        "bit-exact",
        "max |dP(spoof)|",
    )
    lines = [header]
    for row in rows:
        n = row.get("windows", row.get("files", ""))
        if row["check"].startswith("front end"):
            decisions = "-"
            exact = {True: "yes", False: "no"}[row["bit_exact"]]
            diff = "" if row["bit_exact"] else f"(16 kHz signal: {row['max_signal_diff']:.3g})"
        elif "error" in row:
            decisions, exact, diff = "-", "-", f"error both sides: {row['same_error']}"
        else:
            decisions = {True: "equal", False: "DIFFER", None: "-"}[row.get("decisions_equal")]
            flips = row.get("decision_flips", [])
            if flips and all(flip["tie"] for flip in flips):
                decisions = f"{len(flips)} tie(s)"
            exact = {True: "yes", False: "no"}[row["bit_exact"]]
            diff = f"{row['max_p_spoof_diff']:.3g}" if "max_p_spoof_diff" in row else ""
            if row.get("max_raw_diff"):
                unit = " LSB" if row.get("format") == "int8" else ""
                diff += f" (raw {row['max_raw_diff']:.3g}{unit})"
        lines.append(
            (
                row["check"],
                row["cpu"],
                row["runtime"],
                row.get("format", ""),
                row.get("variant", row.get("stream", "")),
                str(n),
                decisions,
                exact,
                diff,
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=REPO / ".cache/arm")
    parser.add_argument("--out", type=Path, default=None, help="default: CACHE/results")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle for the CLI check")
    parser.add_argument("--cpus", nargs="+", default=list(CPUS), choices=CPUS)
    parser.add_argument("--jobs", type=int, default=2, help="environments run at once")
    parser.add_argument("--host-python", default=sys.executable, help="python with tensorflow")
    args = parser.parse_args()

    out = args.out or args.cache / "results"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start_s = time.monotonic()
    envs = environments(args.cache, tuple(args.cpus))
    audio_paths = write_test_audio(out / "audio")
    streams = write_stdin_pcm(out / "audio")
    models = ensure_tiny_models(args.cache, args.host_python)
    if args.bundle is not None and (args.bundle / "model_int8.tflite").exists():
        # Raw outputs prove int8 bit-exact; the CLI check covers the bundle's fp32 file (each
        # emulated window of a real model costs about a second: run it once, not twice).
        models["bundle:int8"] = args.bundle / "model_int8.tflite"
    timings_s: dict[str, float] = {}

    print(f"runtime check: {len(envs)} environments, {len(audio_paths)} files", file=sys.stderr)
    rows, versions, failures = check_runtime(envs, audio_paths, models, out, args.jobs, timings_s)

    cli: dict[str, Any] = {"bundle": str(args.bundle) if args.bundle else None}
    if args.bundle is None:
        cli["skipped"] = "no bundle given (--bundle)"
    elif not (args.bundle / "manifest.json").exists():
        cli["skipped"] = f"{args.bundle} holds no manifest.json"
    elif isinstance(helps := cli_help(envs[0]), str):
        cli["skipped"] = helps
    if "skipped" not in cli:
        print(f"cli check: bundle {args.bundle}", file=sys.stderr)
        cli_rows, cli_failures = check_cli(
            envs, args.bundle, audio_paths, streams, helps, args.jobs, out, timings_s
        )
        rows += cli_rows
        failures += cli_failures
    problems = failures + verdict(rows)

    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.platform(),
        "qemu": (args.cache / "bin/qemu-aarch64-static.deb-name").read_text().strip()
        if (args.cache / "bin/qemu-aarch64-static.deb-name").exists()
        else None,
        "environments": versions,
        "audio": [p.name for p in audio_paths],
        "stdin_streams": [f"{s.sample_rate} Hz, {s.channels} ch, S16_LE" for s in streams],
        "cli": cli,
        "rows": rows,
        "problems": problems,
        "passed": not problems,
        "wall_s": round(time.monotonic() - start_s, 1),
        "task_wall_s": timings_s,
    }
    report_path = out / "arm-parity.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")

    print(format_table(rows))
    print(
        "(P(spoof) differences near 1e-17 with bit-exact model outputs are float64 rounding in "
        "numpy's exp, whose x86 and aarch64 builds differ; the model rows compare raw outputs)"
    )
    for line in tie_lines(rows):
        print(line)
    if "skipped" in cli:
        print(f"cli check skipped: {cli['skipped']}")
    print(f"report: {report_path} ({report['wall_s']} s)")
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
