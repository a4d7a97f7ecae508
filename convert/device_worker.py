"""Score windows with a bundle in another device venv (tflite-runtime 2.14, LiteRT 2.3).

Run by the parity gate as ``<venv>/bin/python -m convert.device_worker ...`` from the
repository root. It imports only numpy and `device`: the device venvs hold nothing else.
Writes ``logits_<format>.npy`` per format and ``info.json`` (runtime, versions).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

from device.bundle import load_bundle
from device.runtime import Scorer, find_interpreter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convert.device_worker")
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--windows", required=True, type=Path, help="(n, window_samples) .npy")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--formats", default="fp32,int8")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    windows = np.load(args.windows, mmap_mode="r")  # shared with the other workers
    bundle = load_bundle(args.bundle)
    runtime = find_interpreter()
    info = {
        "runtime": runtime.module,
        "runtime_version": runtime.version,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "executable": sys.executable,
    }
    for model_format in args.formats.split(","):
        scorer = Scorer(bundle, model_format, num_threads=args.threads, runtime=runtime)
        np.save(args.out_dir / f"logits_{model_format}.npy", scorer.score_windows(windows))
    (args.out_dir / "info.json").write_text(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
