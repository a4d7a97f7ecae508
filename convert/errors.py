"""Exceptions of the convert stage: each names the file or step and what differed."""

from __future__ import annotations


class ConversionError(RuntimeError):
    """A conversion step that did not produce what it should have (file, shape, tool exit)."""


class RunDirectoryError(ValueError):
    """A training run directory that cannot be converted: missing or malformed checkpoint."""


class CalibrationError(ValueError):
    """Not enough real, non-silent windows to calibrate int8, or a class/attack missing."""
