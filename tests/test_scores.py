"""device.scores: the one score contract (P(spoof), margin, window selection, aggregation)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from device.bundle import LABELS as BUNDLE_LABELS
from device.scores import (
    LABELS,
    file_logits,
    p_spoof,
    p_spoof_from_margin,
    select_windows,
    spoof_margin,
)
from train.scoring import asvspoof_score


def max_shifted_softmax_spoof(logits: np.ndarray) -> np.ndarray:
    """The textbook stable softmax, written out: the reference the contract must equal."""
    x = np.asarray(logits, dtype=np.float64)
    exp = np.exp(x - x.max(axis=-1, keepdims=True))
    return exp[..., 1] / exp.sum(axis=-1)


@pytest.mark.parametrize("scale", [0.01, 1.0, 8.0, 60.0, 400.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_p_spoof_is_the_max_shifted_softmax_bit_for_bit(scale: float, dtype: type) -> None:
    logits = np.random.default_rng(7).normal(scale=scale, size=(20000, 2)).astype(dtype)
    np.testing.assert_array_equal(p_spoof(logits), max_shifted_softmax_spoof(logits))


def test_p_spoof_keeps_the_shape_and_the_label_order() -> None:
    assert LABELS == BUNDLE_LABELS == ("bonafide", "spoof")
    assert p_spoof(np.array([0.3, 2.3])).shape == ()
    assert float(p_spoof(np.array([0.3, 2.3]))) == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-15)
    assert p_spoof(np.zeros((3, 4, 2))).shape == (3, 4)
    assert float(p_spoof(np.array([5.0, -5.0]))) < 0.5 < float(p_spoof(np.array([-5.0, 5.0])))
    with pytest.raises(ValueError, match=r"last axis holds 2 values.*shape \(3,\)"):
        p_spoof(np.zeros(3))


def test_margin_extremes_neither_overflow_nor_lose_order() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = p_spoof_from_margin(np.array([-np.inf, -700.0, -40.0, 0.0, 40.0, 800.0, np.inf]))
    assert p[0] == 0.0 and p[-1] == 1.0 and p[3] == 0.5
    assert 0.0 < p[1] < p[2] < p[3] < p[4] <= p[5] == 1.0
    assert spoof_margin(np.array([[1.0, 3.5]])).tolist() == [2.5]
    assert asvspoof_score(np.array([1.0, 3.5])) == -2.5  # higher = more bona fide


def test_window_selection_and_file_logits() -> None:
    assert select_windows(np.array([True, False, True, False])).tolist() == [1, 3]
    assert select_windows(np.array([True, True])).tolist() == [0, 1]
    logits = np.array([[0.0, 4.0], [1.0, -2.0]], dtype=np.float32)
    np.testing.assert_array_equal(file_logits(logits), [0.5, 1.0])
    assert file_logits(logits).dtype == np.float64
    with pytest.raises(ValueError, match=r"\(n >= 1, 2\), got \(0, 2\)"):
        file_logits(np.zeros((0, 2)))
