"""A tiny raw-waveform CNN as fp32 and full-int8 TFLite, to check the runtimes under emulation.

It has the shape of the real model's graph (1-D convolutions with ReLU on a [1, 16000] float
window, pooling, a dense layer to two logits) so the same kernels run, but it is built in a few
seconds with tensorflow and needs no trained bundle. Desktop only (tensorflow); the files it
writes are read by `scripts/arm/probe.py` on x86 and under qemu.

    python scripts/arm/tiny_model.py --out DIR --window-samples 16000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SEED = 7
REPO = Path(__file__).resolve().parents[2]


def build(window_samples: int, out_dir: Path) -> dict[str, str]:
    import tensorflow as tf

    if str(REPO) not in sys.path:  # run as a script: scripts/arm/ is on the path, not the repo
        sys.path.insert(0, str(REPO))
    from convert.int8 import configure_full_int8

    rng = np.random.default_rng(SEED)

    def weight(*shape: int) -> tf.Variable:
        fan_in = int(np.prod(shape[:-1]))
        values = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
        return tf.Variable(values)

    class TinyCnn(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1, self.b1 = weight(64, 1, 8), tf.Variable(np.full(8, 0.01, np.float32))
            self.w2, self.b2 = weight(8, 8, 16), tf.Variable(np.full(16, 0.01, np.float32))
            self.w3, self.b3 = weight(4, 16, 16), tf.Variable(np.zeros(16, np.float32))
            self.dense = weight(16, 2)
            self.dense_bias = tf.Variable(np.array([0.1, -0.1], np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, window_samples], tf.float32)])
        def __call__(self, x: tf.Tensor) -> tf.Tensor:
            h = tf.reshape(x, [1, window_samples, 1])  # (batch, samples, channels)
            h = tf.nn.relu(tf.nn.conv1d(h, self.w1, stride=8, padding="VALID") + self.b1)
            h = tf.nn.max_pool1d(h, 4, 4, "VALID")
            h = tf.nn.relu(tf.nn.conv1d(h, self.w2, stride=2, padding="SAME") + self.b2)
            h = tf.nn.relu(tf.nn.conv1d(h, self.w3, stride=2, padding="SAME") + self.b3)
            h = tf.reduce_mean(h, axis=1)  # (batch, 16)
            return tf.matmul(h, self.dense) + self.dense_bias  # (batch, 2) logits

    model = TinyCnn()
    concrete = model.__call__.get_concrete_function()

    def representative():
        # Normalized windows (peak 1.0), like the front end feeds the model.
        for _ in range(16):
            x = rng.normal(0, 0.3, size=(1, window_samples)).astype(np.float32)
            yield [x / np.max(np.abs(x))]

    out_dir.mkdir(parents=True, exist_ok=True)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    (out_dir / "tiny_fp32.tflite").write_bytes(converter.convert())

    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    configure_full_int8(converter, representative)
    (out_dir / "tiny_int8.tflite").write_bytes(converter.convert())
    return {"fp32": str(out_dir / "tiny_fp32.tflite"), "int8": str(out_dir / "tiny_int8.tflite")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--window-samples", type=int, default=16000)
    args = parser.parse_args()
    print(json.dumps(build(args.window_samples, args.out)))


if __name__ == "__main__":
    main()
