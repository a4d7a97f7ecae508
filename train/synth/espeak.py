"""Offline speech from the libespeak-ng bundled with `espeakng-loader`, through ctypes.

espeak-ng draws noise from its own generator, seeded from `time()` when the library
starts, and its Klatt voices from libc's `rand()`; both are seeded per utterance here
(`espeak_ng_SetRandSeed`, `srand`). It also keeps static synthesis state between
utterances that `espeak_Terminate` does not reset: the same text after a different one
can come out differently. So an utterance is a deterministic function of the sequence
of calls made in its process since the library was loaded, and the demo corpus
synthesizes a fixed list of utterances per fresh worker process: same list, same
seeds -> same samples, on any run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import numpy as np

ESPEAK_SAMPLE_RATE = 22050
"""libespeak-ng's output rate in Hz."""

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7
_PHONEMES_IPA = 0x02

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(RuntimeError):
    """libespeak-ng could not be loaded or refused a request."""


@dataclass(frozen=True)
class VoiceSettings:
    """One espeak request: voice name ('en+f3'), words per minute, pitch and range (0-100)."""

    voice: str
    rate_wpm: int
    pitch: int
    pitch_range: int
    word_gap_10ms: int = 0


class Espeak:
    """A loaded libespeak-ng in synchronous mode. One per process (the library is global)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as error:
            raise EspeakError(
                "the demo corpus needs espeakng-loader (pip extra 'train'): "
                "pip install 'clad-edge[train]'"
            ) from error
        library_path = espeakng_loader.get_library_path()
        try:
            self._lib = ctypes.CDLL(library_path)
        except OSError as error:
            raise EspeakError(f"cannot load libespeak-ng from {library_path}: {error}") from error
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self._libc = ctypes.CDLL(libc_name)
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        try:
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_ng_SetRandSeed.restype = None
        except AttributeError as error:
            raise EspeakError(
                f"libespeak-ng at {library_path} has no espeak_ng_SetRandSeed (needs "
                "espeak-ng 1.52 or later); its noise could not be made reproducible"
            ) from error
        data_path = espeakng_loader.get_data_path()
        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if sample_rate != ESPEAK_SAMPLE_RATE:
            raise EspeakError(
                f"libespeak-ng at {library_path} initialised at {sample_rate} Hz; "
                f"expected {ESPEAK_SAMPLE_RATE} Hz (data at {data_path})"
            )
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes._Pointer, num_samples: int, _events: int) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def synthesize(self, text: str, settings: VoiceSettings, noise_seed: int) -> np.ndarray:
        """Speak `text`; int16 samples at 22.05 kHz. `noise_seed` seeds espeak's noise (libc rand)."""
        lib = self._lib
        if lib.espeak_SetVoiceByName(settings.voice.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {settings.voice!r}")
        for parameter, value in (
            (_PARAM_RATE, settings.rate_wpm),
            (_PARAM_PITCH, settings.pitch),
            (_PARAM_RANGE, settings.pitch_range),
            (_PARAM_VOLUME, 100),
            (_PARAM_WORDGAP, settings.word_gap_10ms),
        ):
            lib.espeak_SetParameter(parameter, int(value), 0)
        # espeak-ng seeds its own generator from time() at start-up; Klatt voices use rand()
        lib.espeak_ng_SetRandSeed(noise_seed & 0x7FFFFFFF)
        self._libc.srand(ctypes.c_uint(noise_seed & 0xFFFFFFFF))
        self._chunks = []
        encoded = text.encode("utf-8") + b"\0"
        status = lib.espeak_Synth(
            encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        lib.espeak_Synchronize()
        if status != 0:
            raise EspeakError(f"espeak_Synth returned {status} for voice {settings.voice!r}")
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks)

    def phonemes(self, text: str, voice: str) -> str:
        """`text` as IPA phonemes by the letter-to-sound rules of `voice` (one clause a chunk)."""
        lib = self._lib
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {voice!r}")
        buffer = ctypes.c_char_p(text.encode("utf-8"))
        pointer = ctypes.pointer(buffer)
        clauses = []
        while buffer.value:
            clause = lib.espeak_TextToPhonemes(pointer, _CHARS_UTF8, _PHONEMES_IPA)
            if clause is None:
                break
            clauses.append(clause.decode("utf-8"))
        return " ".join(c for c in clauses if c)
