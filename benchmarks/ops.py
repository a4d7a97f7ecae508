"""Per-op time of a bundle's fp32 and int8 graphs, side by side, at one thread.

LiteRT's Python interpreter has no per-op profiler, so this cuts each graph into one model
per op (the op, its constant inputs, its activations as model inputs; the same tensors,
scales and weights as in the bundle) and times every one of them, and the whole graphs, in
interleaved rounds with the default delegates (XNNPACK), so that background load falls on
all of them alike. The fp32 and int8 graphs of a bundle have the same ops in the same
order, so op i of one is op i of the other.

    python -m benchmarks.ops --bundle bundles/demo [--out DIR] [--json]

Imports numpy and LiteRT only: `.venv-device/bin/python -m benchmarks.ops` times the same
graphs on LiteRT 2.3 with numpy 2, as on a Pi. Writes ops-<bundle>-litert<version>.json and
.md into --out (default: the bundle's folder is left alone; benchmarks/results).

A single-op model pays the interpreter's per-invoke cost once per op, which the whole graph
pays once; the report gives that cost (the median of the fastest ops) next to the sums.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FORMATS = {"fp32": "model_fp32.tflite", "int8": "model_int8.tflite"}


class OpsError(RuntimeError):
    """A bundle whose graphs cannot be compared op by op."""


@dataclass(frozen=True)
class OpCut:
    index: int
    op_name: str
    output_shape: tuple[int, ...]
    macs: int  # CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED; 0 for the rest
    content: bytes


def _flatbuffer_utils() -> Any:
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils


def _is_constant(model: Any, tensor: Any) -> bool:
    buffer = model.buffers[tensor.buffer]
    has_data = buffer.data is not None and len(buffer.data) > 0
    return has_data or bool(getattr(buffer, "size", 0))


def cut_ops(path: Path) -> list[OpCut]:
    """One single-op model per op of the graph in `path`, in execution order."""
    fb = _flatbuffer_utils()
    model = fb.read_model(str(path))
    if len(model.subgraphs) != 1:
        raise OpsError(f"{path}: expected one subgraph, found {len(model.subgraphs)}")
    graph = model.subgraphs[0]
    cuts = []
    for index, op in enumerate(graph.operators):
        op_name = fb.opcode_to_name(model, op.opcodeIndex)
        single = copy.copy(model)
        sub = copy.copy(graph)
        single.subgraphs = [sub]
        single.signatureDefs = []
        sub.operators = [op]
        sub.inputs = np.array(
            [t for t in op.inputs if t >= 0 and not _is_constant(model, graph.tensors[t])],
            dtype=np.int32,
        )
        sub.outputs = np.array(list(op.outputs), dtype=np.int32)
        output_shape = tuple(int(d) for d in graph.tensors[op.outputs[0]].shape)
        macs = 0
        if op_name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            weights = tuple(int(d) for d in graph.tensors[op.inputs[1]].shape)
            # CONV_2D / FULLY_CONNECTED weights are (out, ..., in); depthwise (1, h, w, out)
            if op_name == "DEPTHWISE_CONV_2D":
                per_output = int(np.prod(weights[1:3]))
            else:
                per_output = int(np.prod(weights[1:]))
            macs = int(np.prod(output_shape)) * per_output
        content = bytes(fb.convert_object_to_bytearray(single))
        cuts.append(OpCut(index, op_name, output_shape, macs, content))
    return cuts


def _interpreter(model_path: Path | None, content: bytes | None) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    if content is not None:
        interpreter = Interpreter(model_content=content, num_threads=1)
    else:
        interpreter = Interpreter(model_path=str(model_path), num_threads=1)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        if np.issubdtype(detail["dtype"], np.integer):
            x = rng.integers(-100, 100, size=detail["shape"])
        else:
            x = rng.uniform(-1.0, 1.0, size=detail["shape"])
        interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
    for _ in range(10):
        interpreter.invoke()
    return interpreter


def _time_all(interpreters: list[Any], runs: int, rounds: int) -> list[np.ndarray]:
    samples: list[list[float]] = [[] for _ in interpreters]
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for i, interpreter in enumerate(interpreters):
            invoke = interpreter.invoke
            for _ in range(per_round):
                started = time.perf_counter_ns()
                invoke()
                samples[i].append((time.perf_counter_ns() - started) / 1e6)
    return [np.asarray(s) for s in samples]


def profile(bundle: Path, runs: int, rounds: int) -> dict[str, Any]:
    import importlib.metadata

    paths = {kind: bundle / name for kind, name in FORMATS.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise OpsError(f"expected {', '.join(FORMATS.values())} in {bundle}; missing {missing}")
    cuts = {kind: cut_ops(path) for kind, path in paths.items()}
    names = {kind: [c.op_name for c in kind_cuts] for kind, kind_cuts in cuts.items()}
    if names["fp32"] != names["int8"]:
        raise OpsError(
            f"the fp32 graph ({len(names['fp32'])} ops) and the int8 graph "
            f"({len(names['int8'])} ops) differ in their ops: not comparable op by op"
        )
    keys = [(kind, "whole graph", None) for kind in FORMATS]
    interpreters = [_interpreter(paths[kind], None) for kind in FORMATS]
    for kind in FORMATS:
        for cut in cuts[kind]:
            keys.append((kind, "op", cut.index))
            interpreters.append(_interpreter(None, cut.content))
    times = _time_all(interpreters, runs, rounds)
    median = {key: float(np.median(t)) for key, t in zip(keys, times, strict=True)}
    minimum = {key: float(np.min(t)) for key, t in zip(keys, times, strict=True)}
    ops = []
    for fp32_cut in cuts["fp32"]:
        i = fp32_cut.index
        row = {
            "index": i,
            "op": fp32_cut.op_name,
            "output_shape": list(fp32_cut.output_shape),
            "macs": fp32_cut.macs,
        }
        for kind in FORMATS:
            row[f"{kind}_median_ms"] = median[(kind, "op", i)]
            row[f"{kind}_min_ms"] = minimum[(kind, "op", i)]
        ops.append(row)
    # The fastest ops (reshapes) cost about one bare invoke(): the per-model overhead.
    invoke_overhead_ms = {
        kind: float(np.median(sorted(r[f"{kind}_min_ms"] for r in ops)[:5])) for kind in FORMATS
    }
    by_type: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in ops:
        for kind in FORMATS:
            net = max(0.0, row[f"{kind}_median_ms"] - invoke_overhead_ms[kind])
            by_type[row["op"]][kind] += net
        by_type[row["op"]]["count"] += 1
        by_type[row["op"]]["macs"] += row["macs"]
    return {
        "bundle": str(bundle),
        "runtime": f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}",
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": 1,
        "runs_per_model": len(times[0]),
        "loadavg": list(os.getloadavg()),
        "whole_graph_median_ms": {kind: median[(kind, "whole graph", None)] for kind in FORMATS},
        "whole_graph_min_ms": {kind: minimum[(kind, "whole graph", None)] for kind in FORMATS},
        "invoke_overhead_ms": invoke_overhead_ms,
        "by_op_type": {name: dict(values) for name, values in by_type.items()},
        "ops": ops,
    }


def render(report: dict[str, Any]) -> str:
    whole = report["whole_graph_median_ms"]
    overhead = report["invoke_overhead_ms"]
    lines = [
        f"# Per-op time: {report['bundle']}",
        "",
        f"{report['runtime']}, numpy {report['numpy']}, 1 thread, median of "
        f"{report['runs_per_model']} invokes per model, load average "
        f"{report['loadavg'][0]:.1f}.",
        "",
        f"Whole graph: fp32 {whole['fp32']:.3f} ms, int8 {whole['int8']:.3f} ms "
        f"(int8 {whole['fp32'] / whole['int8']:.2f}x fp32's speed). One bare invoke(): "
        f"fp32 {overhead['fp32'] * 1e3:.1f} us, int8 {overhead['int8'] * 1e3:.1f} us, "
        "subtracted from every op below.",
        "",
        "| op type | count | MACs | fp32 ms | int8 ms | int8 speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    by_type = sorted(report["by_op_type"].items(), key=lambda kv: -kv[1]["fp32"])
    for name, values in by_type:
        speedup = values["fp32"] / values["int8"] if values["int8"] > 0 else float("nan")
        lines.append(
            f"| {name} | {values['count']:.0f} | {values['macs'] / 1e6:.2f} M | "
            f"{values['fp32']:.3f} | {values['int8']:.3f} | {speedup:.2f}x |"
        )
    totals = {k: sum(v[k] for v in report["by_op_type"].values()) for k in ("fp32", "int8")}
    lines += [
        f"| sum of ops | | | {totals['fp32']:.3f} | {totals['int8']:.3f} | "
        f"{totals['fp32'] / totals['int8']:.2f}x |",
        "",
        "| # | op | output | MACs | fp32 ms | int8 ms | int8 speed-up |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in report["ops"]:
        fp32 = max(0.0, row["fp32_median_ms"] - overhead["fp32"])
        int8 = max(0.0, row["int8_median_ms"] - overhead["int8"])
        speedup = f"{fp32 / int8:.2f}x" if int8 > 0.0005 else "-"
        shape = "x".join(str(d) for d in row["output_shape"])
        lines.append(
            f"| {row['index']} | {row['op']} | {shape} | {row['macs'] / 1e6:.2f} M | "
            f"{fp32:.4f} | {int8:.4f} | {speedup} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ops", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--bundle", type=Path, default=REPO / "bundles" / "demo", help="bundle folder"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results",
        help="folder for the JSON and markdown report (default benchmarks/results)",
    )
    parser.add_argument(
        "--runs", type=int, default=240, help="invokes per model, all rounds (default 240)"
    )
    parser.add_argument(
        "--rounds", type=int, default=6, help="interleaved rounds the runs are split into"
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument(
        "--summary",
        action="store_true",
        help="print only the whole-graph line (int8 against fp32, interleaved); the reports "
        "are written in full all the same (default: off)",
    )
    args = parser.parse_args(argv)
    try:
        report = profile(args.bundle, args.runs, args.rounds)
    except OpsError as error:
        print(f"benchmarks.ops: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    version = report["runtime"].split()[-1]
    stem = f"ops-{args.bundle.resolve().name}-litert{version}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    text = render(report)
    (args.out / f"{stem}.md").write_text(text)
    if args.summary:
        whole = report["whole_graph_median_ms"]
        print(
            f"{report['runtime']}, numpy {report['numpy']}, 1 thread, fp32 and int8 graphs "
            f"interleaved in one process ({report['runs_per_model']} invokes each): fp32 "
            f"{whole['fp32']:.3f} ms, int8 {whole['int8']:.3f} ms, int8 "
            f"{whole['fp32'] / whole['int8']:.2f}x fp32's speed ({args.out / stem}.md)"
        )
    else:
        print(json.dumps(report) if args.json else text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
