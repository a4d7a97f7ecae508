"""`python -m device.bench` (clad-agent bench): the Pi owner's benchmark, run in the Pi's venv.

It runs with only the device runtime (.venv-device: LiteRT 2.3, numpy 2, no torch or
TensorFlow) on the real fixture bundle, and its rows are `make bench` rows: the same keys,
rendered by the desktop's own report code. Timings are not asserted, only what they are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.formats import ENVIRONMENTS, FORMATS, RUNTIMES
from benchmarks.report import markdown_table
from benchmarks.runner import Row, summarize_row
from device.bench import main, read_thermal
from tests.device_fixtures import REPO, cached_bundle

DEVICE_PYTHON = REPO / ".venv-device" / "bin" / "python"


@pytest.fixture(scope="module")
def fixture_bundle(request: pytest.FixtureRequest) -> Path:
    return cached_bundle(Path(request.config.cache.mkdir("device-fixture-bundles")))


def make_bench_row_keys() -> set[str]:
    """The keys of one `make bench` row (benchmarks.runner.summarize_row)."""
    row = Row(FORMATS["tflite_int8"], RUNTIMES["litert"], ENVIRONMENTS[0], 1, sys.executable)
    row.status = "skipped"
    return set(summarize_row(row, 0.5, 0, {}, {}))


@pytest.mark.skipif(not DEVICE_PYTHON.is_file(), reason="no .venv-device (scripts/device-venv.sh)")
def test_bench_runs_in_the_device_venv_and_writes_make_bench_rows(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pi.json"
    done = subprocess.run(
        [
            *(str(DEVICE_PYTHON), "-m", "device.bench", "--bundle", str(fixture_bundle)),
            *("--threads", "1", "2", "--rounds", "2", "--seconds-per-row", "0.4"),
            *("--sustain-s", "0.5", "--out", str(out)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(r["format"], r["threads"]) for r in rows] == [
        ("tflite_int8", 1),
        ("tflite_int8", 2),
        ("tflite_fp32", 1),
        ("tflite_fp32", 2),
    ]
    hop_s = report["bundle"]["hop_ms"] / 1000.0
    for row in rows:
        assert set(row) == make_bench_row_keys()
        assert row["status"] == "ok", row["reason"]
        assert (row["runtime"], row["runtime_version"]) == ("litert", "2.3.0")
        assert row["environment"] == "current" and ".venv-device" in row["python"]
        assert row["latency_ms"]["n"] >= 2 * 20  # two rounds of at least 20 windows
        assert row["rtf"] == pytest.approx(row["latency_ms"]["median"] / 1000.0 / hop_s)
        assert len(row["cold_starts_ms"]) == 2 and len(row["round_medians_ms"]) == 2
        stages = row["cold_start_stages_ms"]
        assert set(stages) == {
            "interpreter_ms",
            "runtime_import_ms",
            "model_load_ms",
            "first_inference_ms",
        }
        assert all(value > 0 for value in stages.values())
        assert row["peak_rss_bytes"] > 0 and row["size_bytes"] > 0
        assert len(row["logits"]) == 4 and all(len(pair) == 2 for pair in row["logits"])
    # The same file on the same runtime: int8 (integer kernels) gives the same logits at 1 and
    # 2 threads, fp32 within float rounding.
    assert rows[0]["logits"] == rows[1]["logits"]
    np.testing.assert_allclose(rows[2]["logits"], rows[3]["logits"], atol=1e-5)
    sustained = report["thermal"]["sustained"]
    assert sustained["status"] == "ok" and sustained["windows"] > 0
    for when in ("before", "after"):
        reading = report["thermal"][when]
        assert (reading["temp_c"] is None) == reading["temp_source"].startswith("absent: ")
        assert (reading["throttled"] is None) == reading["throttled_source"].startswith("absent")
    # The desktop's report code renders the Pi's rows: the schema is the same.
    table = markdown_table(report)
    assert table.count("| TFLite int8 | litert 2.3.0") == 2
    assert table.count("| TFLite fp32 | litert 2.3.0") == 2
    # And the readable table on stdout.
    assert "median ms" in done.stdout and done.stdout.count("litert 2.3.0") == 4


@pytest.mark.skipif(not DEVICE_PYTHON.is_file(), reason="no .venv-device (scripts/device-venv.sh)")
def test_rows_of_another_interpreter_come_in_the_same_run(fixture_bundle: Path) -> None:
    """The Pi's LiteRT (.venv-device) and this interpreter's, side by side in one report."""
    from importlib.metadata import version

    done = subprocess.run(
        [
            *(str(DEVICE_PYTHON), "-m", "device.bench", "--bundle", str(fixture_bundle)),
            *("--formats", "int8", "--threads", "1", "--rounds", "1", "--seconds-per-row", "0.2"),
            *("--sustain-s", "0", "--json", "--python", sys.executable),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    rows = [(r["environment"], r["runtime"], r["runtime_version"]) for r in report["rows"]]
    desktop = Path(sys.executable).parent.parent.name
    assert rows == [
        ("current", "litert", "2.3.0"),
        (desktop, "litert", version("ai-edge-litert")),
    ]
    assert report["thermal"] == {"sustained": None}  # --sustain-s 0: no readings


def test_the_soc_temperature_and_throttling_flags_are_read_or_said_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = tmp_path / "temp"
    zone.write_text("48312\n")  # what /sys/class/thermal/thermal_zone0/temp holds on a Pi
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    reading = read_thermal(zone)
    assert reading["temp_c"] == pytest.approx(48.312)
    assert (reading["throttled"], reading["throttled_source"]) == (None, "absent: no vcgencmd")
    # A stand-in for the Pi firmware's tool, answering as it does: bits 0, 2, 16 and 18.
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "vcgencmd").write_text("#!/bin/sh\necho throttled=0x50005\n")
    (tools / "vcgencmd").chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    reading = read_thermal(tmp_path / "no-such-zone")
    assert reading["temp_c"] is None and reading["temp_source"].startswith("absent: ")
    assert reading["throttled"] == "0x50005"
    assert reading["throttled_flags"] == [
        "under-voltage now",
        "throttled now",
        "under-voltage has occurred",
        "throttling has occurred",
    ]


def test_a_missing_bundle_is_an_error_that_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--bundle", str(tmp_path / "nope"), "--sustain-s", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "nope") in err


def test_a_workers_peak_rss_is_its_own_not_its_parents() -> None:
    """Linux carries the spawning process's peak into a child's ru_maxrss through exec; the
    worker's figure (VmHWM) must not include the 400 MiB this test process holds."""
    held = np.ones(400 * 2**20 // 8)  # 400 MiB, touched, so resident in this process
    code = "from device.measure import peak_rss_bytes; print(peak_rss_bytes())"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    child_mib = int(result.stdout) / 2**20
    assert 5 < child_mib < 150, f"the child reported {child_mib:.0f} MiB"
    assert held.sum() == held.size  # keeps the 400 MiB alive until the child has answered
