"""The deterministic seeded split for layouts that publish none.

Rule (also in docs/datasets.md):

1. Groups. By speaker when every record has one and there are at least
   `MIN_SPEAKERS_FOR_DISJOINT` of them (or `split_by="speaker"`): each speaker's records stay
   in one split, so no voice is in both train and eval. Otherwise (`split_by="file"`, or
   speakers unknown) every file is its own group, and each label is split on its own, so both
   splits keep the label balance.
2. Order. Groups are sorted by sha256("<seed>:<group key>"): a fixed shuffle that depends only
   on the seed and the names, not on listing order or the platform.
3. Cut. Walking that order, a group goes to train while the middle of its run of records is
   below train_fraction x total, then to dev below (train + dev) x total, then to eval.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from train.data.common import Item, ReadOptions
from train.data.records import Record, Split

MIN_SPEAKERS_FOR_DISJOINT = 10
"""Fewer speakers than this cannot give three sensible speaker-disjoint splits."""


def _order_key(seed: int, key: str) -> tuple[str, str]:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest(), key


def _cut(groups: dict[str, list[Item]], options: ReadOptions) -> dict[str, Split]:
    total = sum(len(members) for members in groups.values())
    train_fraction, dev_fraction, _ = options.split_fractions
    train_end = train_fraction * total
    dev_end = (train_fraction + dev_fraction) * total
    assignment: dict[str, Split] = {}
    before = 0
    for key in sorted(groups, key=lambda k: _order_key(options.seed, k)):
        size = len(groups[key])
        middle = before + size / 2
        assignment[key] = "train" if middle < train_end else "dev" if middle < dev_end else "eval"
        before += size
    return assignment


def grouping(items: list[Item], options: ReadOptions) -> str:
    """'speaker' or 'file': how the seeded split groups these items (see the module rule)."""
    if options.split_by != "auto":
        return options.split_by
    speakers = {item.speaker for item in items}
    if all(item.speaker for item in items) and len(speakers) >= MIN_SPEAKERS_FOR_DISJOINT:
        return "speaker"
    return "file"


def assign_splits(
    items: list[Item], options: ReadOptions
) -> tuple[list[Record], dict[str, object]]:
    """Records in input order; items that came with a split keep it, the rest get the seeded one.

    Returns the records and a description of the rule applied (for the summary).
    """
    pending = [item for item in items if item.split is None]
    rule: dict[str, object] = {"published_or_folder_splits": len(items) - len(pending)}
    split_of: dict[int, Split] = {}
    if pending:
        by = grouping(pending, options)
        strata: dict[str, dict[str, list[Item]]] = defaultdict(lambda: defaultdict(list))
        for item in pending:
            if by == "speaker" and item.speaker:
                strata["all"][f"speaker:{item.speaker}"].append(item)
            elif by == "speaker":
                strata["all"][f"file:{item.path}"].append(item)
            else:
                strata[item.label][f"file:{item.path}"].append(item)
        for groups in strata.values():
            for key, split in _cut(groups, options).items():
                for item in groups[key]:
                    split_of[id(item)] = split
        rule.update(
            {
                "seeded_split": len(pending),
                "split_by": by,
                "seed": options.seed,
                "split_fractions": list(options.split_fractions),
            }
        )
    records = [
        Record(
            path=item.path,
            label=item.label,
            speaker=item.speaker,
            attack=item.attack,
            split=item.split if item.split is not None else split_of[id(item)],
            utterance_id=item.utterance_id,
        )
        for item in items
    ]
    return records, rule
