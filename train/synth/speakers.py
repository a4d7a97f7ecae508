"""The synthetic speakers of the demo corpus: an espeak-ng language and voice variant each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _words(text: str) -> list[str]:
    """A word list written as one space-separated string."""
    return text.split()


ENGLISH = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029")
WORD_LIST_LANGUAGES = ("de", "fr", "fr-be", "es", "es-419", "it", "nl", "pt", "pt-br")
OTHER_LANGUAGES = _words(
    "sv da nb fi et hu pl cs sk sl hr ro ca eu tr id ms sw af cy is lt lv eo la mt sq "
    "ru uk bg el hi bn ta ar he fa ja cmn ko th vi ka hy kk"
)

VARIANTS = _words(
    "f1 f2 f3 f4 f5 m1 m2 m3 m4 m5 m6 m7 m8 klatt klatt2 klatt3 klatt4 klatt6 croak "
    "Alex Alicia Andrea Andy Annie Denis Diogo Gene Henrique Hugo Jacky Lee Marco Mario "
    "Michael Mike Nguyen Reed adam anika antonio aunty belinda benjamin boris caleb david "
    "ed edward grandma grandpa gustave ian iven iven2 iven3 john kaukovalta linda marcelo "
    "max michel miguel norbert pablo paul pedro quincy rob robert sandro shelby steph "
    "steph2 travis victor zac"
)
"""espeak-ng voice variants used (the gimmicks with echo or robot effects are left out)."""


@dataclass(frozen=True)
class Speaker:
    """A voice identity: protocol id, espeak language + variant, and its base prosody."""

    speaker_id: str
    language: str
    variant: str
    pitch: int  # espeak 0-100, 50 = the variant's own
    pitch_range: int  # espeak 0-100
    rate_wpm: int

    @property
    def voice(self) -> str:
        return f"{self.language}+{self.variant}"


def draw_speakers(counts: dict[str, int], rng: np.random.Generator) -> dict[str, list[Speaker]]:
    """Disjoint speakers per split (no language+variant pair is reused anywhere)."""
    total = sum(counts.values())
    available = (len(ENGLISH) + len(WORD_LIST_LANGUAGES) + len(OTHER_LANGUAGES)) * len(VARIANTS)
    if total > available // 2:
        raise ValueError(
            f"asked for {total} speakers; at most {available // 2} distinct voices are drawn"
        )
    groups = (ENGLISH, WORD_LIST_LANGUAGES, tuple(OTHER_LANGUAGES))
    weights = np.array([0.35, 0.35, 0.30])
    used: set[tuple[str, str]] = set()
    speakers: dict[str, list[Speaker]] = {}
    number = 0
    for split, count in counts.items():
        speakers[split] = []
        for _ in range(count):
            while True:
                group = groups[rng.choice(len(groups), p=weights)]
                pair = (group[rng.integers(len(group))], VARIANTS[rng.integers(len(VARIANTS))])
                if pair not in used:
                    break
            used.add(pair)
            number += 1
            speakers[split].append(
                Speaker(
                    speaker_id=f"LA_{number:04d}",
                    language=pair[0],
                    variant=pair[1],
                    pitch=int(rng.integers(25, 76)),
                    pitch_range=int(rng.integers(20, 81)),
                    rate_wpm=int(rng.integers(135, 211)),
                )
            )
    return speakers
