"""`python -m benchmarks` on a real small bundle: every row in its own real worker process.

The bundle is the device tests' fixture (a real TFLite fp32 + int8 pair converted by
TensorFlow), copied per test and completed by the test with a small real CLAD checkpoint
and its real ONNX export, so all four formats run for real. The timings are kept tiny
(one short round): these tests check the table, the JSON and the failure paths, not speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.formats import ENVIRONMENTS
from benchmarks.machine import derive_peaks, read_cpu_info
from benchmarks.parity import accuracy_by_row, accuracy_for
from benchmarks.report import markdown_table
from benchmarks.runner import (
    BenchSettings,
    add_ratios,
    best_rates,
    comparisons,
    plan_rows,
    summarize_row,
)
from device.bundle import load_bundle, sha256_of
from device.measure import latency_stats
from tests.device_fixtures import WINDOW_SAMPLES, cached_bundle

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--rounds", "1", "--seconds-per-row", "0.15", "--warmup-s", "0.05", "--threads", "1"]
PARITY = {  # the shape convert/pipeline.py writes
    "passed": True,
    "rows": [
        {"name": "torch", "format": "torch", "runtime": "torch 2.13.0+cpu",
         "distribution": "torch", "environment": "current", "status": "ok",
         "eer": 0.05, "agreement": 1.0},
        {"name": "onnx", "format": "onnx", "runtime": "onnxruntime 1.23.0",
         "distribution": "onnxruntime", "environment": "current", "status": "ok",
         "eer": 0.05, "agreement": 1.0},
        {"name": "fp32", "format": "fp32", "runtime": "ai-edge-litert 2.1.0",
         "distribution": "ai-edge-litert", "environment": "current", "status": "ok",
         "eer": 0.05, "agreement": 1.0},
        {"name": "int8", "format": "int8", "runtime": "ai-edge-litert 2.1.0",
         "distribution": "ai-edge-litert", "environment": "current", "status": "ok",
         "eer": 0.0625, "agreement": 0.97},
        {"name": "int8 @ .venv-device", "format": "int8", "runtime": "ai-edge-litert 2.3.0",
         "distribution": "ai-edge-litert", "environment": ".venv-device",
         "status": "ok", "eer": 0.0625, "agreement": 0.96},
        {"name": "int8 @ .venv-tflite", "format": "int8", "runtime": "-",
         "distribution": "tflite-runtime", "environment": ".venv-tflite", "status": "skipped",
         "reason": ".venv-tflite not built"},
    ],
}  # fmt: skip
PARITY_WITHOUT_FIELDS = {  # a report written before rows had "distribution"/"environment"
    **PARITY,
    "rows": [
        {k: v for k, v in row.items() if k not in ("distribution", "environment")}
        for row in PARITY["rows"]
    ],
}


@pytest.fixture(scope="session")
def fixture_bundle(request: pytest.FixtureRequest) -> Path:
    return cached_bundle(Path(request.config.cache.mkdir("device-fixture-bundles")))


@pytest.fixture(scope="session")
def clad_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small real CLAD checkpoint (train.checkpoint's format) and its ONNX export."""
    torch = pytest.importorskip("torch")
    from train.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
    from train.model import ModelConfig, build_model

    out = tmp_path_factory.mktemp("clad")
    config = ModelConfig(
        window_samples=WINDOW_SAMPLES,
        frontend_channels=8,
        block_channels=(8, 16),
        attention_hidden=8,
    )
    torch.manual_seed(0)
    model = build_model(config).eval()
    checkpoint = out / "best.pt"
    save_checkpoint(
        checkpoint,
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_name": "CLAD",
            "model_config": config.to_dict(),
            "state_dict": model.state_dict(),
            "scoring": {"window_samples": WINDOW_SAMPLES, "hop_samples": WINDOW_SAMPLES // 2},
        },
    )
    onnx_path = out / "model.onnx"
    torch.onnx.export(
        model,
        torch.zeros(1, WINDOW_SAMPLES),
        str(onnx_path),
        input_names=["waveform"],
        output_names=["logits"],
        dynamo=False,
    )
    return checkpoint, onnx_path


