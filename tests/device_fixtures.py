"""Real parts for the device tests: a small real bundle, test audio, an ALSA file microphone.

The bundle is a real TFLite model converted by TensorFlow's own converter to fp32 and full
int8 (int8 input and output, calibrated on normalized windows), with a manifest written by
device.bundle. Its weights are set by hand so its answers are predictable: it computes the
mean |x[n+1] - x[n]| and mean |x[n+1] + x[n]| of a normalized window (a high-pass and a
low-pass energy) and calls a window "spoof" when the high band dominates. A low tone scores
bona fide, white noise and high tones score spoof, and a mix of the two lands in between,
which is what the stream tests need to drive decisions for real.

TensorFlow runs in a subprocess (`python -m tests.device_fixtures OUT_DIR`) so the test
process never imports it, and the built bundle is cached under pytest's cache directory,
keyed by the hash of this file, device/bundle.py and convert/int8.py (the int8 settings).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WINDOW_SAMPLES = 4000  # 0.25 s at 16 kHz: small, so the tests run fast
HOP_SAMPLES = 2000
SILENCE_FLOOR_DBFS = -50.0
THRESHOLD = 0.5
SPOOF_GAIN = 8.0  # logit_spoof = GAIN * (mean|d| - mean|s|) + BIAS; logit_bonafide = 0
SPOOF_BIAS = 2.0


# --------------------------------------------------------------------------- audio


def tone(freq_hz: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def noise(seconds: float, rate: int, amplitude: float = 0.2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(round(seconds * rate))).clip(-1, 1).astype(np.float32)


def silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(round(seconds * rate), dtype=np.float32)


def scenario(rate: int, seed: int = 0) -> np.ndarray:
    """Speech-like and spoof-like stretches with a pause: bona fide, spoof, silence, bona fide."""
    return np.concatenate(
        [
            tone(220.0, 1.0, rate, 0.4) + noise(1.0, rate, 0.01, seed),
            noise(1.0, rate, 0.25, seed + 1),
            silence(0.6, rate),
            tone(300.0, 0.9, rate, 0.3) + noise(0.9, rate, 0.01, seed + 2),
        ]
    ).astype(np.float32)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples (frames,) or (frames, channels) in [-1, 1] -> int16 (as a 16-bit WAV holds)."""
    return np.clip(np.round(np.asarray(samples) * 32767.0), -32768, 32767).astype("<i2")


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """16-bit PCM WAV with the stdlib writer: (frames,) mono or (frames, channels)."""
    pcm = to_pcm16(samples)
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return path


def write_raw(path: Path, samples: np.ndarray) -> Path:
    """Raw interleaved s16le, as `arecord -t raw` writes and the ALSA file PCM reads."""
    to_pcm16(samples).tofile(path)
    return path


# --------------------------------------------------------------------------- ALSA microphone


def write_alsa_file_mic(
    config_path: Path, raw_path: Path | None, device_name: str = "filemic"
) -> Path:
    """An ALSA configuration whose default capture (and `device_name`) reads a raw file.

    docs/toolchain.md, "Audio I/O without a sound card": a `type file` PCM with `infile` under a
    `plug`, playback to a null PCM. PyAudio reads the file bit-exact, at once (no real-time
    clock), and returns stale data past its end, so a reader must stop at the file's length.
    With raw_path None the configuration has no microphone at all (only a null device).
    """
    if raw_path is None:
        text = "pcm.!default { type null }\npcm.nothing { type null }\n"
    else:
        text = f"""
pcm.!default {{
  type asym
  playback.pcm "nullout"
  capture.pcm "{device_name}"
}}
pcm.nullout {{ type null }}
pcm.{device_name} {{
  type plug
  slave.pcm {{
    type file
    file "/dev/null"
    infile "{raw_path}"
    format "raw"
    slave.pcm {{ type null }}
  }}
}}
"""
    config_path.write_text(text)
    return config_path


# --------------------------------------------------------------------------- the bundle


