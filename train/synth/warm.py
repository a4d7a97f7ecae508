"""Imported by the demo corpus's fork server only: fills the numeric caches once.

Worker processes fork from that server (one per task, so that espeak-ng starts from
its initial state each time) and inherit the filled caches instead of recomputing
filter designs, mel pseudo-inverses and FFT plans in every task.
"""

from __future__ import annotations

from device.audio import SAMPLE_RATE
from train.synth.channel import warm_filter_cache
from train.synth.vocoders import warm_caches

warm_filter_cache(SAMPLE_RATE)
warm_caches(SAMPLE_RATE)
