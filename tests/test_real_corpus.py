"""The default demo corpus: real speech from Debian packages against neural and classic fakes.

Everything runs for real: `apt-get download` into a temporary cache, PyAV/libsndfile codecs,
LPCNet from libcodec2 through ctypes, Piper as a separate process, Kokoro in onnxruntime,
espeak-ng. The corpus-level tests build a tiny corpus from the packages in the user's cache
(fetched on first use, reused after).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from device.audio import SAMPLE_RATE
from train.synth import real_corpus
from train.synth.codecs import CODECS, roundtrip
from train.synth.corpus import SPLITS, CorpusError, protocol_path
from train.synth.packages import FetchError, fetch
from train.synth.real import SPEAKERS, speech_regions, utterances

REPO = Path(__file__).resolve().parents[1]
SMALL_PACKAGE = "libcodec2-1.0"  # 8 MB, and the corpus needs it anyway


def _tone_and_noise(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    voiced = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return voiced + 0.02 * rng.standard_normal(t.size)


# --------------------------------------------------------------------------- fetch


def test_fetch_downloads_once_then_hits_the_cache_without_apt(tmp_path: Path) -> None:
    first = fetch([SMALL_PACKAGE], tmp_path)[SMALL_PACKAGE]
    assert not first.cache_hit
    assert len(first.deb_sha256) == 64 and first.deb_bytes > 1_000_000
    assert first.version and first.licence == "LGPL-2.1"
    assert list(Path(first.root).glob("usr/lib/*/libcodec2.so*"))

    # A cache hit must not need apt at all: run it with no apt-get on PATH.
    code = (
        "import sys; from train.synth.packages import fetch; "
        f"p = fetch([{SMALL_PACKAGE!r}], sys.argv[1])[{SMALL_PACKAGE!r}]; "
        "print(p.cache_hit, p.deb_sha256)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": "/nonexistent"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", first.deb_sha256]


def test_fetch_of_a_missing_package_names_it_and_the_apt_command(tmp_path: Path) -> None:
    with pytest.raises(FetchError) as caught:
        fetch(["clad-edge-no-such-package"], tmp_path)
    message = str(caught.value)
    assert "'clad-edge-no-such-package'" in message
    assert "apt-get download clad-edge-no-such-package" in message
    assert "apt-get update" in message
    assert not list(tmp_path.glob("clad-edge-no-such-package*"))


# --------------------------------------------------------------------------- codecs


@pytest.mark.parametrize("name", sorted(CODECS))
def test_every_codec_really_codes_and_keeps_the_length(name: str) -> None:
    signal = _tone_and_noise()
    coded = roundtrip(signal, SAMPLE_RATE, CODECS[name])
    assert coded.shape == signal.shape and np.all(np.isfinite(coded))
    assert np.std(coded) > 0.3 * np.std(signal)  # decodable audio, not silence
    assert not np.allclose(coded, signal, atol=1e-3)  # the codec changed it
    if CODECS[name].sample_rate == 8000:  # narrowband: nothing left above 4 kHz
        spectrum = np.abs(np.fft.rfft(coded)) ** 2
        freqs = np.fft.rfftfreq(coded.size, 1 / SAMPLE_RATE)
        assert spectrum[freqs > 4200].sum() < 1e-3 * spectrum.sum()


def test_codec_round_trip_is_deterministic() -> None:
    signal = _tone_and_noise()
    for codec in CODECS.values():
        assert np.array_equal(
            roundtrip(signal, SAMPLE_RATE, codec), roundtrip(signal, SAMPLE_RATE, codec)
        ), codec.name


# --------------------------------------------------------------------------- generators


@pytest.fixture(scope="module")
def packages() -> dict[str, object]:
    return fetch(
        sorted({s.package for s in SPEAKERS} | set(real_corpus.TOOL_PACKAGES)),
    )


def test_lpcnet_copy_synthesis_keeps_length_changes_the_signal_and_is_seeded(
    packages: dict[str, object],
) -> None:
    from train.synth.neural import LPCNet

    lpcnet = LPCNet(Path(packages["libcodec2-1.0"].root))  # type: ignore[attr-defined]
    speech = _tone_and_noise()
    out = lpcnet.copy_synthesis(speech, seed=5)
    assert out.shape == speech.shape and np.std(out) > 0.01
    assert np.array_equal(out, lpcnet.copy_synthesis(speech, seed=5))
    assert not np.allclose(out / np.max(np.abs(out)), speech / np.max(np.abs(speech)), atol=0.05)


def test_lpcnet_names_the_package_when_the_library_is_missing(tmp_path: Path) -> None:
    from train.synth.neural import GeneratorError, LPCNet

    with pytest.raises(GeneratorError, match=r"libcodec2-1\.0"):
        LPCNet(tmp_path)


def test_piper_speaks_each_line_in_its_own_process_and_is_seeded() -> None:
    from train.synth.neural import PIPER_SAMPLE_RATE, PiperSettings, piper

    settings = PiperSettings(length_scale=1.0, noise_scale=0.667, noise_w_scale=0.8, seed=3)
    first = piper(["Two short lines.", "The second one is a little longer."], settings)
    assert len(first) == 2 and first[1].size > first[0].size > 0.3 * PIPER_SAMPLE_RATE
    again = piper(["Two short lines.", "The second one is a little longer."], settings)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = piper(["Two short lines."], PiperSettings(1.0, 0.667, 0.8, seed=4))
    assert not np.array_equal(other[0], first[0])
    with pytest.raises(ValueError, match="newlines"):
        piper(["one\ntwo"], settings)


def test_kokoro_speaks_espeak_phonemes_with_a_mixed_voice() -> None:
    from train.synth.espeak import Espeak
    from train.synth.neural import KOKORO_SAMPLE_RATE, kokoro

    ipa = Espeak().phonemes("Il treno parte alle nove.", "it")
    assert "tɾ" in ipa or "tr" in ipa
    model = kokoro(str(real_corpus.default_cache().parent / "models"))
    style = model.style({"jf_alpha": 0.5, "jm_kumo": 0.5})
    audio = model.synthesize(ipa, style, 1.0)
    assert 0.5 * KOKORO_SAMPLE_RATE < audio.size < 6 * KOKORO_SAMPLE_RATE
    # the same bytes on every call (with onnxruntime's arena on, the 2nd call differed)
    for _ in range(2):
        np.random.default_rng(0).random(100_000)  # move the heap about between calls
        assert np.array_equal(audio, model.synthesize(ipa, style, 1.0))
    assert not np.array_equal(audio, model.synthesize(ipa, model.style({"jm_kumo": 1.0}), 1.0))


def _integer_graph(seed: int) -> tuple[bytes, dict[str, np.ndarray]]:
    """A float input quantized on the fly into a ConvInteger (uint8 weights, per-tensor zero
    points) and a MatMulInteger (int8 weights, per-column zero points), as onnxruntime's
    dynamic quantization writes them in Kokoro; int32 outputs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    conv_w = rng.integers(0, 256, size=(6, 4, 5), dtype=np.uint8)
    matmul_w = rng.integers(-128, 128, size=(9, 7), dtype=np.int8)
    constants = [
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(np.array(131, dtype=np.uint8), "conv_wz"),
        numpy_helper.from_array(matmul_w, "mm_w"),
        numpy_helper.from_array(rng.integers(-9, 9, size=7, dtype=np.int8), "mm_wz"),
    ]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node(
            "ConvInteger", ["xq", "conv_w", "xz", "conv_wz"], ["conv"], pads=[2, 2], group=1
        ),
        helper.make_node("DynamicQuantizeLinear", ["m"], ["mq", "ms", "mz"]),
        helper.make_node("MatMulInteger", ["mq", "mm_w", "mz", "mm_wz"], ["matmul"]),
    ]
    graph = helper.make_graph(
        nodes,
        "integer",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 50]),
            helper.make_tensor_value_info("m", TensorProto.FLOAT, [3, 9]),
        ],
        [
            helper.make_tensor_value_info("conv", TensorProto.INT32, None),
            helper.make_tensor_value_info("matmul", TensorProto.INT32, None),
        ],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    feeds = {
        "x": rng.normal(size=(1, 4, 50)).astype(np.float32),
        "m": rng.normal(size=(3, 9)).astype(np.float32),
    }
    return model.SerializeToString(), feeds


