"""The full-integer int8 converter settings, in one place, and what they were when one ran.

The converter (`convert.tflite.quantize_int8`), the test fixtures and the Arm harness's tiny
model all set up TensorFlow's TFLiteConverter with `configure_full_int8`, and the bundle's
manifest records `converter_settings` read back from the converter that produced its file
(not a description that could drift from the code).

TensorFlow is imported lazily: this module imports on machines without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

RepresentativeDataset = Callable[[], Iterable[list[np.ndarray]]]


def configure_full_int8(converter: Any, representative_dataset: RepresentativeDataset) -> Any:
    """Full integer quantization: int8 kernels only, int8 input and output.

    Optimize.DEFAULT with a representative dataset (the calibration windows, fed as
    [1, window_samples] float32 like the device's normalized windows), TFLITE_BUILTINS_INT8 as
    the only op set (the conversion fails rather than leave a float op), and int8 input and
    output tensors (the device quantizes the window and dequantizes the logits itself).
    Convolution weights stay per-channel (TensorFlow's default); fully connected weights get
    one scale per tensor. Every per-channel tensor carries a float32 scale and an int64 zero
    point per unit, for the weights and again for the int32 bias (12 bytes per unit); the
    squeeze-excitation and pooling layers' 362 units cost 8.7 KB of a 215 KB file that way,
    and per-tensor scales left the demo bundle's int8 agreement with torch at 99.6% (99.3%
    per-channel; docs/convert.md). Returns the converter.
    """
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    converter.representative_dataset = representative_dataset
    converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    return converter


def converter_settings(converter: Any) -> dict[str, Any]:
    """The quantization settings a converter holds, read back from it (JSON-ready)."""
    disable_per_channel = getattr(converter, "_experimental_disable_per_channel", None)
    return {
        "optimizations": sorted(o.name for o in converter.optimizations),
        "supported_ops": sorted(op.name for op in converter.target_spec.supported_ops),
        "inference_input_type": converter.inference_input_type.name,
        "inference_output_type": converter.inference_output_type.name,
        "representative_dataset": converter.representative_dataset is not None,
        "per_channel_weights": None if disable_per_channel is None else not disable_per_channel,
        "per_channel_dense_weights": not getattr(
            converter, "_experimental_disable_per_channel_quantization_for_dense_layers", False
        ),
    }
