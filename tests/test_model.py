"""CLAD: shapes, the parameter/MAC budget, int8-friendly structure, checkpoints."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    model_from_checkpoint,
    save_checkpoint,
)
from train.model import (
    MAX_MACS_PER_SECOND,
    MAX_PARAMETERS,
    ModelConfig,
    ModelConfigError,
    build_model,
    count_macs,
    count_parameters,
    sinc_bank,
    summarize,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("window_samples", [4000, 8000, 16000, 32000])
@pytest.mark.parametrize("frontend", ["learned", "sinc"])
def test_batch_of_windows_in_two_logits_out(window_samples: int, frontend: str) -> None:
    model = build_model(ModelConfig(window_samples=window_samples, frontend=frontend)).eval()
    with torch.no_grad():
        out = model(torch.randn(3, window_samples))
    assert out.shape == (3, 2)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_default_model_is_within_budget() -> None:
    summary = summarize(ModelConfig())
    assert summary.parameters <= MAX_PARAMETERS == 200_000
    assert summary.macs_per_second <= MAX_MACS_PER_SECOND == 60_000_000
    assert summary.within_budget()
    # The budget is per 1 s; a 2 s window costs twice the MACs of a 1 s one.
    double = summarize(ModelConfig(window_samples=32000))
    assert double.macs_per_window == pytest.approx(2 * summary.macs_per_window, rel=0.01)
    assert double.macs_per_second == summary.macs_per_second


def _hand_macs(config: ModelConfig) -> int:
    """Multiply-accumulates of CLAD written out layer by layer, independent of the hooks."""
    t = (config.window_samples - config.frontend_kernel) // config.frontend_stride + 1
    macs = t * config.frontend_channels * config.frontend_kernel
    t //= config.frontend_pool
    c_in = config.frontend_channels
    for c_out in config.block_channels:
        hidden = max(4, c_out // config.se_reduction)
        macs += t * c_out * c_in * 3 + t * c_out * c_out * 3  # two k=3 convs
        macs += c_out * hidden + hidden * c_out  # channel gate
        macs += t * c_out  # temporal gate (1x1 conv to one channel)
        if c_in != c_out:
            macs += t * c_out * c_in  # 1x1 skip conv
        t //= config.block_pool
        c_in = c_out
    macs += t * config.attention_hidden * c_in + t * config.attention_hidden  # score convs
    macs += t * c_in  # attention-weighted sum
    macs += c_in * 2  # head
    return macs


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(window_samples=8000, block_channels=(16, 16, 48)),
        ModelConfig(window_samples=24000, frontend="sinc", frontend_kernel=65, frontend_stride=4),
        ModelConfig(window_samples=8000, pooling="gated"),
    ],
)
def test_mac_counter_matches_the_layer_by_layer_formula(config: ModelConfig) -> None:
    assert count_macs(build_model(config)) == _hand_macs(config)


def test_parameter_count_counts_frozen_sinc_weights_too() -> None:
    learned = build_model(ModelConfig(frontend="learned"))
    sinc = build_model(ModelConfig(frontend="sinc"))
    assert count_parameters(learned) == count_parameters(sinc)
    assert not sinc.frontend.conv.weight.requires_grad
    assert learned.frontend.conv.weight.requires_grad


@pytest.mark.parametrize("frontend", ["learned", "sinc"])
@pytest.mark.parametrize("samples", [16000, 8000, 16004])
def test_front_end_in_phases_is_the_strided_convolution(frontend: str, samples: int) -> None:
    """The 8-phase x 17-tap form the model computes (one int8 XNNPACK conv with 8 input
    channels instead of 1) gives what the k129/s8 convolution gives; 16004 samples, not a
    multiple of the stride, takes the strided convolution itself."""
    torch.manual_seed(4)
    front = build_model(ModelConfig(frontend=frontend)).frontend
    x = torch.randn(3, 1, samples)
    with torch.no_grad():
        reference = front.conv(x)
        phased = front.strided_conv(x)
    assert phased.shape == reference.shape == (3, 32, (samples - 129) // 8 + 1)
    assert torch.allclose(phased, reference, atol=1e-5, rtol=1e-5)
    # eval mode folds the BatchNorm into that convolution
    with torch.no_grad():
        front.bn.running_mean.uniform_(-0.5, 0.5)
        front.bn.running_var.uniform_(0.5, 2.0)
        front.bn.weight.uniform_(0.5, 1.5)
        front.bn.bias.uniform_(-0.5, 0.5)
        front.eval()
        unfolded = front.pool(torch.relu(front.bn(front.conv(x))))
        assert torch.allclose(front(x), unfolded, atol=1e-5, rtol=1e-5)
    front.train()
    # the gradient reaches the same weights
    weight = front.conv.weight
    if weight.requires_grad:
        (grad_phased,) = torch.autograd.grad(front.strided_conv(x).square().sum(), weight)
        (grad_reference,) = torch.autograd.grad(front.conv(x).square().sum(), weight)
        assert torch.allclose(grad_phased, grad_reference, atol=1e-3, rtol=1e-4)


def test_sinc_filters_pass_their_own_band() -> None:
    bank = sinc_bank(channels=8, kernel=129).squeeze(1).numpy()
    response = np.abs(np.fft.rfft(bank, n=4096, axis=1))
    peak_bins = response.argmax(axis=1)
    # Mel-spaced bands: each filter peaks higher in frequency than the one before.
    assert np.all(np.diff(peak_bins) > 0)
    assert np.allclose(np.abs(bank).max(axis=1), 1.0)


def test_only_int8_friendly_layers() -> None:
    """ReLU family only, every convolution followed by BatchNorm or a gate, no float islands."""
    model = build_model(ModelConfig())
    allowed = (
        nn.Conv1d,
        nn.BatchNorm1d,
        nn.Linear,
        nn.MaxPool1d,
        nn.Dropout,
        nn.Identity,
        nn.Sequential,
        nn.ModuleList,
    )
    leaf_types = {
        type(m) for m in model.modules() if not list(m.children()) and not isinstance(m, allowed)
    }
    assert leaf_types == set(), f"unexpected layers {leaf_types}"
    forbidden = (nn.LayerNorm, nn.GELU, nn.SiLU, nn.GroupNorm, nn.Tanh, nn.Softplus)
    assert not any(isinstance(m, forbidden) for m in model.modules())


def test_onnx_export_folds_every_batchnorm_and_uses_simple_ops() -> None:
    onnx = pytest.importorskip("onnx")
    model = build_model(ModelConfig(window_samples=4000)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        torch.zeros(1, 4000),
        buffer,
        dynamo=False,
        input_names=["window"],
        output_names=["logits"],
        opset_version=17,
    )
    graph = onnx.load_from_string(buffer.getvalue()).graph
    ops = Counter(node.op_type for node in graph.node)
    assert "BatchNormalization" not in ops, "BatchNorm must fold into the convolutions"
    simple = {
        "Conv",
        "Relu",
        "MaxPool",
        "ReduceMean",
        "ReduceSum",
        "Gemm",
        "MatMul",
        "Mul",
        "Add",
        "Sigmoid",
        "Softmax",
        "Unsqueeze",
        "Reshape",
        "Transpose",
        "Constant",
        "Identity",
    }
    assert set(ops) <= simple, f"ops outside the int8-friendly set: {set(ops) - simple}"
    # the one Transpose splits the waveform into the front end's 8 phases: in the
    # channels-last TFLite graph that is a plain RESHAPE
    assert ops["Transpose"] == 1
    (graph_input,) = graph.input
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == [1, 4000]  # [batch, window_samples]: the channel axis is added inside


def test_gated_pooling_is_a_sigmoid_gated_mean_with_the_attention_weights() -> None:
    """Same parameters as the softmax pooling (a checkpoint's weights fit both), within
    budget, and no Softmax in the exported graph: the op XNNPACK cannot run in int8."""
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(2)
    attention = build_model(ModelConfig(window_samples=4000)).eval()
    gated = build_model(ModelConfig(window_samples=4000, pooling="gated")).eval()
    assert count_parameters(gated) == count_parameters(attention)
    gated.load_state_dict(attention.state_dict())
    assert summarize(ModelConfig(pooling="gated")).within_budget()

    frames = torch.randn(3, 128, 7)
    pool = gated.pool
    with torch.no_grad():
        scores = pool.conv2(torch.relu(pool.bn(pool.conv1(frames))))  # (3, 1, 7)
        expected = (frames * torch.sigmoid(scores)).sum(dim=2) / 7
        assert torch.allclose(pool(frames), expected, atol=1e-6)
        # Unlike softmax weights, the gates do not sum to one: the two pools differ.
        assert not torch.allclose(pool(frames), attention.pool(frames), atol=1e-3)

    def exported_ops(model: nn.Module) -> Counter:
        buffer = io.BytesIO()
        torch.onnx.export(model, torch.zeros(1, 4000), buffer, dynamo=False, opset_version=17)
        return Counter(node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node)

    assert exported_ops(attention)["Softmax"] == 1
    gated_ops = exported_ops(gated)
    assert "Softmax" not in gated_ops and "ReduceSum" not in gated_ops
    # 4 channel gates + 4 temporal gates + the pooling gate
    assert gated_ops["Sigmoid"] == 9


def test_training_and_eval_mode_differ_only_by_dropout_and_batch_stats() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(window_samples=4000)).eval()
    x = torch.randn(4, 4000)
    with torch.no_grad():
        single = torch.cat([model(x[i : i + 1]) for i in range(4)])
        batched = model(x)
    # In eval mode each window's logits do not depend on the rest of the batch.
    assert torch.allclose(single, batched, atol=1e-5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"window_samples": 0}, "window_samples must be a positive integer"),
        ({"window_samples": 300}, "too short for this model"),
        ({"frontend": "mel"}, "frontend must be one of"),
        ({"frontend": "sinc", "frontend_kernel": 128}, "odd frontend_kernel"),
        ({"block_channels": ()}, "block_channels"),
        ({"dropout": 1.0}, "dropout"),
        ({"pooling": "softmax"}, r"pooling must be one of \('attention', 'gated'\), got 'softmax'"),
    ],
)
def test_bad_model_config_is_refused(changes: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        ModelConfig(**changes)


def test_config_round_trips_through_a_dict() -> None:
    config = ModelConfig(window_samples=8000, frontend="sinc", block_channels=(16, 32))
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ModelConfigError, match="unknown model config fields"):
        ModelConfig.from_dict({**config.to_dict(), "heads": 4})


def _payload(model: nn.Module, **extra) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_name": "CLAD",
        "model_config": model.config.to_dict(),
        "state_dict": model.state_dict(),
        "scoring": {"window_samples": model.config.window_samples, "hop_samples": 2000},
        **extra,
    }


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model(ModelConfig(window_samples=4000)).eval()
    save_checkpoint(tmp_path / "best.pt", _payload(model))
    loaded, checkpoint = model_from_checkpoint(tmp_path / "best.pt")
    assert checkpoint.window_samples == 4000 and checkpoint.hop_samples == 2000
    x = torch.randn(2, 4000)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_checkpoint_written_before_the_pooling_option_loads_as_attention(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_model(ModelConfig(window_samples=4000)).eval()
    payload = _payload(model)
    del payload["model_config"]["pooling"]  # as every checkpoint before the option
    save_checkpoint(tmp_path / "best.pt", payload)
    loaded, checkpoint = model_from_checkpoint(tmp_path / "best.pt")
    assert checkpoint.model_config.pooling == "attention"
    x = torch.randn(2, 4000)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # A gated checkpoint keeps its pooling through the round trip.
    gated = build_model(ModelConfig(window_samples=4000, pooling="gated")).eval()
    save_checkpoint(tmp_path / "gated.pt", _payload(gated))
    loaded_gated, _ = model_from_checkpoint(tmp_path / "gated.pt")
    assert loaded_gated.config.pooling == "gated"
    with torch.no_grad():
        assert torch.equal(gated(x), loaded_gated(x))


def test_checkpoint_from_another_shape_is_refused(tmp_path: Path) -> None:
    model = build_model(ModelConfig(window_samples=4000))
    save_checkpoint(tmp_path / "best.pt", _payload(model))
    with pytest.raises(
        CheckpointError, match=r"another model shape: window_samples: checkpoint 4000"
    ):
        model_from_checkpoint(tmp_path / "best.pt", expected=ModelConfig(window_samples=16000))

    # Weights that do not match their own config (e.g. edited, or from older code).
    wide = build_model(ModelConfig(window_samples=4000, frontend_channels=48))
    tampered = _payload(model)
    tampered["state_dict"] = wide.state_dict()
    save_checkpoint(tmp_path / "tampered.pt", tampered)
    with pytest.raises(CheckpointError, match=r"tensors of another shape \(frontend\.conv\.weight"):
        model_from_checkpoint(tmp_path / "tampered.pt")


def test_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        model_from_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a CLAD checkpoint"):
        model_from_checkpoint(tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        model_from_checkpoint(tmp_path / "missing.pt")


def test_cli_prints_both_figures() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "train.model", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(done.stdout)
    assert figures["parameters"] == count_parameters(build_model(ModelConfig()))
    assert figures["macs_per_second"] <= MAX_MACS_PER_SECOND
    assert figures["within_budget"] is True
