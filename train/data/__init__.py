"""Dataset readers: every supported layout becomes one list of `Record`s.

    from train.data import load_dataset
    dataset = load_dataset("asvspoof2019", "data/demo/LA")
    train = dataset.split("train")

See docs/datasets.md for the layouts, the seeded split rule and what is skipped.
"""

from train.data.common import AUDIO_EXTENSIONS, UNKNOWN_ATTACK, ReadOptions
from train.data.dataset import Dataset, Problem
from train.data.errors import (
    DatasetError,
    DatasetOptionError,
    EmptyDatasetError,
    EmptyProtocolError,
    LayoutError,
    MalformedLineError,
    MissingAudioError,
    UnknownLabelError,
)
from train.data.formats import FORMATS, DatasetFormat, ReaderSettings, load_dataset, read_dataset
from train.data.records import BONAFIDE_ATTACK, LABELS, SPLITS, Record

__all__ = [
    "AUDIO_EXTENSIONS",
    "BONAFIDE_ATTACK",
    "FORMATS",
    "LABELS",
    "SPLITS",
    "UNKNOWN_ATTACK",
    "Dataset",
    "DatasetError",
    "DatasetFormat",
    "DatasetOptionError",
    "EmptyDatasetError",
    "EmptyProtocolError",
    "LayoutError",
    "MalformedLineError",
    "MissingAudioError",
    "Problem",
    "ReadOptions",
    "ReaderSettings",
    "Record",
    "UnknownLabelError",
    "load_dataset",
    "read_dataset",
]
