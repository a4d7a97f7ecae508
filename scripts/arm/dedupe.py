"""Hard-link files that are byte-identical at the same relative path in two directory trees.

    python scripts/arm/dedupe.py REFERENCE_DIR OTHER_DIR

Used by scripts/arm/build-env.sh: the LiteRT and tflite-runtime sites of the emulated
environment share most of their wheels (scipy, soundfile, cffi). Prints the bytes saved.
"""

from __future__ import annotations

import filecmp
import os
import sys
from pathlib import Path


def dedupe(reference: Path, other: Path) -> int:
    """Replace files of `other` by hard links to identical files of `reference`; bytes saved."""
    saved_bytes = 0
    for path in sorted(other.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        twin = reference / path.relative_to(other)
        if twin.is_symlink() or not twin.is_file():
            continue
        mine, theirs = path.stat(), twin.stat()
        if mine.st_ino == theirs.st_ino or mine.st_size != theirs.st_size:
            continue
        if not filecmp.cmp(path, twin, shallow=False):
            continue
        link = path.with_name(path.name + ".dedupe-link")
        os.link(twin, link)
        os.replace(link, path)
        saved_bytes += mine.st_size
    return saved_bytes


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} REFERENCE_DIR OTHER_DIR")
    reference, other = Path(sys.argv[1]), Path(sys.argv[2])
    for directory in (reference, other):
        if not directory.is_dir():
            sys.exit(f"error: expected a directory, got {directory}")
    saved_bytes = dedupe(reference, other)
    print(f"dedupe: {saved_bytes / 1e6:.0f} MB shared between {reference.name} and {other.name}")


if __name__ == "__main__":
    main()