def test_integer_products_in_float_give_the_integer_kernels_results() -> None:
    """Kokoro's ConvInteger / MatMulInteger run as float Conv / MatMul of the same integers
    (train.synth.neural.integer_products_in_float): the int32 results are the integer
    kernels' own, for several random graphs, in onnxruntime."""
    import onnxruntime

    from train.synth.neural import integer_products_in_float

    for seed in range(5):
        model, feeds = _integer_graph(seed)
        rewritten = integer_products_in_float(model)
        ops = {n.op_type for n in __import__("onnx").load_from_string(rewritten).graph.node}
        assert not ops & {"ConvInteger", "MatMulInteger"} and {"Conv", "MatMul"} <= ops
        integer, floating = (
            onnxruntime.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feeds)
            for m in (model, rewritten)
        )
        for a, b in zip(integer, floating, strict=True):
            assert a.dtype == b.dtype == np.int32 and a.shape == b.shape
            assert np.array_equal(a, b)
            assert np.abs(a).max() > 10_000  # real products, not zeros


def test_kokoro_is_given_only_about_as_much_text_as_the_file_keeps() -> None:
    """A text of spelled-out numbers (the Russian speakers' sentences) gave 214 IPA characters
    and 16.6 s of Kokoro speech for a 2.2 s source; the cut keeps whole words, at least the
    budget of (2.2 + 1) s x 20 characters, and leaves a short text alone."""
    words = ["sʲˈejm", "tˈysʲitʃʲ", "ʃˌɛsʲtʲsˈot", "sʲˈemdʲɛsʲattrʲˈi"] * 12
    ipa = " ".join(words)
    budget = int(np.ceil((2.2 + 1.0) * real_corpus.KOKORO_IPA_CHARS_PER_S))
    cut = real_corpus.kokoro_ipa(ipa, 2.2)
    assert budget <= len(cut) < budget + max(len(w) for w in words) + 1
    assert ipa.startswith(cut) and ipa[len(cut)] == " " and not cut.endswith(" ")
    assert real_corpus.kokoro_ipa(ipa, 60.0) == ipa
    assert real_corpus.kokoro_ipa("a" * 500, 1.0) == "a" * 500  # no word boundary: uncut


