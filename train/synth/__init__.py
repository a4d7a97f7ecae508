"""Building blocks of the built-in demo corpus: speech, vocoders, channel, cue checks."""
