"""PyTorch -> ONNX: a batch-1 `[1, window_samples]` graph, checked and compared on real windows."""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convert.errors import ConversionError

ONNX_INPUT_NAME = "waveform"
ONNX_OUTPUT_NAME = "logits"
ONNX_OPSET = 17
"""Opset 17: what onnx2tf 1.29 and onnxruntime 1.23 both handle fully."""

ONNX_MAX_LOGIT_DIFF = 1e-4
"""onnxruntime against PyTorch on real windows: the largest allowed logit difference."""


@dataclass(frozen=True)
class OnnxCheck:
    windows: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_logit_diff <= self.tolerance


TORCH_THREADS = 1
"""PyTorch threads while scoring. One: on a shared 2-core machine (or next to the onnx2tf
process) a second OpenMP thread spin-waits and made scoring 5-20x slower, measured."""


def torch_logits(model: nn.Module, windows: np.ndarray, batch_windows: int = 8) -> np.ndarray:
    """(n, window_samples) float32 -> (n, 2) float32 logits, model in eval mode, no grad."""
    model.eval()
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        with torch.inference_mode():
            for start in range(0, windows.shape[0], batch_windows):
                batch = windows[start : start + batch_windows]
                batch = torch.from_numpy(np.ascontiguousarray(batch))
                out.append(model(batch).numpy().astype(np.float32))
    finally:
        torch.set_num_threads(threads)
    if not out:
        return np.zeros((0, 2), dtype=np.float32)
    return np.concatenate(out, axis=0)


def export_onnx(model: nn.Module, window_samples: int, path: str | Path) -> Path:
    """Export in eval mode with a fixed [1, window_samples] float32 input (BatchNorm folded).

    The TorchScript exporter (dynamo=False) gives a plain graph of standard ops with
    BatchNorm folded into the convolutions, which onnx2tf converts op for op.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = torch.zeros(1, window_samples, dtype=torch.float32)
    captured = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(captured), redirect_stderr(captured):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[ONNX_INPUT_NAME],
            output_names=[ONNX_OUTPUT_NAME],
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    if not path.is_file():
        raise ConversionError(f"{path}: torch.onnx.export returned but wrote no file")
    check_onnx(path, window_samples)
    return path


def check_onnx(path: str | Path, window_samples: int) -> None:
    """onnx.checker (full check, with shape inference) plus the I/O shapes the bundle needs."""
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise ConversionError(f"{path}: onnx.checker refused the model: {error}") from error
    model = onnx.load(str(path))
    inputs = [(i.name, _dims(i)) for i in model.graph.input]
    outputs = [(o.name, _dims(o)) for o in model.graph.output]
    if inputs != [(ONNX_INPUT_NAME, [1, window_samples])]:
        raise ConversionError(
            f"{path}: expected one input {ONNX_INPUT_NAME!r} shaped [1, {window_samples}], got "
            f"{inputs}"
        )
    if outputs != [(ONNX_OUTPUT_NAME, [1, 2])]:
        raise ConversionError(
            f"{path}: expected one output {ONNX_OUTPUT_NAME!r} shaped [1, 2], got {outputs}"
        )


def _dims(value_info) -> list[int]:
    return [
        int(d.dim_value) if d.HasField("dim_value") else -1
        for d in value_info.type.tensor_type.shape.dim
    ]


class OnnxRuntimePredictor:
    """onnxruntime on the batch-1 graph: windows are run one at a time, single thread."""

    def __init__(self, path: str | Path, num_threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        windows = np.asarray(windows, dtype=np.float32)
        out = np.empty((windows.shape[0], 2), dtype=np.float32)
        for i in range(windows.shape[0]):
            out[i] = self.session.run(None, {ONNX_INPUT_NAME: windows[i : i + 1]})[0][0]
        return out


def compare_onnxruntime(model: nn.Module, onnx_path: str | Path, windows: np.ndarray) -> OnnxCheck:
    """onnxruntime vs PyTorch logits on the given real windows."""
    if windows.shape[0] == 0:
        raise ConversionError("no windows to compare onnxruntime with PyTorch on")
    reference = torch_logits(model, windows)
    candidate = OnnxRuntimePredictor(onnx_path)(windows)
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    return OnnxCheck(
        windows=int(windows.shape[0]),
        max_abs_logit_diff=float(diff.max()),
        mean_abs_logit_diff=float(diff.mean()),
        tolerance=ONNX_MAX_LOGIT_DIFF,
    )
