"""The one record type every dataset reader produces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Label = Literal["bonafide", "spoof"]
Split = Literal["train", "dev", "eval"]
LABELS: tuple[Label, ...] = ("bonafide", "spoof")
SPLITS: tuple[Split, ...] = ("train", "dev", "eval")
BONAFIDE_ATTACK = "bonafide"
"""Attack id used for bona fide records (ASVspoof protocols write '-')."""


@dataclass(frozen=True)
class Record:
    """One utterance: where it is, what it is, and which split it belongs to."""

    path: str
    label: Label
    speaker: str
    attack: str  # system id such as "A07"; "bonafide" for bona fide speech
    split: Split
    utterance_id: str = ""

    @property
    def target(self) -> int:
        """Class index used by the model: 0 = bonafide, 1 = spoof."""
        return LABELS.index(self.label)
