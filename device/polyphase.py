"""scipy's polyphase resampling filter and its compiled `upfirdn` kernel, without `scipy.signal`.

`scipy.signal.resample_poly` is a Kaiser-windowed sinc low-pass (20 * max(up, down) + 1
taps, beta 5) applied by `upfirdn`, a small compiled kernel. Importing it the usual way runs
`scipy/signal/__init__.py`, which loads scipy.stats, interpolate, optimize, spatial, linalg,
special and fft: 76 MiB of memory and 0.9-1.4 s on this machine's idle core, measured with
`/proc/self/status` after `import numpy`, for a function that needs none of them. On a
512 MB Pi Zero 2 W that is most of the agent's memory.

So the device designs the filter here with numpy (the same formula as `scipy.signal.firwin`
with `window=("kaiser", 5.0)`: its taps agree with scipy's to 1.1e-16, the last float64
bit of a few taps, because numpy's `i0` and scipy.special's differ there) and runs it
through scipy's own compiled kernel, `scipy/signal/_upfirdn_apply`, loaded from its file
without the package's `__init__`: numpy plus about 3 MiB, 0.1 s. If that private module
cannot be loaded or does not answer a known case correctly (a scipy release that moved it),
the public `scipy.signal.upfirdn` is used instead: the same numbers, only the import cost
comes back, and `kernel_source()` says which one runs.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KAISER_BETA = 5.0
"""scipy.signal.resample_poly's default window: ("kaiser", 5.0)."""

_KERNEL_MODULE = "scipy.signal._upfirdn_apply"


@dataclass(frozen=True)
class _Backend:
    """What runs upfirdn in this process: scipy's kernel module on its own, or else the
    public scipy.signal.upfirdn, and a line saying which (and why)."""

    kernel: Any  # the loaded _upfirdn_apply module, or None
    fallback: Callable[..., np.ndarray] | None
    source: str


def lowpass_taps(up: int, down: int) -> np.ndarray:
    """The anti-aliasing filter `resample_poly(x, up, down)` designs, times `up`, float64.

    firwin(2 * half_len + 1, 1 / max_rate, window=("kaiser", 5.0)), half_len = 10 * max_rate:
    a windowed sinc with its cut-off at the lower Nyquist, scaled to unit gain at DC.
    """
    max_rate = max(int(up), int(down))
    cutoff = 1.0 / max_rate
    num_taps = 2 * 10 * max_rate + 1
    m = np.arange(num_taps, dtype=np.float64) - 0.5 * (num_taps - 1)
    taps = cutoff * np.sinc(cutoff * m)
    taps *= np.kaiser(num_taps, KAISER_BETA)
    taps /= np.sum(taps)
    return taps * int(up)


@functools.cache
def _backend() -> _Backend:
    """Load scipy's compiled upfirdn kernel from its file once, or fall back to scipy.signal."""
    registered_here = False
    try:
        module = sys.modules.get(_KERNEL_MODULE)
        if module is None:
            module = _load_kernel_file()
            # Registered under its own name, so a later `import scipy.signal` (training,
            # the denoiser) reuses this module instead of initialising the extension again.
            sys.modules[_KERNEL_MODULE] = module
            registered_here = True
        # A known case: [1, 1, 1] filtering [1, 2, 3] at up 1, down 1 is [1, 3, 6, 5, 3].
        check = _apply_kernel(
            module, flip_phases(np.ones(3), 1), 3, np.array([1.0, 2.0, 3.0]), 1, 1
        )
        if check.tolist() != [1.0, 3.0, 6.0, 5.0, 3.0]:
            raise ValueError(f"the kernel answered {check.tolist()} for a known case")
        return _Backend(
            module, None, f"{_KERNEL_MODULE} (scipy's compiled upfirdn, loaded on its own)"
        )
    except (ImportError, OSError, AttributeError, TypeError, ValueError) as error:
        problem = f"{type(error).__name__}: {error}"
    if registered_here:  # leave scipy.signal's own import of it to scipy
        del sys.modules[_KERNEL_MODULE]
    from scipy.signal import upfirdn  # the public path: same numbers, full import

    return _Backend(
        None, upfirdn, f"scipy.signal.upfirdn (the private kernel did not load: {problem})"
    )


def _load_kernel_file() -> Any:
    """scipy/signal/_upfirdn_apply loaded from its file, without scipy/signal/__init__.py."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scipy is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "signal"
    files = [
        folder / f"_upfirdn_apply{suffix}"
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if (folder / f"_upfirdn_apply{suffix}").is_file()
    ]
    if not files:
        raise ImportError(f"no compiled _upfirdn_apply in {folder}")
    loader = importlib.machinery.ExtensionFileLoader(_KERNEL_MODULE, str(files[0]))
    module_spec = importlib.util.spec_from_file_location(_KERNEL_MODULE, files[0], loader=loader)
    if module_spec is None:
        raise ImportError(f"cannot load {files[0]}")
    module = importlib.util.module_from_spec(module_spec)
    loader.exec_module(module)
    return module


def _apply_kernel(
    kernel: Any, h_trans_flip: np.ndarray, taps_len: int, x: np.ndarray, up: int, down: int
) -> np.ndarray:
    """scipy.signal._upfirdn._UpFIRDn.apply_filter for a 1-D float64 signal."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.zeros(int(kernel._output_len(taps_len, x.shape[0], up, down)), dtype=np.float64)
    kernel._apply(x, h_trans_flip, out, up, down, 0, kernel.mode_enum("constant"), 0.0)
    return out


def flip_phases(taps: np.ndarray, up: int) -> np.ndarray:
    """The taps in the kernel's layout: one flipped row per phase, zero-padded (as
    scipy.signal._upfirdn._pad_h), computed once per filter instead of once per call."""
    padded = np.zeros(taps.size + (-taps.size % up), dtype=np.float64)
    padded[: taps.size] = taps
    return np.ascontiguousarray(padded.reshape(-1, up).T[:, ::-1].ravel())


class Upfirdn:
    """One filter at one (up, down), applied to 1-D float64 signals as scipy's upfirdn does
    (zero-padded ends, full-length output)."""

    def __init__(self, taps: np.ndarray, up: int, down: int) -> None:
        self._backend = _backend()
        self.taps = np.asarray(taps, dtype=np.float64)
        self.up, self.down = int(up), int(down)
        self._h_trans_flip = flip_phases(self.taps, self.up)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        kernel, fallback = self._backend.kernel, self._backend.fallback
        if kernel is not None:
            return _apply_kernel(kernel, self._h_trans_flip, self.taps.size, x, self.up, self.down)
        return np.asarray(fallback(self.taps, np.asarray(x, np.float64), self.up, self.down))


def kernel_source() -> str:
    """Which upfirdn runs: scipy's kernel on its own, or scipy.signal.upfirdn and why."""
    return _backend().source
