"""Look inside a TFLite file with LiteRT: tensor specs, XNNPACK partitions, latency.

XNNPACK partitions: after `allocate_tensors()` the interpreter lists the graph's original
nodes followed by one DELEGATE node per partition that XNNPACK took, each with the
partition's input and output tensors. Walking back from a partition's outputs to its
inputs through the original nodes recovers the nodes it swallowed; the nodes no
partition took run on TFLite's own kernels and split the graph.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.bundle import TensorSpec

DELEGATE_OP = "DELEGATE"


def open_interpreter(path: str | Path, num_threads: int = 1) -> Any:
    """A LiteRT interpreter with the default delegates (XNNPACK) on, tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def _spec(detail: Mapping[str, Any]) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=str(detail["name"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero_point),
    )


def tensor_specs(path: str | Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of a TFLite file as the interpreter reports them."""
    interpreter = open_interpreter(path)
    inputs = tuple(_spec(d) for d in interpreter.get_input_details())
    outputs = tuple(_spec(d) for d in interpreter.get_output_details())
    return inputs, outputs


@dataclass(frozen=True)
class OpPlacement:
    index: int
    op_name: str
    partition: int | None  # XNNPACK partition number, None when TFLite's own kernel runs it
    output_dtypes: tuple[str, ...]


@dataclass(frozen=True)
class DelegationReport:
    """How XNNPACK took a graph: partitions, and the ops left outside them."""

    file: str
    ops: int
    partitions: int
    delegated_ops: int
    undelegated: tuple[OpPlacement, ...]
    placements: tuple[OpPlacement, ...]

    @property
    def in_one_piece(self) -> bool:
        return self.partitions == 1 and not self.undelegated

    def summary(self) -> str:
        if self.in_one_piece:
            return f"{self.ops} ops, all in 1 XNNPACK partition"
        outside = ", ".join(f"{op.op_name} (node {op.index})" for op in self.undelegated)
        return (
            f"{self.ops} ops, {self.delegated_ops} in {self.partitions} XNNPACK partition(s); "
            f"on TFLite kernels: {outside or 'none'}"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["in_one_piece"] = self.in_one_piece
        return out


def delegation_report(path: str | Path, num_threads: int = 1) -> DelegationReport:
    """Which ops XNNPACK took, in how many partitions, and which ops it left out."""
    interpreter = open_interpreter(path, num_threads)
    details = interpreter._get_ops_details()  # the only view of the delegated plan in Python
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    original = [d for d in details if d["op_name"] != DELEGATE_OP]
    delegates = [d for d in details if d["op_name"] == DELEGATE_OP]
    producer = {}
    for node in original:
        for tensor in node["outputs"]:
            producer[int(tensor)] = node
    partition_of: dict[int, int] = {}
    for number, delegate in enumerate(delegates, start=1):
        boundary = {int(t) for t in delegate["inputs"]}
        stack = [int(t) for t in delegate["outputs"]]
        seen: set[int] = set()
        while stack:
            tensor = stack.pop()
            if tensor in seen or tensor in boundary:
                continue
            seen.add(tensor)
            node = producer.get(tensor)
            if node is None:
                continue
            partition_of[int(node["index"])] = number
            stack.extend(int(t) for t in node["inputs"] if int(t) >= 0)

    def dtypes(node: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(
            np.dtype(tensors[int(t)]["dtype"]).name for t in node["outputs"] if int(t) in tensors
        )

    placements = tuple(
        OpPlacement(
            index=int(node["index"]),
            op_name=str(node["op_name"]),
            partition=partition_of.get(int(node["index"])),
            output_dtypes=dtypes(node),
        )
        for node in original
    )
    undelegated = tuple(p for p in placements if p.partition is None)
    return DelegationReport(
        file=Path(path).name,
        ops=len(original),
        partitions=len(delegates),
        delegated_ops=len(original) - len(undelegated),
        undelegated=undelegated,
        placements=placements,
    )


@dataclass(frozen=True)
class Latency:
    file: str
    num_threads: int
    runs: int
    median_ms: float
    p90_ms: float
    min_ms: float


def measure_latency(
    paths: Sequence[str | Path],
    *,
    num_threads: int = 1,
    warmup: int = 20,
    runs: int = 200,
    rounds: int = 5,
) -> list[Latency]:
    """Median invoke() time of each model, measured in interleaved rounds.

    The machine is shared: taking the models in turns, round after round, spreads any
    background load over all of them instead of penalising whichever ran last.
    """
    interpreters = []
    for path in paths:
        interpreter = open_interpreter(path, num_threads)
        detail = interpreter.get_input_details()[0]
        rng = np.random.default_rng(0)
        if np.issubdtype(detail["dtype"], np.integer):
            info = np.iinfo(detail["dtype"])
            x = rng.integers(info.min, info.max, size=detail["shape"], endpoint=True)
        else:
            x = rng.uniform(-1.0, 1.0, size=detail["shape"])
        interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
        for _ in range(warmup):
            interpreter.invoke()
        interpreters.append(interpreter)
    samples: list[list[float]] = [[] for _ in paths]
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for i, interpreter in enumerate(interpreters):
            for _ in range(per_round):
                started = time.perf_counter()
                interpreter.invoke()
                samples[i].append((time.perf_counter() - started) * 1e3)
    out = []
    for path, times in zip(paths, samples, strict=True):
        values = np.asarray(times)
        out.append(
            Latency(
                file=Path(path).name,
                num_threads=num_threads,
                runs=int(values.size),
                median_ms=float(np.median(values)),
                p90_ms=float(np.percentile(values, 90)),
                min_ms=float(values.min()),
            )
        )
    return out
