"""benchmarks.ops: single-op cuts of a real TFLite pair, run by the real interpreter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.ops import FORMATS, OpsError, cut_ops, profile, render
from tests.convert_fixtures import write_tiny_tflite_pair

REPO = Path(__file__).resolve().parents[1]
WINDOW_SAMPLES = 400


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ops")
    fp32, int8 = write_tiny_tflite_pair(root / "src", WINDOW_SAMPLES)
    folder = root / "bundle"
    folder.mkdir()
    shutil.copyfile(fp32, folder / FORMATS["fp32"])
    shutil.copyfile(int8, folder / FORMATS["int8"])
    return folder


def _run(interpreter, x: np.ndarray) -> np.ndarray:
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_the_cut_ops_chained_give_the_whole_graph_bit_for_bit(bundle: Path, kind: str) -> None:
    from ai_edge_litert.interpreter import Interpreter

    path = bundle / FORMATS[kind]
    whole = Interpreter(model_path=str(path), num_threads=1)
    whole.allocate_tensors()
    detail = whole.get_input_details()[0]
    rng = np.random.default_rng(1)
    if kind == "int8":
        x = rng.integers(-128, 128, size=(1, WINDOW_SAMPLES)).astype(np.int8)
    else:
        x = rng.uniform(-1, 1, size=(1, WINDOW_SAMPLES)).astype(np.float32)
    assert tuple(detail["shape"]) == x.shape
    expected = _run(whole, x)

    cuts = cut_ops(path)
    assert [c.op_name for c in cuts] == ["FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert [c.macs for c in cuts] == [WINDOW_SAMPLES * 16, 16 * 2]
    value = x
    for cut in cuts:
        single = Interpreter(model_content=cut.content, num_threads=1)
        single.allocate_tensors()
        (single_input,) = single.get_input_details()
        assert tuple(single_input["shape"]) == value.shape
        value = _run(single, value)
        assert tuple(value.shape) == cut.output_shape
    np.testing.assert_array_equal(value, expected)


def test_profile_reports_every_op_of_both_graphs(bundle: Path, tmp_path: Path) -> None:
    report = profile(bundle, runs=12, rounds=2)
    assert [op["op"] for op in report["ops"]] == ["FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert report["runs_per_model"] == 12
    for op in report["ops"]:
        for kind in FORMATS:
            assert op[f"{kind}_median_ms"] >= op[f"{kind}_min_ms"] > 0
    assert report["by_op_type"]["FULLY_CONNECTED"]["count"] == 2
    text = render(report)
    assert "| FULLY_CONNECTED | 2 |" in text and "sum of ops" in text

    # the CLI writes the JSON and the markdown next to each other
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.ops",
            "--bundle",
            str(bundle),
            "--out",
            str(out),
            "--runs",
            "6",
            "--rounds",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (json_file,) = out.glob("ops-bundle-litert*.json")
    assert json.loads(json_file.read_text())["ops"][0]["op"] == "FULLY_CONNECTED"
    assert json_file.with_name(json_file.name.replace(".json", ".md")).is_file()


def test_a_bundle_without_both_files_is_refused(bundle: Path, tmp_path: Path) -> None:
    half = tmp_path / "half"
    half.mkdir()
    shutil.copyfile(bundle / FORMATS["fp32"], half / FORMATS["fp32"])
    with pytest.raises(OpsError, match=r"missing \[.*model_int8\.tflite"):
        profile(half, runs=2, rounds=1)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.ops", "--bundle", str(half)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "model_int8.tflite" in done.stderr


def test_summary_prints_the_interleaved_whole_graph_ratio(bundle: Path, tmp_path: Path) -> None:
    """`--summary` (what `make bench` prints per LiteRT version): one line whose ratio is the
    whole-graph medians of the report it wrote in full."""
    out = tmp_path / "summary"
    command = [sys.executable, "-m", "benchmarks.ops", "--bundle", str(bundle), "--out", str(out)]
    done = subprocess.run(
        [*command, "--runs", "6", "--rounds", "2", "--summary"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()
    (json_file,) = out.glob("ops-bundle-litert*.json")
    whole = json.loads(json_file.read_text())["whole_graph_median_ms"]
    assert f"int8 {whole['fp32'] / whole['int8']:.2f}x fp32's speed" in line
    assert "interleaved in one process (6 invokes each)" in line
    assert "| FULLY_CONNECTED |" not in done.stdout  # the per-op table stays in the .md