def fixture_key() -> str:
    digest = hashlib.sha256()
    for path in (Path(__file__), REPO / "device" / "bundle.py", REPO / "convert" / "int8.py"):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _calibration_windows(count: int = 64) -> np.ndarray:
    from device.audio import SAMPLE_RATE, frame, normalize_windows

    pieces = []
    for i in range(count // 4):
        freq = 100.0 + 180.0 * i
        pieces += [
            tone(freq, 0.25, SAMPLE_RATE),
            noise(0.25, SAMPLE_RATE, 0.2, seed=i),
            tone(freq, 0.25, SAMPLE_RATE, 0.3) + noise(0.25, SAMPLE_RATE, 0.05 * (i % 5), seed=i),
            tone(7000.0 - 150.0 * i, 0.25, SAMPLE_RATE),
        ]
    windows = np.stack([frame(p, WINDOW_SAMPLES, WINDOW_SAMPLES)[0] for p in pieces])
    return normalize_windows(windows)


def build_bundle(out_dir: Path) -> Path:
    """Build and convert the fixture model with TensorFlow; write a verified bundle to out_dir."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from convert.int8 import configure_full_int8
    from device.audio import NORMALIZATION_RULE, SAMPLE_RATE
    from device.bundle import (
        MANIFEST_NAME,
        AudioSettings,
        FileEntry,
        Manifest,
        TensorSpec,
        Threshold,
        manifest_to_dict,
        sha256_of,
    )
    from device.scores import FILE_AGGREGATION, LABELS, SCORE_DEFINITION

    out_dir.mkdir(parents=True, exist_ok=True)
    # Conv1D kernel (taps, in, filters): x[n+1]-x[n], x[n]-x[n+1], x[n+1]+x[n], -(x[n+1]+x[n]).
    kernel = np.array([[[-1.0, 1.0, 1.0, -1.0]], [[1.0, -1.0, 1.0, -1.0]]], dtype=np.float32)
    dense = np.array(
        [[0.0, SPOOF_GAIN], [0.0, SPOOF_GAIN], [0.0, -SPOOF_GAIN], [0.0, -SPOOF_GAIN]],
        dtype=np.float32,
    )
    bias = np.array([0.0, SPOOF_BIAS], dtype=np.float32)

    class Detector(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.constant(kernel)
            self.dense = tf.constant(dense)
            self.bias = tf.constant(bias)

        @tf.function(input_signature=[tf.TensorSpec([1, WINDOW_SAMPLES], tf.float32, name="audio")])
        def __call__(self, audio: tf.Tensor) -> tf.Tensor:
            x = tf.expand_dims(audio, -1)  # (1, samples, 1)
            x = tf.nn.relu(tf.nn.conv1d(x, self.kernel, stride=1, padding="VALID"))
            x = tf.reduce_mean(x, axis=1)  # (1, 4)
            return tf.matmul(x, self.dense) + self.bias  # (1, 2) logits

    module = Detector()
    concrete = module.__call__.get_concrete_function()
    calibration = _calibration_windows()

    def representative():
        for window in calibration:
            yield [window[None, :]]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    (out_dir / "model_fp32.tflite").write_bytes(converter.convert())

    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    configure_full_int8(converter, representative)
    (out_dir / "model_int8.tflite").write_bytes(converter.convert())

    from ai_edge_litert.interpreter import Interpreter

    def specs(details):
        return tuple(
            TensorSpec(
                name=d["name"],
                shape=tuple(int(s) for s in d["shape"]),
                dtype=np.dtype(d["dtype"]).name,
                scale=float(d["quantization"][0]),
                zero_point=int(d["quantization"][1]),
            )
            for d in details
        )

    files = {}
    for precision in ("fp32", "int8"):
        name = f"model_{precision}.tflite"
        interpreter = Interpreter(model_path=str(out_dir / name))
        files[name] = FileEntry(
            sha256=sha256_of(out_dir / name),
            bytes=(out_dir / name).stat().st_size,
            inputs=specs(interpreter.get_input_details()),
            outputs=specs(interpreter.get_output_details()),
            precision=precision,
        )
    manifest = Manifest(
        format_version=1,
        model_name="fixture-highband",
        parameters=int(kernel.size + dense.size + bias.size),
        macs_per_window=int((WINDOW_SAMPLES - 1) * 8 + 8),
        audio=AudioSettings(
            sample_rate=SAMPLE_RATE,
            window_samples=WINDOW_SAMPLES,
            hop_samples=HOP_SAMPLES,
            normalization=NORMALIZATION_RULE,
            silence_floor_dbfs=SILENCE_FLOOR_DBFS,
        ),
        labels=LABELS,
        score_definition=SCORE_DEFINITION,
        file_aggregation=FILE_AGGREGATION,
        threshold=Threshold(
            value=THRESHOLD, method="fixed", eer_dev=0.0, far_target=0.01, far_target_value=0.9
        ),
        files=files,
        data={"train": "hand-set weights (test fixture)", "calibration": "64 synthetic windows"},
        tools={"tensorflow": tf.__version__},
    )
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest_to_dict(manifest), indent=2))
    return out_dir


def cached_bundle(cache_root: Path) -> Path:
    """The fixture bundle under cache_root/<key>, built in a subprocess when missing."""
    out_dir = cache_root / f"fixture-bundle-{fixture_key()}"
    if (out_dir / "manifest.json").is_file():
        return out_dir
    tmp_dir = cache_root / f"fixture-bundle-{fixture_key()}.tmp{os.getpid()}"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "tests.device_fixtures", str(tmp_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"building the fixture bundle failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    if out_dir.exists():  # another session built it meanwhile
        return out_dir
    tmp_dir.rename(out_dir)
    return out_dir


# --------------------------------------------------------------------------- pytest fixtures

import pytest  # noqa: E402  (after the builder: `python -m tests.device_fixtures` needs no pytest)


def bundle_for(request: pytest.FixtureRequest) -> Path:
    """The real fp32 + int8 fixture bundle, cached across runs (TensorFlow builds it once).

    Test modules wrap this in their own session fixture, e.g.
        @pytest.fixture(scope="session")
        def fixture_bundle(request): return bundle_for(request)
    """
    import importlib.util

    cache_root = Path(request.config.cache.mkdir("device-bundles"))
    built = (cache_root / f"fixture-bundle-{fixture_key()}" / "manifest.json").is_file()
    if not built and importlib.util.find_spec("tensorflow") is None:
        pytest.skip("building the fixture bundle needs tensorflow (the desktop venv)")
    return cached_bundle(cache_root)


def device_env(**extra: str) -> dict[str, str]:
    """Environment for `python -m device` subprocesses: the repo importable, quiet TF logs."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    env.update(extra)
    return env


def run_device(
    args: list[str],
    python: str = sys.executable,
    input: bytes | None = None,
    timeout: float = 60.0,
    **env: str,
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-m", "device", *args],
        cwd=REPO,
        env=device_env(**env),
        input=input,
        capture_output=True,
        timeout=timeout,
    )


def json_lines(data: bytes | str) -> list[dict]:
    text = data.decode() if isinstance(data, bytes) else data
    return [json.loads(line) for line in text.splitlines() if line.strip()]


if __name__ == "__main__":
    build_bundle(Path(sys.argv[1]))


def streamed_state(scorer: Any, latency_ms: float | None = None, note_decisions: bool = False):
    """An agent's AgentState after the scenario streamed through a real StreamPipeline,
    recorded as the agent does: each window with its latency (`latency_ms`, or the real one
    when None), and with `note_decisions` each decision change as an event."""
    import time

    from device.api import AgentState
    from device.stream import Chunk, DecisionSettings, StreamPipeline

    state = AgentState({"model": scorer.describe()})
    pipeline = StreamPipeline(scorer, DecisionSettings(threshold=scorer.threshold))
    audio = scenario(16000)[:, None]
    for result in pipeline.feed(Chunk(audio, 16000, time.monotonic())) + pipeline.finish():
        measured_ms = (time.monotonic() - result.arrival_s) * 1000
        state.record(result, latency_ms=measured_ms if latency_ms is None else latency_ms)
        if note_decisions and result.changed:
            state.note_event(
                {
                    "time": f"t{result.index}",
                    "type": "decision",
                    "decision": result.decision,
                    "smoothed": result.smoothed,
                }
            )
    return state


def http_request(
    address: tuple[str, int],
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on a fresh connection: (status, headers, body)."""
    import http.client

    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, dict(response.getheaders()), data
    finally:
        connection.close()


def listen_on_file(
    bundle: Path, audio: Path, config: Path, *extra: str
) -> subprocess.CompletedProcess:
    """`clad-agent listen --json --config CONFIG` on an audio file, to its end."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "device", "listen", "--bundle", str(bundle)),
            *("--source", str(audio), "--json", "--config", str(config)),
            *extra,
        ],
        cwd=REPO,
        env=device_env(),
        capture_output=True,
        timeout=60,
    )


def start_listen(
    bundle: Path, *args: str, stdin: Any = None, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen:
    """`clad-agent listen --bundle BUNDLE ARGS...` started in the background, stdout and
    stderr piped (stdin too when `stdin` is subprocess.PIPE)."""
    return subprocess.Popen(
        [sys.executable, "-m", "device", "listen", "--bundle", str(bundle), *args],
        cwd=REPO,
        env=env if env is not None else device_env(),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def run_deploy_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`bash scripts/deploy.sh ARGS...` with `env` added to this environment; text output."""
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "deploy.sh"), *args],
        cwd=REPO,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