def list_file(bundle_dir: Path, name: str, precision: str = "") -> None:
    """Record `name` in the manifest with its current size and sha256 (as the converter does)."""
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["files"].get(name, {})
    entry.update(sha256=sha256_of(bundle_dir / name), bytes=(bundle_dir / name).stat().st_size)
    if precision:
        entry["precision"] = precision
    manifest["files"][name] = entry
    manifest_path.write_text(json.dumps(manifest, indent=2))


def record_checkpoint(bundle_dir: Path, checkpoint: Path) -> None:
    """As the converter records the checkpoint it read."""
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["data"]["trained_on"] = {
        "checkpoint": {"file": str(checkpoint), "sha256": sha256_of(checkpoint), "epoch": 1}
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))


@pytest.fixture
def tflite_bundle(tmp_path: Path, fixture_bundle: Path) -> Path:
    """The fixture bundle (TFLite fp32 + int8) plus a parity report."""
    bundle_dir = tmp_path / "tflite-bundle"
    shutil.copytree(fixture_bundle, bundle_dir)
    (bundle_dir / "parity.json").write_text(json.dumps(PARITY))
    return bundle_dir


@pytest.fixture
def full_bundle(tmp_path: Path, fixture_bundle: Path, clad_files: tuple[Path, Path]) -> Path:
    """The fixture bundle plus model.onnx, a recorded checkpoint and a parity report."""
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(fixture_bundle, bundle_dir)
    checkpoint, onnx_path = clad_files
    shutil.copy(onnx_path, bundle_dir / "model.onnx")
    list_file(bundle_dir, "model.onnx", "fp32")
    record_checkpoint(bundle_dir, checkpoint)
    (bundle_dir / "parity.json").write_text(json.dumps(PARITY))
    return bundle_dir