def test_utterances_split_at_pauses_and_respect_the_length_bounds() -> None:
    speech = _tone_and_noise(1.5)
    pause = np.zeros(int(0.5 * SAMPLE_RATE))
    signal = np.concatenate([pause, speech, pause, speech, pause, _tone_and_noise(9.0, 1)])
    assert len(speech_regions(signal)) == 3
    found = utterances(signal, 1.0, 4.0)
    lengths = [(b - a) / SAMPLE_RATE for a, b in found]
    assert all(1.0 <= length <= 4.0 for length in lengths), lengths
    # the two 1.5 s stretches fit in 4 s with their pause: joined (3.5 s); the 9 s stretch
    # cannot join them and is cut into 4 + 4 + 1 s
    assert lengths == [3.5, 4.0, 4.0, 1.0]


# --------------------------------------------------------------------------- the corpus


TINY = real_corpus.RealCorpusSettings(seed=5, **real_corpus.SIZES["tiny"])


def _build(root: Path, jobs: int) -> None:
    # a separate interpreter per build, so state in this process (espeak, onnxruntime
    # seeds, caches) cannot make two builds agree by accident
    command = [sys.executable, "-m", "train.demo_corpus", "--out", str(root), "--size", "tiny"]
    command += ["--seed", "5", "--jobs", str(jobs), "--no-check"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real")
    _build(root, jobs=2)
    return root


def _protocol(root: Path, split: str) -> list[list[str]]:
    return [line.split() for line in protocol_path(root, split).read_text().splitlines()]


@pytest.mark.slow
def test_tiny_corpus_is_the_asvspoof_layout_and_the_reader_reads_it(tiny: Path) -> None:
    from train.data import load_dataset

    dataset = load_dataset("asvspoof2019", tiny / "LA")
    assert not dataset.problems
    for split in SPLITS:
        records = dataset.split(split)
        assert len(records) == 2 * getattr(TINY, split)
        attacks = {r.attack for r in records if r.label == "spoof"}
        expected = {
            a.system_id
            for a in real_corpus.ATTACKS
            if split in a.splits
            and any(
                a.languages is None or s.language in a.languages
                for s in SPEAKERS
                if s.split == split
            )
        }
        assert attacks <= expected and len(attacks) >= 4
        for record in records[:5]:
            audio, rate = sf.read(record.path)
            assert rate == SAMPLE_RATE and audio.ndim == 1 and np.std(audio) > 1e-4
    eval_attacks = {r.attack for r in dataset.split("eval") if r.label == "spoof"}
    assert {"A04", "A08"} <= eval_attacks  # the unseen vocoder and the unseen neural TTS
    train_attacks = {r.attack for r in dataset.split("train") if r.label == "spoof"}
    assert not {"A04", "A08"} & train_attacks


@pytest.mark.slow
def test_splits_are_speaker_disjoint_and_languages_balanced(tiny: Path) -> None:
    import json

    real_voices = {s.speaker_id for s in SPEAKERS}
    heard: dict[str, set[str]] = {}
    for split in SPLITS:
        rows = _protocol(tiny, split)
        heard[split] = {r[0] for r in rows if r[4] == "bonafide"}
        assert heard[split] <= real_voices
        # copy-synthesis keeps the real voice: those spoofs only use the split's own voices
        copies = {r[0] for r in rows if r[3] in ("A01", "A02", "A03", "A04", "A05")}
        assert copies <= heard[split]
    assert not heard["eval"] & (heard["train"] | heard["dev"])
    people = {s.speaker_id: s.person for s in SPEAKERS}
    assert not {people[v] for v in heard["eval"]} & {people[v] for v in heard["train"]}

    stats = json.loads((tiny / "stats.json").read_text())
    for split in SPLITS:
        for language, row in stats["languages"][split].items():
            assert row["bonafide"] == row["spoof"], (split, language, row)
    assert set(stats["sources"]) >= {"asterisk-core-sounds-en-g722", "fillets-ng-data-cs"}
    for package in stats["sources"].values():
        assert len(package["deb_sha256"]) == 64 and package["version"] and package["licence"]


@pytest.mark.slow
def test_same_seed_gives_byte_identical_corpus_across_worker_counts(
    tiny: Path, tmp_path: Path
) -> None:
    _build(tmp_path, jobs=1)
    files = sorted(p.relative_to(tiny) for p in (tiny / "LA").rglob("*") if p.is_file())
    assert len(files) == 3 + 2 * sum(getattr(TINY, s) for s in SPLITS)
    different = [f for f in files if (tiny / f).read_bytes() != (tmp_path / f).read_bytes()]
    assert not different
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "LA").rglob("*") if p.is_file()) == (
        files
    )


