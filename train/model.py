"""CLAD: a lightweight CNN with attention over the raw 16 kHz waveform.

Input ``[batch, window_samples]`` float32 (windows normalized by
``device.audio.normalize_windows``); the channel axis is added inside the model, so the
TFLite input stays ``[batch, window_samples]``. Output: two logits ``(bonafide, spoof)``.

Layout (shapes for a batch B and a 1 s window, default config)::

    x                                   (B, 16000)
    unsqueeze                           (B, 1, 16000)
    front end: conv k129 s8, BN, ReLU   (B, 32, 1984)    learned, or a fixed sinc band-pass bank
                                                         (computed as 8 phases x 17 taps, stride 1)
    max-pool 2                          (B, 32, 992)
    4 residual blocks, each:            conv3-BN-ReLU-conv3-BN, channel gate (squeeze-excite),
                                        temporal gate, + skip (1x1 conv-BN when channels change),
                                        ReLU, max-pool 2
                                        (B, 32, 496) (B, 64, 248) (B, 64, 124) (B, 128, 62)
    pooling over time                   (B, 128)         "attention": softmax-weighted mean;
                                                         "gated": mean of sigmoid-gated frames
    linear                              (B, 2)

Built for full-integer int8: ReLU activations only, every convolution followed directly by
BatchNorm (folded at export), gates are sigmoids, pooling is max/mean/softmax-weighted sum.
No LayerNorm, GELU/SiLU, sqrt/std or other ops that force float islands. The softmax of
"attention" pooling is the one op XNNPACK does not take in int8 (the graph runs as two
partitions); "gated" pooling replaces it with a sigmoid and a mean, so the whole int8 graph is
one XNNPACK partition (docs/convert.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

MODEL_NAME = "CLAD"
LABELS = ("bonafide", "spoof")
FRONTENDS = ("learned", "sinc")
POOLINGS = ("attention", "gated")
MAX_PARAMETERS = 200_000
MAX_MACS_PER_SECOND = 60_000_000
"""Budget: multiply-accumulates for a 1 s (16000-sample) window."""

FrontEndKind = Literal["learned", "sinc"]
PoolingKind = Literal["attention", "gated"]


class ModelConfigError(ValueError):
    """A model configuration that cannot be built, naming the field and the value."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild CLAD; stored in every checkpoint."""

    window_samples: int = 16000
    frontend: FrontEndKind = "learned"
    frontend_channels: int = 32
    frontend_kernel: int = 129
    frontend_stride: int = 8
    frontend_pool: int = 2
    block_channels: tuple[int, ...] = (32, 64, 64, 128)
    block_pool: int = 2
    se_reduction: int = 4
    attention_hidden: int = 32
    dropout: float = 0.1
    # Checkpoints and configs written before this field existed have no "pooling" key and
    # load with this default, the pooling they were trained with.
    pooling: PoolingKind = "attention"

    def __post_init__(self) -> None:
        if self.frontend not in FRONTENDS:
            raise ModelConfigError(f"frontend must be one of {FRONTENDS}, got {self.frontend!r}")
        if self.pooling not in POOLINGS:
            raise ModelConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        positive = (
            "window_samples",
            "frontend_channels",
            "frontend_kernel",
            "frontend_stride",
            "frontend_pool",
            "block_pool",
            "se_reduction",
            "attention_hidden",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ModelConfigError(f"{name} must be a positive integer, got {value!r}")
        if not self.block_channels or any(int(c) <= 0 for c in self.block_channels):
            raise ModelConfigError(
                f"block_channels must be positive integers, got {self.block_channels!r}"
            )
        if self.frontend == "sinc" and self.frontend_kernel % 2 == 0:
            raise ModelConfigError(
                f"the sinc front end needs an odd frontend_kernel, got {self.frontend_kernel}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        frames = self.frames_after_frontend()
        for _ in self.block_channels:
            frames //= self.block_pool
        if frames < 1:
            raise ModelConfigError(
                f"window_samples={self.window_samples} is too short for this model: after the "
                f"front end (stride {self.frontend_stride}, pool {self.frontend_pool}) and "
                f"{len(self.block_channels)} blocks pooling by {self.block_pool} no time steps "
                "are left"
            )

    def frames_after_frontend(self) -> int:
        conv_frames = (self.window_samples - self.frontend_kernel) // self.frontend_stride + 1
        return max(0, conv_frames // self.frontend_pool)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["block_channels"] = list(self.block_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(
                f"unknown model config fields {unknown}; expected a subset of {sorted(known)}"
            )
        values = dict(data)
        if "block_channels" in values:
            values["block_channels"] = tuple(int(c) for c in values["block_channels"])
        return cls(**values)


# --------------------------------------------------------------------------- front ends


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: float) -> float:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def sinc_bank(
    channels: int, kernel: int, sample_rate: int = 16000, low_hz: float = 30.0
) -> torch.Tensor:
    """Hamming-windowed sinc band-pass filters, mel-spaced from `low_hz` to Nyquist.

    Returns (channels, 1, kernel) float32, each filter scaled to unit peak gain.
    """
    nyquist = sample_rate / 2.0
    edges_mel = torch.linspace(_hz_to_mel(low_hz), _hz_to_mel(nyquist - 1.0), channels + 1)
    edges_hz = [_mel_to_hz(float(m)) for m in edges_mel]
    t = (torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2.0) / sample_rate
    window = torch.hamming_window(kernel, periodic=False, dtype=torch.float64)
    filters = []
    for low, high in itertools.pairwise(edges_hz):
        band = 2 * high * torch.sinc(2 * high * t) - 2 * low * torch.sinc(2 * low * t)
        band = band * window
        filters.append(band / band.abs().max())
    return torch.stack(filters).unsqueeze(1).to(torch.float32)


class FrontEnd(nn.Module):
    """Strided conv (learned, or a frozen sinc bank), BatchNorm, ReLU, max-pool."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            1,
            config.frontend_channels,
            kernel_size=config.frontend_kernel,
            stride=config.frontend_stride,
            bias=False,
        )
        if config.frontend == "sinc":
            with torch.no_grad():
                self.conv.weight.copy_(sinc_bank(config.frontend_channels, config.frontend_kernel))
            self.conv.weight.requires_grad_(False)
        self.bn = nn.BatchNorm1d(config.frontend_channels)
        self.pool = nn.MaxPool1d(config.frontend_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            # Training keeps the plain strided convolution (batch statistics; the same sums in
            # the same order as before the phased form, so a seed still trains the same model);
            # evaluation and export use the phased form, which XNNPACK runs fast in int8.
            return self.pool(torch.relu(self.bn(self.conv(x))))
        # BatchNorm folded here: the ONNX exporter folds it only into a Conv whose weight is
        # a stored tensor, and this one is computed
        return self.pool(torch.relu(self.strided_conv(x, fold=self.bn)))

    def strided_conv(self, x: torch.Tensor, fold: nn.BatchNorm1d | None = None) -> torch.Tensor:
        """`self.conv(x)` (then `fold(...)` in eval mode when given), computed as a stride-1
        convolution over `stride` input channels.

        The waveform is split into `stride` phases, (B, 1, N) -> (B, stride, N / stride) (a
        plain reshape in the channels-last TFLite graph), and the kernel of K taps into the
        matching (C, stride, ceil(K / stride)) kernel, zero-padded. Same weights, same outputs
        (the same products, summed in another order). Why: XNNPACK's int8 convolution packs
        the input channels of each tap in groups of several bytes, so with one input
        channel most of its work is padding: the k129/s8 front end alone took 0.99 ms in
        int8 against 0.19 ms in fp32, more than the rest of the network; as 8 channels x 17
        taps, 0.15-0.27 ms (docs/convert.md). A length that is not a multiple of the stride
        falls back to the strided convolution.
        """
        # plain ints from the module (ONNX tracing turns tensor shapes into graph values)
        stride = self.conv.stride[0]
        kernel = self.conv.kernel_size[0]
        out_channels = self.conv.out_channels
        weight = self.conv.weight  # (C, 1, K)
        bias = None
        if fold is not None:
            scale = fold.weight / torch.sqrt(fold.running_var + fold.eps)
            weight = weight * scale[:, None, None]
            bias = fold.bias - fold.running_mean * scale
        if stride == 1 or x.shape[1] != 1 or int(x.shape[-1]) % stride != 0:
            return nn.functional.conv1d(x, weight, bias, stride=stride)
        taps = -(-kernel // stride)
        if taps * stride > kernel:
            # a concatenation, not F.pad: the ONNX Pad on weights lost a tap in onnx2tf
            zeros = weight.new_zeros(out_channels, 1, taps * stride - kernel)
            weight = torch.cat([weight, zeros], dim=2)
        weight = weight.reshape(out_channels, taps, stride).transpose(1, 2)  # (C, s, taps)
        phases = x.reshape(x.shape[0], -1, stride).transpose(1, 2)  # (B, s, N / s)
        return nn.functional.conv1d(phases, weight, bias)


# --------------------------------------------------------------------------- blocks


class ChannelGate(nn.Module):
    """Squeeze-excite: mean over time -> FC -> ReLU -> FC -> sigmoid, one weight per channel."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        squeezed = x.mean(dim=2)  # (B, C)
        weights = torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))  # (B, C)
        return x * weights.unsqueeze(2)


