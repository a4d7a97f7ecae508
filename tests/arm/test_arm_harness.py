"""The pieces of `make test-arm` that run without qemu: lock files, fake cpuinfo, test audio,
the comparison rules and the wheel de-duplication. The emulated run itself is `make test-arm`."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from device import audio

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    """A module of scripts/arm/ (a folder of scripts, not a package)."""
    path = REPO / "scripts/arm" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"arm_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


compare = load_script("compare")
dedupe = load_script("dedupe")


# --------------------------------------------------------------------------- lock files


def pins(path: Path) -> dict[str, str]:
    result = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9.]*)", line)
        assert match, f"{path.name}: expected NAME==VERSION, got {line!r}"
        result[match.group(1).lower().replace("_", "-")] = match.group(2)
    return result


def test_device_lock_pins_litert_and_numpy2_and_nothing_from_the_desktop():
    locked = pins(REPO / "requirements/device.txt")
    assert locked["ai-edge-litert"] == "2.3.0"
    assert int(locked["numpy"].split(".")[0]) == 2
    assert {"scipy", "soundfile"} <= locked.keys()
    assert not {"torch", "tensorflow", "onnx", "pyaudio", "tflite-runtime"} & locked.keys()


def test_tflite_lock_pins_tflite_runtime_2_14_with_numpy_below_2():
    locked = pins(REPO / "requirements/device-tflite.txt")
    assert locked["tflite-runtime"] == "2.14.0"
    assert int(locked["numpy"].split(".")[0]) == 1
    assert {"scipy", "soundfile"} <= locked.keys()
    assert not {"torch", "tensorflow", "onnx", "pyaudio", "ai-edge-litert"} & locked.keys()


def test_both_locks_share_the_front_end_versions():
    litert = pins(REPO / "requirements/device.txt")
    tflite = pins(REPO / "requirements/device-tflite.txt")
    for name in ("scipy", "soundfile", "cffi"):
        assert litert[name] == tflite[name], name


# --------------------------------------------------------------------------- fake cpuinfo


def cpuinfo(cpu: str) -> list[dict[str, str]]:
    text = (REPO / "scripts/arm/cpuinfo" / f"{cpu}.txt").read_text()
    blocks = [b for b in text.strip().split("\n\n") if b.startswith("processor")]
    return [
        {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in block.splitlines())}
        for block in blocks
    ]


@pytest.mark.parametrize(
    ("cpu", "part", "dot_product"),
    [("cortex-a53", "0xd03", False), ("cortex-a72", "0xd08", False), ("cortex-a76", "0xd0b", True)],
)
def test_fake_cpuinfo_describes_the_pis_four_arm_cores(cpu, part, dot_product):
    cores = cpuinfo(cpu)
    assert len(cores) == 4
    for core in cores:
        assert core["CPU implementer"] == "0x41"  # Arm
        assert core["CPU part"] == part
        features = core["Features"].split()
        assert {"fp", "asimd"} <= set(features)
        assert ("asimddp" in features) is dot_product


# --------------------------------------------------------------------------- test audio


def test_the_audio_set_covers_the_rates_codecs_and_layouts_the_issue_names(tmp_path):
    paths = compare.write_test_audio(tmp_path)
    infos = [audio.read_info(p) for p in paths]
    assert {i.sample_rate for i in infos} >= {8000, 16000, 22050, 44100, 48000}
    assert {i.format for i in infos} >= {"WAV", "FLAC", "OGG", "MP3"}
    assert {i.subtype for i in infos} >= {"PCM_16", "PCM_24", "FLOAT", "VORBIS"}
    assert {i.channels for i in infos} == {1, 2}
    # A FLAC stream inside a .wav name loads (the front end reads the bytes, not the name).
    flac_in_wav = tmp_path / "flac_in_wav_44k1_stereo.wav"
    assert audio.read_info(flac_in_wav).format == "FLAC"
    windows = {p.name: audio.windows_from_file(p, 16000, 8000) for p in paths}
    assert windows["short_0s6_48k_mono.wav"].normalized.shape == (1, 16000)
    silent = windows["mostly_silent_16k_mono.flac"].silent
    assert silent.any() and not silent.all()
    assert not windows["wav_pcm16_16k_mono.wav"].silent.any()


def test_the_audio_set_is_the_same_every_run_for_lossless_files(tmp_path):
    # Same samples, not same bytes: libsndfile stamps float WAVs' PEAK chunk with the time.
    first = compare.write_test_audio(tmp_path / "a")
    second = compare.write_test_audio(tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        if a.suffix in compare.LOSSY_CODECS:
            continue
        np.testing.assert_array_equal(audio.decode(a)[0], audio.decode(b)[0], err_msg=a.name)


def test_stdin_streams_are_raw_s16le_of_the_stated_layout(tmp_path):
    streams = compare.write_stdin_pcm(tmp_path)
    assert {(s.sample_rate, s.channels) for s in streams} == {(48000, 2), (44100, 1)}
    for stream in streams:
        data = stream.path.read_bytes()
        assert len(data) % (2 * stream.channels) == 0
        pcm = audio.pcm16_to_float(data, stream.channels)
        seconds = pcm.shape[0] / stream.sample_rate
        assert 4.0 < seconds < 6.0
        assert np.abs(pcm).max() > 0.1


# --------------------------------------------------------------------------- comparison rules


def env(cpu: str = "cortex-a72", runtime: str = "litert"):
    return compare.Env(cpu, runtime, ("python",))


def probe_result(p_spoof: list[float], raw: list[list[int]], hashes: str = "h") -> dict:
    return {
        "audio": {
            "a.wav": {
                "decoded_sha256": hashes,
                "signal_sha256": hashes,
                "windows_sha256": hashes,
                "silent": [False],
            }
        },
        "models": {
            "tiny:int8": {
                "default": {"p_spoof": p_spoof, "raw_outputs": raw, "ms_per_window": 1.0},
            }
        },
    }


def test_identical_probes_pass():
    ref = probe_result([0.2, 0.9], [[10, -10], [-20, 20]])
    rows = compare.compare_probes(env(), probe_result([0.2, 0.9], [[10, -10], [-20, 20]]), ref)
    assert compare.verdict(rows) == []
    model_row = next(r for r in rows if r["check"] == "tiny model")
    assert model_row["bit_exact"] and model_row["max_p_spoof_diff"] == 0.0


def test_int8_on_litert_default_passes_within_the_lsb_tolerance_and_fails_beyond_it():
    ref = probe_result([0.2, 0.9], [[10, -10], [-20, 20]])
    two_lsb = probe_result([0.2002, 0.9], [[10, -8], [-20, 20]])
    rows = compare.compare_probes(env(runtime="litert"), two_lsb, ref)
    row = next(r for r in rows if r["check"] == "tiny model")
    assert row["max_raw_diff"] == compare.INT8_LSB_TOLERANCE == 2
    assert row["decisions_equal"] and not row["bit_exact"]  # reported, not required
    assert compare.verdict(rows) == []
    assert "(raw 2 LSB)" in compare.format_table(rows)
    three_lsb = probe_result([0.2003, 0.9], [[10, -7], [-20, 20]])
    problems = compare.verdict(compare.compare_probes(env(runtime="litert"), three_lsb, ref))
    assert [p for p in problems if "int8 on LiteRT's default path" in p] == [
        "tiny model cortex-a72/litert int8 default: int8 on LiteRT's default path differs from "
        "x86 by 3.0 LSB, more than 2"
    ]
    # tflite-runtime's int8 kernels are compared for decisions only (docs/arm.md).
    assert compare.verdict(compare.compare_probes(env(runtime="tflite"), three_lsb, ref)) == []


def test_a_flipped_decision_fails():
    ref = probe_result([0.2, 0.9], [[10, -10], [-20, 20]])
    ours = probe_result([0.6, 0.9], [[-1, 1], [-20, 20]])
    problems = compare.verdict(compare.compare_probes(env(runtime="tflite"), ours, ref))
    assert any("decisions differ" in p for p in problems)


def test_an_int8_tie_flipped_within_the_lsb_tolerance_is_reported_not_failed():
    # Measured on the demo bundle under tflite-runtime on Arm: x86 logits [-10, -10] give
    # P(spoof) 0.5 (spoof), Arm's [-9, -10] give 0.4925 (bona fide): a 1 LSB rounding at a tie.
    ref = probe_result([0.5, 0.9], [[-10, -10], [-20, 20]])
    ours = probe_result([0.4925, 0.9], [[-9, -10], [-20, 20]])
    rows = compare.compare_probes(env(runtime="tflite"), ours, ref)
    row = next(r for r in rows if r["check"] == "tiny model")
    assert not row["decisions_equal"]  # the flip is in the report
    assert (
        [f["window"] for f in row["decision_flips"] if f["tie"]]
        == [0]
        == [f["window"] for f in row["decision_flips"]]
    )
    assert compare.verdict(rows) == []
    assert "1 tie(s)" in compare.format_table(rows)
    assert compare.tie_lines(rows) == [
        "tie: tiny model cortex-a72/tflite int8 window 0: raw [-9, -10] (P(spoof) 0.4925) "
        "against x86 [-10, -10] (0.5000), within 2 LSB"
    ]


def test_a_flip_beyond_the_lsb_tolerance_fails_even_next_to_a_tie():
    ref = probe_result([0.5, 0.45], [[-10, -10], [-10, -12]])
    ours = probe_result([0.4925, 0.52], [[-9, -10], [-13, -12]])  # window 1: 3 LSB
    rows = compare.compare_probes(env(runtime="tflite"), ours, ref)
    assert compare.verdict(rows) == [
        "tiny model cortex-a72/tflite int8 default: decisions differ from x86 in 1 window(s) "
        "beyond a tie within 2 LSB"
    ]


def test_fp32_has_no_ties():
    ref = probe_result([0.5, 0.9], [[-1.0, -1.0], [-2.0, 2.0]])
    ours = probe_result([0.4999, 0.9], [[-0.9999, -1.0], [-2.0, 2.0]])
    ref["models"] = {"tiny:fp32": ref["models"]["tiny:int8"]}
    ours["models"] = {"tiny:fp32": ours["models"]["tiny:int8"]}
    problems = compare.verdict(compare.compare_probes(env(runtime="litert"), ours, ref))
    assert any("decisions differ" in p for p in problems)


def test_lossless_front_end_must_be_bit_exact(tmp_path):
    ref, ours = probe_result([0.2], [[1, 1]], "x"), probe_result([0.2], [[1, 1]], "y")
    arrays = {f"a.wav:{s}": np.zeros(4, np.float32) for s in ("decoded", "signal", "windows")}
    np.savez(tmp_path / "ref.npz", **arrays)
    arrays["a.wav:signal"] = np.array([0, 0, 0, 1e-7], np.float32)
    np.savez(tmp_path / "ours.npz", **arrays)
    ref["npz"], ours["npz"] = str(tmp_path / "ref.npz"), str(tmp_path / "ours.npz")
    rows = compare.compare_probes(env(), ours, ref)
    lossless = next(r for r in rows if r["check"] == "front end, lossless")
    assert not lossless["bit_exact"]
    assert lossless["max_signal_diff"] == pytest.approx(1e-7)
    assert any("WAV/FLAC front end not bit-exact" in p for p in compare.verdict(rows))


def event(window: int, p_spoof: float, decision: str, kind: str = "window") -> dict:
    return {"type": kind, "window": window, "p_spoof": p_spoof, "decision": decision}


def test_listen_compares_windows_in_order_and_ignores_heartbeats():
    stream = compare.PcmStream(Path("s.raw"), 48000, 2)
    ref = [
        {"type": "start"},
        event(0, 0.1, "bonafide", "decision"),
        event(1, 0.2, "bonafide"),
        {"type": "stop"},
    ]
    ours = [
        {"type": "start"},
        {"type": "heartbeat", "p_spoof": 0.5},  # clock-driven: emulation is slower
        event(1, 0.2 + 1e-9, "bonafide"),
        event(0, 0.1, "bonafide", "decision"),
        {"type": "stop"},
    ]
    row = compare.compare_listen(env(), "int8", stream, ours, ref)
    assert row["windows"] == 2 and row["windows_equal"] and row["decisions_equal"]
    assert row["max_p_spoof_diff"] == pytest.approx(1e-9)
    ours[2] = event(1, 0.7, "spoof", "decision")
    row = compare.compare_listen(env(), "int8", stream, ours, ref)
    assert not row["decisions_equal"]
    assert compare.verdict([row])


def test_score_rows_compare_files_windows_and_errors():
    ref = [
        {"file": "/x86/a.wav", "score": 0.3, "decision": "bonafide", "windows": 3},
        {"file": "/x86/bad.wav", "error": "not a readable audio file"},
    ]
    ours = [
        {"file": "/arm/a.wav", "score": 0.3 + 2e-8, "decision": "bonafide", "windows": 3},
        {"file": "/arm/bad.wav", "error": "not a readable audio file"},
    ]
    row = compare.compare_scores(env(), "fp32", ours, ref)
    assert row["decisions_equal"] and row["errors_equal"] and row["errors"] == 1
    assert row["max_p_spoof_diff"] == pytest.approx(2e-8)
    assert compare.verdict([row]) == []
    ours[1] = {"file": "/arm/bad.wav", "score": 0.5, "decision": "spoof", "windows": 1}
    assert compare.verdict([compare.compare_scores(env(), "fp32", ours, ref)])


# --------------------------------------------------------------------------- dedupe


def test_dedupe_links_identical_files_only(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "pkg").mkdir(parents=True)
    (a / "pkg/same.so").write_bytes(b"x" * 1000)
    (b / "pkg/same.so").write_bytes(b"x" * 1000)
    (a / "pkg/other.py").write_text("one")
    (b / "pkg/other.py").write_text("two")
    (b / "pkg/only_b.py").write_text("b")
    saved_bytes = dedupe.dedupe(a, b)
    assert saved_bytes == 1000
    assert os.path.samefile(a / "pkg/same.so", b / "pkg/same.so")
    assert not os.path.samefile(a / "pkg/other.py", b / "pkg/other.py")
    assert (b / "pkg/other.py").read_text() == "two"
    assert (b / "pkg/only_b.py").read_text() == "b"
    assert dedupe.dedupe(a, b) == 0  # idempotent