@pytest.mark.slow
def test_a_second_build_keeps_the_files_and_a_speaker_overlap_fails(tiny: Path) -> None:
    stamp = {p: p.stat().st_mtime_ns for p in (tiny / "LA").rglob("*.flac")}
    _build(tiny, jobs=2)
    assert {p: p.stat().st_mtime_ns for p in (tiny / "LA").rglob("*.flac")} == stamp

    files = real_corpus.plan(TINY, _fake_index())
    leaked = dict(files)
    leaked["train"] = [*files["train"], files["eval"][0]]
    with pytest.raises(CorpusError, match="eval speakers also in train"):
        real_corpus.check_speaker_disjoint(leaked)


def _fake_index() -> dict[str, list[real_corpus.Utterance]]:
    return {
        s.speaker_id: [
            real_corpus.Utterance(s.speaker_id, f"{s.speaker_id}/{i}.ogg", 0, 32000)
            for i in range(40)
        ]
        for s in SPEAKERS
    }


def test_plan_balances_languages_and_keeps_unseen_attacks_out_of_training() -> None:
    settings = real_corpus.RealCorpusSettings(seed=1, train=120, dev=40, eval=60)
    files = real_corpus.plan(settings, _fake_index())
    for split in SPLITS:
        per_language = Counter((f.speaker.language, f.label) for f in files[split])
        for language in {lang for lang, _ in per_language}:
            assert per_language[(language, "bonafide")] == per_language[(language, "spoof")]
    assert not {f.system_id for f in files["train"]} & {"A04", "A08"}
    assert {"A04", "A08"} <= {f.system_id for f in files["eval"]}
    assert all(
        f.speaker.language == "en-us" for s in SPLITS for f in files[s] if f.system_id == "A06"
    )
    assert real_corpus.plan(settings, _fake_index()) == files  # deterministic


def test_plan_refuses_more_utterances_than_the_packages_hold() -> None:
    settings = real_corpus.RealCorpusSettings(seed=1, train=1000, dev=40, eval=60)
    with pytest.raises(CorpusError, match="usable utterances"):
        real_corpus.plan(settings, _fake_index())


def test_cli_refuses_an_unknown_size_with_the_choices() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "train.demo_corpus", "--size", "huge", "--out", "/nonexistent"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "default, large, small, tiny" in done.stderr and "'huge'" in done.stderr