class TemporalGate(nn.Module):
    """One sigmoid weight per time step from a 1x1 conv over the channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        return x * torch.sigmoid(self.conv(x))  # (B, 1, T) broadcast


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, config: ModelConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.channel_gate = ChannelGate(out_channels, config.se_reduction)
        self.temporal_gate = TemporalGate(out_channels)
        if in_channels != out_channels:
            self.skip: nn.Module = nn.Sequential(
                nn.Conv1d(in_channels, out_channels, 1, bias=False), nn.BatchNorm1d(out_channels)
            )
        else:
            self.skip = nn.Identity()
        self.pool = nn.MaxPool1d(config.block_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        y = self.temporal_gate(self.channel_gate(y))
        return self.pool(torch.relu(y + self.skip(x)))  # (B, C_out, T // pool)


class AttentionPool(nn.Module):
    """Softmax attention over time: a weighted mean of the frames, (B, C, T) -> (B, C)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.conv2 = nn.Conv1d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.conv2(torch.relu(self.bn(self.conv1(x))))  # (B, 1, T)
        weights = torch.softmax(scores, dim=2)
        return (x * weights).sum(dim=2)  # (B, C)


class GatedPool(AttentionPool):
    """Sigmoid gate per time step, then the mean over time, (B, C, T) -> (B, C).

    The same score network as `AttentionPool` (inherited: same parameters), but each frame's
    weight is a sigmoid of its own score instead of a softmax across frames. Sigmoid, multiply
    and mean all stay in XNNPACK's int8 partition; a softmax does not.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.conv2(torch.relu(self.bn(self.conv1(x))))  # (B, 1, T)
        return (x * torch.sigmoid(scores)).mean(dim=2)  # (B, C)


class CLAD(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.frontend = FrontEnd(config)
        blocks = []
        channels = config.frontend_channels
        for out_channels in config.block_channels:
            blocks.append(ResidualBlock(channels, int(out_channels), config))
            channels = int(out_channels)
        self.blocks = nn.Sequential(*blocks)
        pool_class = GatedPool if config.pooling == "gated" else AttentionPool
        self.pool: nn.Module = pool_class(channels, config.attention_hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(channels, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, window_samples)
        x = x.unsqueeze(1)  # (B, 1, N)
        x = self.frontend(x)  # (B, C0, T0)
        x = self.blocks(x)  # (B, C, T)
        x = self.pool(x)  # (B, C)
        return self.head(self.dropout(x))  # (B, 2) logits (bonafide, spoof)


def build_model(config: ModelConfig | None = None) -> CLAD:
    """CLAD for `config` (defaults when None), in training mode with fresh weights."""
    return CLAD(config or ModelConfig())


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or frozen (a frozen sinc bank still ships in the file)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: CLAD, window_samples: int | None = None) -> int:
    """Multiply-accumulates for one window, counted by running it.

    Counts convolutions, linear layers and the pooling's weighted sum. BatchNorm (folded
    into the convolutions at export), activations, gates and pooling are not counted.
    """
    window_samples = window_samples or model.config.window_samples
    total = 0

    def conv_hook(module: nn.Conv1d, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.kernel_size[0]
        total += output.numel() * (module.in_channels // module.groups) * kernel

    def linear_hook(module: nn.Linear, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    def pool_hook(_module: nn.Module, inputs: tuple[torch.Tensor], _output: Any) -> None:
        nonlocal total
        total += inputs[0].numel()

    def frontend_hook(module: FrontEnd, inputs: tuple[torch.Tensor], _output: Any) -> None:
        # FrontEnd.strided_conv calls conv1d itself, not `module.conv`: counted here, as the
        # K-tap strided convolution (not the zero taps of its 8-phase form)
        nonlocal total
        conv = module.conv
        frames = (inputs[0].shape[-1] - conv.kernel_size[0]) // conv.stride[0] + 1
        total += inputs[0].shape[0] * frames * conv.out_channels * conv.kernel_size[0]

    handles = []
    for module in model.modules():
        if isinstance(module, FrontEnd):
            handles.append(module.register_forward_hook(frontend_hook))
        elif isinstance(module, nn.Conv1d) and module is not model.frontend.conv:
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, AttentionPool):  # and GatedPool
            handles.append(module.register_forward_hook(pool_hook))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, window_samples, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


@dataclass(frozen=True)
class ModelSummary:
    name: str
    parameters: int
    macs_per_window: int
    macs_per_second: int
    window_samples: int

    def within_budget(self) -> bool:
        return self.parameters <= MAX_PARAMETERS and self.macs_per_second <= MAX_MACS_PER_SECOND

    def describe(self) -> str:
        return (
            f"{self.name}: {self.parameters:,} parameters (budget {MAX_PARAMETERS:,}), "
            f"{self.macs_per_window / 1e6:.2f} M MACs per {self.window_samples}-sample window, "
            f"{self.macs_per_second / 1e6:.2f} M MACs per 1 s window "
            f"(budget {MAX_MACS_PER_SECOND / 1e6:.0f} M)"
        )


def summarize(config: ModelConfig | None = None) -> ModelSummary:
    config = config or ModelConfig()
    model = build_model(config)
    per_second_config = ModelConfig.from_dict({**config.to_dict(), "window_samples": 16000})
    return ModelSummary(
        name=MODEL_NAME,
        parameters=count_parameters(model),
        macs_per_window=count_macs(model),
        macs_per_second=count_macs(build_model(per_second_config)),
        window_samples=config.window_samples,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.model", description="Print CLAD's parameter count and MACs."
    )
    parser.add_argument("--window-samples", type=int, default=ModelConfig.window_samples)
    parser.add_argument("--frontend", choices=FRONTENDS, default=ModelConfig.frontend)
    parser.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=ModelConfig.pooling,
        help=f"pooling over time (default {ModelConfig.pooling})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    summary = summarize(
        ModelConfig(
            window_samples=args.window_samples, frontend=args.frontend, pooling=args.pooling
        )
    )
    if args.json:
        print(json.dumps({**asdict(summary), "within_budget": summary.within_budget()}))
    else:
        print(summary.describe())
    return 0 if summary.within_budget() else 1


if __name__ == "__main__":
    raise SystemExit(main())