def run_cli(
    bundle_dir: Path, out_dir: Path, *extra: str, python: str = sys.executable, env=None
) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(
        [python, "-m", "benchmarks", "--bundle", str(bundle_dir), "--out", str(out_dir), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    reports = sorted(out_dir.glob("*.json"))
    assert len(reports) == 1, f"expected one results file, got {reports}\n{proc.stderr[-3000:]}"
    return proc, json.loads(reports[0].read_text())


def rows_by(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["format"], r["runtime"]): r for r in report["rows"] if r["environment"] == "current"}


# --------------------------------------------------------------------------- end to end


def check_measured_row(row: dict, report: dict) -> None:
    assert row["status"] == "ok", row["reason"]
    latency = row["latency_ms"]
    assert 0 < latency["min"] <= latency["median"] <= latency["p90"] <= latency["p99"]
    assert latency["n"] >= 20
    hop_s = report["bundle"]["hop_samples"] / report["bundle"]["sample_rate"]
    assert row["rtf"] == pytest.approx(latency["median"] / 1000 / hop_s)
    assert row["size_bytes"] == Path(row["model_file"]).stat().st_size
    assert row["cold_start_ms"] > 0 and row["peak_rss_bytes"] > 10 * 2**20
    assert row["cpu_ms_per_window"] > 0
    stages = row["cold_start_stages_ms"]
    assert set(stages) == {
        "interpreter_ms",
        "runtime_import_ms",
        "model_load_ms",
        "first_inference_ms",
    }
    assert all(value >= 0 for value in stages.values())
    assert sum(stages.values()) == pytest.approx(row["cold_start_ms"], rel=1e-6)  # <= 2 rounds
    assert row["macs_per_s"] == pytest.approx(
        report["bundle"]["macs_per_window"] / (latency["median"] / 1000)
    )


def test_the_table_json_and_plots_of_a_real_tflite_bundle(
    tflite_bundle: Path, tmp_path: Path
) -> None:
    proc, report = run_cli(
        tflite_bundle,
        tmp_path / "results",
        "--rounds", "2", "--seconds-per-row", "0.2", "--warmup-s", "0.05", "--threads", "1",
        "--only", "current",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_by(report)
    assert set(rows) == {
        ("pytorch", "torch"),
        ("onnx", "onnxruntime"),
        ("tflite_fp32", "litert"),
        ("tflite_int8", "litert"),
    }
    assert rows[("pytorch", "torch")]["status"] == "skipped"  # no checkpoint recorded
    assert rows[("onnx", "onnxruntime")]["status"] == "skipped"  # no model.onnx in the bundle
    for key in (("tflite_fp32", "litert"), ("tflite_int8", "litert")):
        row = rows[key]
        check_measured_row(row, report)
        assert len(row["round_medians_ms"]) == 2 and len(row["cold_starts_ms"]) == 2
        assert 0 < row["efficiency"] < 10  # against the measured peak
        assert row["speedup_vs_pytorch"] is None  # nothing to compare with
    int8, fp32 = rows[("tflite_int8", "litert")], rows[("tflite_fp32", "litert")]
    # accuracy columns come from parity.json
    assert int8["eer"] == pytest.approx(0.0625) and int8["agreement"] == pytest.approx(0.97)
    assert fp32["eer"] == pytest.approx(0.05)
    # the same windows went through both: int8 scores within its quantization error of fp32.
    # Measured on the fixture bundle's 8 benchmark windows (LiteRT 1 thread): 0.0057; the
    # bound allows 2.6x that for another LiteRT build's int8 kernels.
    assert int8["p_spoof_max_diff_vs_reference"] < 0.015
    assert int8["reference_row"] == fp32["key"]
    assert report["comparisons"][0]["int8_vs_tflite_fp32"] == pytest.approx(
        fp32["latency_ms"]["median"] / int8["latency_ms"]["median"]
    )
    # the peak is derived and explained
    assert {(p["precision"], p["threads"]) for p in report["peaks"]} == {("fp32", 1), ("int8", 1)}
    assert all("assumed" in p["derivation"] for p in report["peaks"] if p["precision"] == "int8")
    # terminal table with the reasons as numbered notes, comparison line, plots
    lines = proc.stdout.splitlines()
    assert any(
        line.startswith("| format | runtime | threads | status | size | EER") for line in lines
    )
    assert "skipped [1]" in proc.stdout and "records no checkpoint" in proc.stdout
    assert "TFLite int8 on litert" in proc.stdout and "TFLite fp32's" in proc.stdout
    assert [Path(p).name.rsplit("-", 1)[1] for p in report["plots"]] == [
        "latency.png",
        "accuracy.png",
    ]
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in report["plots"])


@pytest.mark.slow
def test_pytorch_onnx_and_tflite_all_run_with_ratios_to_pytorch(
    full_bundle: Path, tmp_path: Path
) -> None:
    proc, report = run_cli(full_bundle, tmp_path / "results", *QUICK, "--only", "current")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_by(report)
    for row in rows.values():
        check_measured_row(row, report)
    torch_median = rows[("pytorch", "torch")]["latency_ms"]["median"]
    for row in rows.values():
        assert row["speedup_vs_pytorch"] == pytest.approx(
            torch_median / row["latency_ms"]["median"]
        )
    assert rows[("pytorch", "torch")]["agreement"] == 1.0
    # the two fp32 exports of one CLAD give the same scores on the benchmark windows
    assert rows[("onnx", "onnxruntime")]["reference_row"] == rows[("pytorch", "torch")]["key"]
    # Measured on these 8 windows: 2.8e-9. The bound, 1e-6, is about 16 float32 steps at
    # P(spoof) 0.5: room for another summation order (threads), none for another model.
    assert rows[("onnx", "onnxruntime")]["p_spoof_max_diff_vs_reference"] < 1e-6
    assert "PyTorch eager's speed" in proc.stdout


def test_a_crashing_or_tampered_format_is_a_failed_row_and_the_others_still_run(
    full_bundle: Path, tmp_path: Path
) -> None:
    # A truncated int8 model, re-listed in the manifest as if the converter wrote it so: the
    # interpreter crashes on it (a segfault in LiteRT), which only a separate process survives.
    int8 = full_bundle / "model_int8.tflite"
    int8.write_bytes(int8.read_bytes()[: int8.stat().st_size // 2])
    list_file(full_bundle, "model_int8.tflite")
    # A model.onnx changed after conversion (manifest not updated): refused before running.
    onnx = full_bundle / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10] + b"0123456789")
    proc, report = run_cli(
        full_bundle,
        tmp_path / "results",
        *QUICK,
        "--only", "current", "tflite_fp32", "tflite_int8", "onnx",
        "--no-peak",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]  # a failed row is not a failed benchmark
    rows = rows_by(report)
    assert rows[("tflite_fp32", "litert")]["status"] == "ok"
    failed_int8 = rows[("tflite_int8", "litert")]
    assert failed_int8["status"] == "failed"
    assert "SIGSEGV" in failed_int8["reason"] or "model_int8.tflite" in failed_int8["reason"]
    failed_onnx = rows[("onnx", "onnxruntime")]
    assert failed_onnx["status"] == "failed"
    assert "model.onnx" in failed_onnx["reason"] and "sha256" in failed_onnx["reason"]
    assert failed_onnx["latency_ms"] is None and failed_onnx["speedup_vs_pytorch"] is None
    # the table says so, with the reason as a numbered note
    assert "| failed [" in proc.stdout and "sha256" in proc.stdout


def test_strict_exits_1_and_a_missing_bundle_exits_2(full_bundle: Path, tmp_path: Path) -> None:
    (full_bundle / "model_fp32.tflite").write_bytes(b"not a model")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--bundle", str(full_bundle), "--out",
         str(tmp_path / "r"), *QUICK, "--only", "current", "tflite_fp32", "--strict", "--no-plots",
         "--no-peak"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--bundle", str(tmp_path / "nowhere")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "nowhere" in proc.stderr and "manifest.json" in proc.stderr


BLOCKER = '''
"""Test-only: make the desktop stack unimportable, as on a Pi with only the device extra."""
import importlib.abc
import sys

BLOCKED = {"torch", "onnxruntime", "onnx", "tensorflow", "matplotlib", "rich"}


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, _Block())
'''


def test_runs_with_only_the_device_stack_when_torch_and_onnx_cannot_be_imported(
    full_bundle: Path, tmp_path: Path
) -> None:
    # A missing torch/onnxruntime cannot be caused for real in this venv, so a sitecustomize
    # on PYTHONPATH blocks them (and matplotlib, rich) in the benchmark and in every worker.
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=str(blocker))
    proc, report = run_cli(
        full_bundle, tmp_path / "results", *QUICK, "--only", "current", "--no-peak", env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_by(report)
    for key, module in ((("pytorch", "torch"), "torch"), (("onnx", "onnxruntime"), "onnxruntime")):
        assert rows[key]["status"] == "skipped"
        assert f"{module} is not installed" in rows[key]["reason"]
    assert rows[("tflite_int8", "litert")]["status"] == "ok"
    assert rows[("tflite_fp32", "litert")]["status"] == "ok"
    assert report["plots"] == [] and any("matplotlib" in n for n in report["notes"])


DEVICE_PYTHON = REPO / ".venv-device" / "bin" / "python"


@pytest.mark.skipif(not DEVICE_PYTHON.is_file(), reason="no .venv-device (scripts/device-venv.sh)")
def test_runs_in_the_device_venv(full_bundle: Path, tmp_path: Path) -> None:
    proc, report = run_cli(
        full_bundle,
        tmp_path / "results",
        *QUICK,
        "--only", "current",
        "--no-peak",
        python=str(DEVICE_PYTHON),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_by(report)
    assert rows[("pytorch", "torch")]["status"] == "skipped"
    assert rows[("onnx", "onnxruntime")]["status"] == "skipped"
    assert rows[("tflite_int8", "litert")]["status"] == "ok"
    assert rows[("tflite_int8", "litert")]["runtime_version"] == "2.3.0"
    assert ".venv-device" in rows[("tflite_int8", "litert")]["python"]
    # the device venv is the current interpreter here, so it has no rows of its own
    assert not [r for r in report["rows"] if r["environment"] == ".venv-device"]


# --------------------------------------------------------------------------- units


def test_planned_rows_cover_formats_runtimes_environments_and_thread_counts(
    full_bundle: Path,
) -> None:
    bundle = load_bundle(full_bundle)
    rows = plan_rows(bundle, BenchSettings(bundle=full_bundle, threads=(1, 4)), cores=4)
    current = [r for r in rows if r.environment.key == "current"]
    assert len(current) == 4 * 2  # four formats x two thread counts
    assert {r.threads for r in rows} == {1, 4}
    for environment in ENVIRONMENTS[1:]:
        venv_rows = [r for r in rows if r.environment.key == environment.key]
        python = REPO / str(environment.venv_dir) / "bin" / "python"
        if Path(sys.prefix).resolve() == python.parent.parent.resolve():
            assert not venv_rows
        elif not python.is_file():
            assert venv_rows and all(r.status == "skipped" for r in venv_rows)
            assert all("scripts/device-venv.sh" in r.reason for r in venv_rows)
        else:
            assert venv_rows and all(r.status == "pending" for r in venv_rows)


def test_a_bundle_without_a_recorded_checkpoint_skips_pytorch_with_the_reason(
    fixture_bundle: Path,
) -> None:
    bundle = load_bundle(fixture_bundle)
    rows = plan_rows(bundle, BenchSettings(bundle=fixture_bundle, threads=(1,)), cores=1)
    by_format = {r.format.key: r for r in rows if r.environment.key == "current"}
    assert by_format["pytorch"].status == "skipped"
    assert "data.trained_on.checkpoint" in by_format["pytorch"].reason
    assert by_format["onnx"].status == "skipped" and "model.onnx" in by_format["onnx"].reason


def _summary(fmt: str, runtime: str, threads: int, median_ms: float) -> dict:
    return {
        "key": f"{fmt}/{runtime}/current/{threads}",
        "format": fmt,
        "runtime": runtime,
        "runtime_version": "1.0",
        "environment": "current",
        "precision": "int8" if fmt == "tflite_int8" else "fp32",
        "threads": threads,
        "status": "ok",
        "latency_ms": {"median": median_ms},
        "speedup_vs_pytorch": None,
    }


def test_ratios_are_against_pytorch_at_the_same_thread_count() -> None:
    rows = [
        _summary("pytorch", "torch", 1, 8.0),
        _summary("pytorch", "torch", 2, 5.0),
        _summary("tflite_fp32", "litert", 1, 2.0),
        _summary("tflite_int8", "litert", 1, 0.5),
        _summary("tflite_fp32", "litert", 2, 1.0),
        _summary("tflite_int8", "litert", 2, 1.25),
        _summary("onnx", "onnxruntime", 4, 1.0),  # no PyTorch row at 4 threads
    ]
    add_ratios(rows)
    speedups = {(r["format"], r["threads"]): r["speedup_vs_pytorch"] for r in rows}
    assert speedups == {
        ("pytorch", 1): 1.0,
        ("pytorch", 2): 1.0,
        ("tflite_fp32", 1): 4.0,
        ("tflite_int8", 1): 16.0,
        ("tflite_fp32", 2): 5.0,
        ("tflite_int8", 2): 4.0,
        ("onnx", 4): None,
    }
    by_threads = {c["threads"]: c for c in comparisons(rows)}
    assert by_threads[1]["int8_vs_tflite_fp32"] == 4.0 and by_threads[1]["int8_vs_pytorch"] == 16.0
    assert by_threads[2]["int8_vs_tflite_fp32"] == 0.8  # int8 slower than fp32 here


def test_summary_rtf_efficiency_and_stats_follow_their_definitions(full_bundle: Path) -> None:
    bundle = load_bundle(full_bundle)
    row = next(
        r
        for r in plan_rows(bundle, BenchSettings(bundle=full_bundle, threads=(1,)), cores=1)
        if r.format.key == "tflite_int8" and r.environment.key == "current"
    )
    row.status = "ok"
    row.cold_starts_ms = [900.0, 700.0, 800.0]
    row.results = [
        {"latencies_ms": [1.0] * 40, "load_ms": 5.0, "peak_rss_bytes": 50 << 20},
        {"latencies_ms": [2.0] * 50 + [10.0] * 10, "load_ms": 7.0, "peak_rss_bytes": 60 << 20},
    ]
    cpu = read_cpu_info(ZEN4_CPUINFO, max_freq_path=Path("/nonexistent"), cores=2)
    peaks = derive_peaks(cpu, {1: 40e9})
    out = summarize_row(row, hop_s=0.125, macs_per_window=4_000_000, peaks=peaks, accuracy={})
    assert out["latency_ms"]["median"] == 2.0 and out["latency_ms"]["n"] == 100
    assert out["rtf"] == pytest.approx(2.0 / 1000 / 0.125)
    assert out["cold_start_ms"] == 800.0 and out["peak_rss_bytes"] == 60 << 20
    assert out["round_medians_ms"] == [1.0, 2.0] and out["round_spread"] == pytest.approx(0.5)
    assert out["macs_per_s"] == pytest.approx(2e9)
    assert out["efficiency"] == pytest.approx(2e9 / (40e9 * 4))  # int8 peak = 4 x fp32 (VNNI)
    assert latency_stats([3.0, 1.0, 2.0])["median"] == 2.0


ZEN4_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
cpu MHz\t\t: 2600.000
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512_vnni avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
"""

PI4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_the_compute_peak_is_derived_from_the_cpu_flags_and_says_how(tmp_path: Path) -> None:
    zen4 = read_cpu_info(ZEN4_CPUINFO, max_freq_path=tmp_path / "missing", cores=2)
    assert zen4.model == "AMD EPYC 9R14" and zen4.clock_ghz == pytest.approx(2.6)
    assert {"avx512f", "avx512_vnni"} <= set(zen4.flags)
    peaks = derive_peaks(zen4, {1: 30e9, 2: None})
    assert peaks[("fp32", 1)].macs_per_s == 30e9  # the measured GEMM rate wins
    assert peaks[("fp32", 1)].flags_macs_per_s == pytest.approx(16 * 2.6e9)
    assert peaks[("fp32", 2)].macs_per_s == pytest.approx(16 * 2.6e9 * 2)  # unmeasured: flags
    assert peaks[("int8", 1)].macs_per_s == 120e9 and "VNNI" in peaks[("int8", 1)].derivation

    max_freq = tmp_path / "cpuinfo_max_freq"
    max_freq.write_text("1800000\n")
    pi4 = read_cpu_info(PI4_CPUINFO, max_freq_path=max_freq, cores=4)
    assert pi4.model == "Cortex-A72 (Raspberry Pi 4 Model B Rev 1.4)"
    assert pi4.clock_ghz == pytest.approx(1.8) and pi4.flags == ("asimd",)
    pi_peaks = derive_peaks(pi4, {4: None})
    assert pi_peaks[("int8", 4)].macs_per_s == pytest.approx(8 * 1.8e9 * 4 * 2)  # no sdot: x2


def test_the_peak_is_the_best_of_the_measurements_before_and_after_the_rows() -> None:
    assert best_rates({1: 30e9, 2: None}, {1: 40e9, 2: None}) == {1: 40e9, 2: None}
    assert best_rates({1: 50e9, 2: 70e9}, {1: None, 2: 60e9}) == {1: 50e9, 2: 70e9}


def test_accuracy_is_read_from_the_parity_report_per_format_environment_and_runtime() -> None:
    accuracy = accuracy_by_row(PARITY)
    assert accuracy_for(accuracy, "tflite_int8", "current", "ai-edge-litert") == {
        "eer": 0.0625,
        "agreement": 0.97,
    }
    assert accuracy_for(accuracy, "tflite_int8", ".venv-device", "ai-edge-litert") == {
        "eer": 0.0625,
        "agreement": 0.96,
    }
    assert accuracy_for(accuracy, "pytorch", "current", "torch")["agreement"] == 1.0
    # not scored by the converter (skipped there), or scored on another runtime: no figures
    assert accuracy_for(accuracy, "tflite_int8", ".venv-tflite", "tflite-runtime") == {}
    assert accuracy_for(accuracy, "tflite_int8", "current", "tflite-runtime") == {}
    assert accuracy_by_row(["not", "a", "report"]) == {}


def test_parity_rows_are_joined_by_their_fields_and_old_reports_by_their_names() -> None:
    assert accuracy_by_row(PARITY_WITHOUT_FIELDS) == accuracy_by_row(PARITY)
    renamed = {**PARITY["rows"][4], "name": "int8 on the Pi's LiteRT"}  # the name is a label
    assert accuracy_by_row({"rows": [renamed]}) == {
        ("tflite_int8", ".venv-device", "ai-edge-litert"): {"eer": 0.0625, "agreement": 0.96}
    }


def test_a_saved_report_renders_again(tmp_path: Path) -> None:
    rows = [_summary("pytorch", "torch", 1, 8.0), _summary("tflite_int8", "litert", 1, 0.5)]
    add_ratios(rows)
    for r in rows:
        r.update(
            format_label=r["format"], size_bytes=2048, eer=0.05, agreement=1.0, rtf=0.01,
            cold_start_ms=500.0, peak_rss_bytes=100 << 20, macs_per_s=1e9, efficiency=0.1,
            cpu_ms_per_window=0.4,
            reason="",
        )  # fmt: skip
        r["latency_ms"].update(p90=1.0, p99=2.0)
    rows.append(
        dict(rows[1], status="failed", reason="boom", latency_ms=None, speedup_vs_pytorch=None)
    )
    table = markdown_table({"rows": rows})
    lines = table.splitlines()
    assert lines[0].count("|") == lines[2].count("|") == 17
    assert "16.00x" in lines[3] and "failed [1]" in lines[4] and lines[-1] == "[1] boom"
    report_path = tmp_path / "saved.json"
    report = {
        "rows": rows,
        "machine": {"cpu": read_cpu_info(ZEN4_CPUINFO, cores=2).to_dict(), "python": "3.11"},
        "bundle": {"model": "CLAD", "path": "b", "parameters": 1, "macs_per_window": 1,
                   "window_samples": 4000, "hop_ms": 125.0},
        "created": "2025-01-01T00:00:00+00:00", "host": "h", "duration_s": 1.0,
        "settings": {"rounds": 1, "seconds_per_row": 1.0},
        "definitions": dict.fromkeys(
            ("latency", "rtf", "cold_start", "efficiency", "speedup_vs_pytorch"), "d"
        ),
        "peaks": [], "comparisons": comparisons(rows),
    }  # fmt: skip
    report_path.write_text(json.dumps(report))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--from-json", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert table in proc.stdout and "16.00x PyTorch eager's speed" in proc.stdout


def test_a_checkpoint_changed_since_conversion_fails_the_pytorch_row(
    full_bundle: Path, tmp_path: Path, clad_files: tuple[Path, Path]
) -> None:
    checkpoint = tmp_path / "runs" / "best.pt"
    checkpoint.parent.mkdir()
    shutil.copy(clad_files[0], checkpoint)
    record_checkpoint(full_bundle, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes() + b"retrained")
    bundle = load_bundle(full_bundle)
    rows = plan_rows(bundle, BenchSettings(bundle=full_bundle, threads=(1,)), cores=1)
    pytorch = next(r for r in rows if r.format.key == "pytorch")
    assert pytorch.status == "failed"
    assert str(checkpoint) in pytorch.reason and "changed since the bundle was converted" in (
        pytorch.reason
    )


def test_a_hanging_worker_is_a_failed_row_with_the_timeout_as_its_reason(tmp_path: Path) -> None:
    """A worker that never answers (a runtime stuck in a deadlock) is killed at the timeout and
    recorded as failed; the benchmark goes on. The hang is real: an interpreter stand-in that
    reads its spec and then sleeps."""
    from benchmarks.runner import call_worker

    hanging = tmp_path / "python"
    hanging.write_text("#!/bin/sh\ncat > /dev/null\nexec sleep 600\n")
    hanging.chmod(0o755)
    result, spawn_ns, end_ns = call_worker(str(hanging), {"mode": "gemm"}, 1, timeout_s=1.0)
    assert result == {"status": "failed", "reason": "the worker did not finish in 1 s"}
    assert end_ns > spawn_ns > 0
