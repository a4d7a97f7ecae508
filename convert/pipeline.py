"""`make convert`: a training run -> ONNX, fp32 and int8 TFLite, the parity gate, one bundle.

    run_dir/best.pt (+ its run config: dataset format and root)
      -> calibration windows (train split)      convert.calibrate
      -> model.onnx, checked                    convert.export
      -> onnx2tf + int8 quantization, in the background   convert.tflite
         meanwhile: dev thresholds (torch), eval windows, torch and ONNX eval logits
      -> model_fp32.tflite, model_int8.tflite: tensor specs, XNNPACK partitions, latency
      -> manifest.json (models), read back as the device does
      -> parity rows through device.runtime (+ other device venvs)   convert.parity
      -> parity.json, parity.md, plots/, final manifest.json (sha256 of every file)

The bundle is assembled in a staging directory next to `out_dir` and moved into place at
the end, so `out_dir` never holds half a bundle; a lock file next to it refuses a second
conversion into the same `out_dir` while one runs. A failed gate still writes the whole
bundle and its report (the manifest says `parity.passed: false`); the caller exits non-zero.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convert import parity as par
from convert.bundle_writer import (
    build_manifest,
    file_entry,
    tool_versions,
    verify_bundle,
    write_manifest,
)
from convert.calibrate import (
    DEFAULT_CALIBRATION_SEED,
    DEFAULT_CALIBRATION_WINDOWS,
    CalibrationSet,
    draw_calibration_windows,
)
from convert.errors import ConversionError, RunDirectoryError
from convert.export import (
    ONNX_INPUT_NAME,
    ONNX_OPSET,
    ONNX_OUTPUT_NAME,
    OnnxRuntimePredictor,
    export_onnx,
    torch_logits,
)
from convert.litert import DelegationReport, delegation_report, measure_latency, tensor_specs
from convert.tflite import IO_DTYPE_INT8, Onnx2tfJob, TfliteConversion
from device.bundle import MANIFEST_NAME, MODEL_FILES, TensorSpec
from device.runtimes import (
    DEVICE_VENVS,
    RUNTIMES,
    device_venv_named,
    runtime_for_module,
    runtime_label,
)
from device.scores import CALIBRATED_SCORE_DEFINITION, calibrate_threshold, spoof_margin

CHECKPOINT_NAME = "best.pt"
PARITY_JSON = "parity.json"
PARITY_MD = "parity.md"
PLOTS_DIR = "plots"

Log = Callable[[str], None]


@dataclass(frozen=True)
class ConvertSettings:
    """Everything one conversion depends on; saved into parity.json."""

    run_dir: Path
    out_dir: Path
    checkpoint_name: str = CHECKPOINT_NAME
    calibration_windows: int = DEFAULT_CALIBRATION_WINDOWS
    calibration_seed: int = DEFAULT_CALIBRATION_SEED
    far_target: float = 0.01
    num_threads: int = 1
    device_venvs: tuple[str, ...] = par.DEFAULT_DEVICE_VENVS
    skip_runtimes: tuple[str, ...] = ()  # device runtimes left out by name ("device")
    latency_runs: int = 300
    limits: par.GateLimits = field(default_factory=par.GateLimits)
    work_dir: Path | None = None  # keep onnx2tf's files here; a temporary directory when None
    show_progress: bool = True

    def __post_init__(self) -> None:
        for name in self.skip_runtimes:
            device_venv_named(name)  # ValueError naming the runtimes there are

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "out_dir": str(self.out_dir),
            "checkpoint": self.checkpoint_name,
            "calibration_windows": self.calibration_windows,
            "calibration_seed": self.calibration_seed,
            "far_target": self.far_target,
            "num_threads": self.num_threads,
            "device_venvs": list(self.device_venvs),
            "skip_runtimes": list(self.skip_runtimes),
            "latency_runs": self.latency_runs,
            "limits": dict(self.limits.__dict__),
        }


@dataclass(frozen=True)
class ConvertResult:
    out_dir: Path
    passed: bool
    report: dict[str, Any]
    table: str


# --------------------------------------------------------------------------- helpers


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _progress(description: str, total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar on a terminal; nothing otherwise."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    if not (enabled and console.is_terminal):
        yield lambda: None
        return
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


class _Clock:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.started = time.perf_counter()
        self.steps: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        self.log(f"[{time.perf_counter() - self.started:6.1f} s] {name} ...")
        yield
        self.steps[name] = round(time.perf_counter() - started, 3)

    @property
    def total_s(self) -> float:
        return time.perf_counter() - self.started


@dataclass
class LoadedRun:
    model: Any
    checkpoint: Any
    config: Any  # train.config.TrainConfig
    checkpoint_path: Path


def load_run(run_dir: Path, checkpoint_name: str = CHECKPOINT_NAME) -> LoadedRun:
    """The run's best weights and the settings it trained with (dataset format and root)."""
    from train.checkpoint import CheckpointError, model_from_checkpoint
    from train.config import CONFIG_FILE, ConfigError, TrainConfig

    if not run_dir.is_dir():
        raise RunDirectoryError(
            f"{run_dir}: no such run directory; expected the output of `make train`"
        )
    path = run_dir / checkpoint_name
    try:
        model, checkpoint = model_from_checkpoint(path)
    except CheckpointError as error:
        raise RunDirectoryError(str(error)) from error
    run_config = checkpoint.run_config
    try:
        if run_config:
            config = TrainConfig.from_dict(run_config)
        elif (run_dir / CONFIG_FILE).is_file():
            config = TrainConfig.load(run_dir / CONFIG_FILE)
        else:
            raise RunDirectoryError(
                f"{path}: holds no run config and {run_dir / CONFIG_FILE} is missing; the "
                "dataset the model was trained on is unknown"
            )
    except (ConfigError, TypeError, ValueError, KeyError) as error:
        if isinstance(error, RunDirectoryError):
            raise
        raise RunDirectoryError(f"{path}: its run config cannot be read ({error})") from error
    scoring = checkpoint.scoring
    if int(scoring["window_samples"]) != model.config.window_samples:
        raise RunDirectoryError(
            f"{path}: scoring.window_samples {scoring['window_samples']} differs from the "
            f"model's window_samples {model.config.window_samples}"
        )
    return LoadedRun(model=model, checkpoint=checkpoint, config=config, checkpoint_path=path)


def load_records(config: Any) -> tuple[list[Any], dict[str, Any]]:
    """The run's dataset, read with the settings it trained with (as train.train does)."""
    from train.data import DatasetError, read_dataset

    try:
        dataset = read_dataset(config)
    except DatasetError as error:
        raise RunDirectoryError(
            f"cannot read the dataset the run was trained on ({config.format} at "
            f"{config.root}): {error}"
        ) from error
    return dataset.records, dataset.summary()


class _BundleLock:
    """An exclusive lock on one bundle path, so two conversions never write it at once.

    `<parent>/.<name>.lock`, held with flock for the whole conversion; the kernel drops it
    when the process ends, however it ends.
    """

    def __init__(self, out_dir: Path) -> None:
        import fcntl

        out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.path = out_dir.parent / f".{out_dir.name}.lock"
        self._handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (closed in release)
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "another process"
            self._handle.close()
            raise ConversionError(
                f"{out_dir}: another conversion is writing this bundle right now ({holder}, "
                f"lock {self.path}); wait for it to finish or choose another --out"
            ) from error
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()}\n")
        self._handle.flush()

    def release(self) -> None:
        self._handle.close()


def _prepare_out_dir(out_dir: Path) -> Path:
    """Refuse to replace a directory that is not a bundle; return a new staging directory."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConversionError(f"{out_dir}: exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
            raise ConversionError(
                f"{out_dir}: exists, is not empty and holds no {MANIFEST_NAME}; refusing to "
                "replace something that is not a bundle"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the bundle is meant to be copied and read
    return staging


def _onnx_specs(window_samples: int) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    return (
        (TensorSpec(ONNX_INPUT_NAME, (1, window_samples), "float32"),),
        (TensorSpec(ONNX_OUTPUT_NAME, (1, 2), "float32"),),
    )


def _check_tflite_io(name: str, specs: tuple, window_samples: int, dtype: str) -> None:
    inputs, outputs = specs
    problems = []
    if len(inputs) != 1 or inputs[0].shape != (1, window_samples) or inputs[0].dtype != dtype:
        problems.append(
            f"input {[(t.shape, t.dtype) for t in inputs]}, expected (1, {window_samples}) {dtype}"
        )
    if len(outputs) != 1 or outputs[0].shape != (1, 2) or outputs[0].dtype != dtype:
        problems.append(f"output {[(t.shape, t.dtype) for t in outputs]}, expected (1, 2) {dtype}")
    if problems:
        raise ConversionError(f"{name}: unexpected tensor layout: " + "; ".join(problems))


def _distribution(module: str) -> str:
    """The pip name of a runtime module (the module itself if device.runtimes lacks it)."""
    runtime = runtime_for_module(module)
    return runtime.distribution if runtime else module


def _venv_distribution(venv: str) -> str:
    known = DEVICE_VENVS.get(Path(venv).name)
    return RUNTIMES[known.runtime].distribution if known else "-"


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class _TfliteFiles:
    fp32_path: Path
    int8_path: Path
    specs: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]]
    delegation: dict[str, DelegationReport]
    latency: dict[str, Any]


@dataclass(frozen=True)
class _Loaded:
    """Step 1: the run, its dataset records and the scoring settings of its checkpoint."""

    run: LoadedRun
    records: list[Any]
    dataset_summary: dict[str, Any]
    window_samples: int
    hop_samples: int
    floor_dbfs: float


@dataclass(frozen=True)
class _DevThresholds:
    """Step 4: the dev thresholds, the score calibration fitted on dev, and the dev margins."""

    thresholds: par.Thresholds
    score_calibration: Any
    source: str
    margins: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class _Reference:
    """Step 5: the eval windows and the torch (reference) and onnxruntime rows."""

    evaluation: par.ScoringSet
    reference: par.Row
    rows: list[par.Row]


@dataclass(frozen=True)
class _Report:
    """Step 10: the parity gate's outcome, parity.json's content, the table and the plots."""

    checks: list[par.GateCheck]
    passed: bool
    table: str
    parity_report: dict[str, Any]
    plots: list[Path]


@dataclass(frozen=True)
class _ManifestFacts:
    """What every manifest of one conversion says about the model, data and tools."""

    loaded: _Loaded
    calibration: CalibrationSet
    dev: _DevThresholds
    evaluation: par.ScoringSet
    conversion: TfliteConversion


class _Conversion:
    """One conversion's steps. Each step returns a frozen result that the later steps take as
    arguments (convert_run passes them in order); the only state kept here is what runs in the
    background (the onnx2tf job and the device-venv workers), so that it can be cancelled."""

    def __init__(self, settings: ConvertSettings, staging: Path, work_dir: Path, log: Log) -> None:
        self.settings = settings
        self.staging = staging
        self.work_dir = work_dir
        self.log = log
        self.job: Onnx2tfJob | None = None
        self.venv_jobs: list[par.DeviceVenvJob] = []

    def cancel_background(self) -> None:
        if self.job is not None:
            self.job.cancel()
        for job in self.venv_jobs:
            job.cancel()

    # ------------------------------------------------------------------ steps

    def load(self) -> _Loaded:
        import torch

        run = load_run(self.settings.run_dir, self.settings.checkpoint_name)
        records, dataset_summary = load_records(run.config)
        scoring = run.checkpoint.scoring
        torch.manual_seed(0)
        return _Loaded(
            run=run,
            records=records,
            dataset_summary=dataset_summary,
            window_samples=int(scoring["window_samples"]),
            hop_samples=int(scoring["hop_samples"]),
            floor_dbfs=float(scoring["silence_floor_dbfs"]),
        )

    def draw_calibration(self, loaded: _Loaded, given: CalibrationSet | None) -> CalibrationSet:
        c = given
        if c is None:
            c = draw_calibration_windows(
                loaded.records,
                loaded.window_samples,
                max(1, min(loaded.hop_samples, loaded.window_samples // 8)),
                loaded.floor_dbfs,
                windows=self.settings.calibration_windows,
                seed=self.settings.calibration_seed,
            )
        self.log(
            f"           {c.windows.shape[0]} windows from {c.files} files, by label "
            f"{c.by_label}, by attack {c.by_attack}"
        )
        return c

    def export_and_start_tflite(self, loaded: _Loaded, calibration: CalibrationSet) -> Path:
        """model.onnx in the staging folder; onnx2tf and the quantization start on it."""
        onnx_path = export_onnx(
            loaded.run.model, loaded.window_samples, self.staging / MODEL_FILES["onnx"]
        )
        self.job = Onnx2tfJob(onnx_path, calibration.windows, self.work_dir / "tflite").start()
        self.log(
            f"           onnx2tf + int8 quantization started in the background ({self.job.work_dir})"
        )
        return onnx_path

    def choose_thresholds(self, loaded: _Loaded) -> _DevThresholds:
        dev_records = [r for r in loaded.records if r.split == "dev"]
        labels = np.array([r.target for r in dev_records], dtype=np.int64)
        margins, source = _dev_margins(
            loaded.run,
            dev_records,
            loaded.window_samples,
            loaded.hop_samples,
            loaded.floor_dbfs,
            self.settings,
            self.log,
        )
        t = par.thresholds_from_margins(margins, labels, self.settings.far_target)
        score_calibration = _fit_score_calibration(margins, labels, self.log)
        self.log(
            f"           dev EER {100 * t.eer:.2f}% at P(spoof) >= {t.eer_p_spoof:.4f}; "
            f"{100 * t.far_target:g}% false-alarm threshold {t.far_p_spoof:.4f} "
            f"({source})"
        )
        return _DevThresholds(t, score_calibration, source, margins, labels)

    def score_reference_rows(self, loaded: _Loaded, onnx_path: Path) -> _Reference:
        import onnxruntime
        import torch

        eval_records = [r for r in loaded.records if r.split == "eval"]
        if not eval_records:
            raise RunDirectoryError(
                f"{loaded.run.config.root}: the dataset has no eval split; the parity gate needs "
                "held-out files"
            )
        with _progress("eval files", len(eval_records), self.settings.show_progress) as advance:
            evaluation = par.prepare_split(
                eval_records,
                "eval",
                loaded.window_samples,
                loaded.hop_samples,
                loaded.floor_dbfs,
                advance,
            )
        windows = evaluation.windows
        reference = _timed_row(
            par.Row("torch", "torch", f"torch {torch.__version__}", "torch"),
            lambda: torch_logits(loaded.run.model, windows),
        )
        onnx = _timed_row(
            par.Row("onnx", "onnx", f"onnxruntime {onnxruntime.__version__}", "onnxruntime"),
            lambda: OnnxRuntimePredictor(onnx_path)(windows),
        )
        return _Reference(evaluation, reference, [reference, onnx])

    def finish_tflite(self) -> TfliteConversion:
        if self.job is None:
            raise ConversionError("the TFLite conversion was never started")
        conversion = self.job.wait()
        self.job = None
        self.log(
            f"           onnx2tf {conversion.onnx2tf_seconds:.1f} s, int8 quantization "
            f"{conversion.quantize_seconds:.1f} s"
        )
        return conversion

    def inspect_tflite(self, loaded: _Loaded, conversion: TfliteConversion) -> _TfliteFiles:
        fp32_path = self.staging / MODEL_FILES["fp32"]
        int8_path = self.staging / MODEL_FILES["int8"]
        shutil.copyfile(conversion.float32_path, fp32_path)
        shutil.copyfile(conversion.int8_path, int8_path)
        specs = {"fp32": tensor_specs(fp32_path), "int8": tensor_specs(int8_path)}
        _check_tflite_io(fp32_path.name, specs["fp32"], loaded.window_samples, "float32")
        _check_tflite_io(int8_path.name, specs["int8"], loaded.window_samples, IO_DTYPE_INT8)
        threads = self.settings.num_threads
        delegation = {
            "fp32": delegation_report(fp32_path, threads),
            "int8": delegation_report(int8_path, threads),
        }
        for name, report in delegation.items():
            self.log(f"           {name}: {report.summary()}")
        fp32_ms, int8_ms = measure_latency(
            [fp32_path, int8_path], num_threads=1, runs=self.settings.latency_runs
        )
        latency = {
            "num_threads": 1,
            "fp32": fp32_ms.__dict__,
            "int8": int8_ms.__dict__,
            "int8_not_slower": int8_ms.median_ms <= fp32_ms.median_ms,
        }
        self.log(
            f"           1 thread, median: fp32 {fp32_ms.median_ms:.3f} ms, int8 "
            f"{int8_ms.median_ms:.3f} ms"
        )
        return _TfliteFiles(fp32_path, int8_path, specs, delegation, latency)

    def write_model_manifest(
        self, facts: _ManifestFacts, onnx_path: Path, tflite: _TfliteFiles
    ) -> dict[str, Any]:
        """The manifest of the three model files, read back as the device does; their entries."""
        onnx_in, onnx_out = _onnx_specs(facts.loaded.window_samples)
        specs = tflite.specs
        model_files = {
            MODEL_FILES["onnx"]: file_entry(
                onnx_path, precision="fp32", inputs=onnx_in, outputs=onnx_out
            ),
            MODEL_FILES["fp32"]: file_entry(
                tflite.fp32_path,
                precision="fp32",
                inputs=specs["fp32"][0],
                outputs=specs["fp32"][1],
            ),
            MODEL_FILES["int8"]: file_entry(
                tflite.int8_path,
                precision="int8",
                inputs=specs["int8"][0],
                outputs=specs["int8"][1],
            ),
        }
        write_manifest(self.staging, _manifest(facts, model_files, None))
        verify_bundle(self.staging)
        return model_files

    def score_tflite_rows(self, evaluation: par.ScoringSet) -> list[par.Row]:
        """The device's own Scorer in-process, while the device-venv workers score too."""
        from device.runtime import Scorer

        windows_path = self.work_dir / "eval_windows.npy"
        np.save(windows_path, evaluation.windows)
        pending: list[tuple[str, par.DeviceVenvJob | None, str, str]] = []
        plans = par.plan_device_venvs(self.settings.device_venvs, self.settings.skip_runtimes)
        for plan in plans:
            venv = plan.venv
            if plan.action != "run":
                status = "skipped" if plan.action == "skip" else "failed"
                pending.append((venv, None, status, plan.reason))
                continue
            try:
                job = par.DeviceVenvJob(
                    venv,
                    self.staging,
                    windows_path,
                    par.device_venv_formats(venv),
                    self.work_dir / f"worker-{Path(venv).name}",
                    num_threads=self.settings.num_threads,
                ).start()
            except OSError as error:
                pending.append((venv, None, "failed", f"{venv} failed to start: {error}"))
                continue
            pending.append((venv, job, "ok", ""))
            self.venv_jobs.append(job)
        rows: list[par.Row] = []
        for model_format in ("fp32", "int8"):
            scorer = Scorer(self.staging, model_format, num_threads=self.settings.num_threads)
            module = scorer.runtime.module
            row = _timed_row(
                par.Row(
                    model_format,
                    model_format,
                    runtime_label(module, scorer.runtime.version),
                    _distribution(module),
                ),
                lambda scorer=scorer: scorer.score_windows(evaluation.windows),
            )
            rows.append(row)
        for venv, job, status, reason in pending:
            rows.extend(self._collect_venv(venv, job, status, reason))
        return rows

    def _collect_venv(
        self, venv: str, job: par.DeviceVenvJob | None, status: str, reason: str
    ) -> list[par.Row]:
        names = {fmt: f"{fmt} @ {venv}" for fmt in par.device_venv_formats(venv)}
        if job is not None:
            try:
                logits, info = job.result()
            except (RuntimeError, OSError, ValueError) as error:
                self.log(f"           {venv}: failed: {error}")
                job, status, reason = None, "failed", str(error).strip().splitlines()[-1][:300]
        else:
            self.log(f"           {venv}: {status}: {reason}")
        if job is None:
            return [
                par.Row(
                    name,
                    fmt,
                    "-",
                    _venv_distribution(venv),
                    environment=venv,
                    status=status,
                    reason=reason,
                )
                for fmt, name in names.items()
            ]
        runtime = runtime_label(info["runtime"], info["runtime_version"])
        self.log(f"           {venv}: {runtime}, numpy {info['numpy']}, {job.seconds:.1f} s")
        rows = []
        for model_format, name in names.items():
            row = par.Row(
                name,
                model_format,
                runtime,
                _distribution(info["runtime"]),
                environment=venv,
                seconds=job.seconds,
            )
            row.window_logits = logits[model_format]
            rows.append(row)
        return rows

    def report(
        self,
        facts: _ManifestFacts,
        reference: _Reference,
        rows: list[par.Row],
        tflite: _TfliteFiles,
        steps: dict[str, float],
    ) -> _Report:
        """Per-row metrics (set on each row), the gate, parity.json/.md and the plots."""
        evaluation, threshold = reference.evaluation, facts.dev.thresholds.eer_p_spoof
        for row in rows:
            if row.status == "ok":
                row.file_logits = evaluation.file_logits(row.window_logits)
                row.metrics = par.compute_row_metrics(
                    row, reference.reference, evaluation, threshold
                )
        checks = par.gate_checks(rows, reference.reference, self.settings.limits)
        failed_rows = [r for r in rows if r.status == "failed"]
        passed = all(c.passed for c in checks) and not failed_rows
        table = par.render_table(rows)
        conversion = facts.conversion
        parity_report = {
            "passed": passed,
            "gate": [c.__dict__ for c in checks],
            "limits": dict(self.settings.limits.__dict__),
            "threshold": {**_threshold(facts), **facts.dev.thresholds.to_dict()},
            "rows": [
                {
                    "name": r.name,
                    "format": r.format,
                    "runtime": r.runtime,
                    "distribution": r.distribution,
                    "environment": r.environment,
                    "status": r.status,
                    "reason": r.reason,
                    "seconds": round(r.seconds, 3),
                    **r.metrics,
                }
                for r in rows
            ],
            "eval": {
                "files": len(evaluation.records),
                "windows": int(evaluation.windows.shape[0]),
                "all_silent_files": int(sum(p.all_silent for p in evaluation.prepared)),
            },
            "xnnpack": {name: rep.to_dict() for name, rep in tflite.delegation.items()},
            "latency_1_thread": tflite.latency,
            "conversion_seconds": {
                "onnx2tf": round(conversion.onnx2tf_seconds, 2),
                "int8_quantization": round(conversion.quantize_seconds, 2),
            },
            "timings_s": dict(steps),
            "settings": self.settings.to_dict(),
        }
        (self.staging / PARITY_JSON).write_text(json.dumps(parity_report, indent=2) + "\n")
        (self.staging / PARITY_MD).write_text(
            render_markdown(parity_report, table, tflite.delegation),
            encoding="utf-8",
        )
        from convert.plots import write_plots

        plots = write_plots(
            rows,
            reference.reference,
            evaluation.labels,
            threshold,
            facts.dev.thresholds.eer_margin,
            self.staging / PLOTS_DIR,
        )
        plots.append(self._calibration_report(facts.dev, evaluation, rows))
        return _Report(checks, passed, table, parity_report, plots)

    def _calibration_report(
        self, dev: _DevThresholds, evaluation: par.ScoringSet, rows: list[par.Row]
    ) -> Path:
        """ECE before/after on dev (PyTorch) and eval (the int8 bundle), reliability PNG."""
        from convert.score_calibration import ece_pair, plot_reliability

        fit = dev.score_calibration
        int8 = next(r for r in rows if r.name == "int8" and r.status == "ok")
        splits = {
            "dev (PyTorch)": (dev.margins, dev.labels),
            "eval (int8)": (spoof_margin(int8.file_logits), evaluation.labels),
        }
        for key, (margins, labels) in zip(("dev", "eval"), splits.values(), strict=True):
            fit.ece_before[key], fit.ece_after[key] = ece_pair(margins, labels, fit.calibration)
        self.log(
            f"           calibration ECE dev {fit.ece_before['dev']:.4f} -> "
            f"{fit.ece_after['dev']:.4f}, eval (int8) {fit.ece_before['eval']:.4f} -> "
            f"{fit.ece_after['eval']:.4f}"
        )
        return plot_reliability(
            splits, fit.calibration, self.staging / PLOTS_DIR / "reliability.png"
        )

    def write_final_manifest(
        self,
        facts: _ManifestFacts,
        model_files: dict[str, Any],
        tflite: _TfliteFiles,
        report: _Report,
    ) -> None:
        files = dict(model_files)
        for path in [self.staging / PARITY_JSON, self.staging / PARITY_MD, *report.plots]:
            files[path.relative_to(self.staging).as_posix()] = file_entry(path)
        latency = tflite.latency
        parity = {
            "passed": report.passed,
            "report": PARITY_JSON,
            "failed_checks": [c.describe() for c in report.checks if not c.passed],
            "xnnpack_partitions_int8": tflite.delegation["int8"].partitions,
            "latency_ms_1_thread": {
                "fp32": round(latency["fp32"]["median_ms"], 4),
                "int8": round(latency["int8"]["median_ms"], 4),
            },
        }
        write_manifest(self.staging, _manifest(facts, files, parity))
        verify_bundle(self.staging)


def _timed_row(row: par.Row, compute: Callable[[], np.ndarray]) -> par.Row:
    started = time.perf_counter()
    row.window_logits = compute()
    row.seconds = time.perf_counter() - started
    return row


# --------------------------------------------------------------------------- manifest parts


def _manifest(
    facts: _ManifestFacts, files: dict[str, Any], parity: dict[str, Any] | None
) -> dict[str, Any]:
    from convert.score_calibration import manifest_entry

    extra: dict[str, Any] = {
        "threshold_details": facts.dev.thresholds.to_dict(),
        "calibration": manifest_entry(facts.dev.score_calibration, facts.dev.source),
    }
    if parity is not None:
        extra["parity"] = parity
    loaded = facts.loaded
    manifest = build_manifest(
        model=_model_summary(loaded.run),
        window_samples=loaded.window_samples,
        hop_samples=loaded.hop_samples,
        silence_floor_dbfs=loaded.floor_dbfs,
        threshold=_threshold(facts),
        files=files,
        data=_data(facts),
        tools=_tools(facts.conversion),
        extra=extra,
    )
    manifest["score"]["definition"] = CALIBRATED_SCORE_DEFINITION
    return manifest


def _model_summary(run: LoadedRun) -> dict[str, Any]:
    data = run.checkpoint.data
    model = run.model
    return {
        "name": data.get("model_name", "CLAD"),
        "parameters": int(data.get("parameters") or _count_parameters(model)),
        "macs_per_window": int(data.get("macs_per_window") or _count_macs(model)),
        "config": model.config.to_dict(),
        "input": "one normalized window, [1, window_samples] (int8 file: quantize with "
        "files.model_int8.tflite.inputs[0] scale and zero_point)",
        "output": "logits (bonafide, spoof), [1, 2]",
    }


def _threshold(facts: _ManifestFacts) -> dict[str, Any]:
    t, calibration = facts.dev.thresholds, facts.dev.score_calibration.calibration
    return {  # calibrated P(spoof): the same decisions as the raw margins (a monotone map)
        "value": calibrate_threshold(t.eer_margin, calibration),
        "method": "eer_dev",
        "eer_dev": t.eer,
        "far_target": t.far_target,
        "far_target_value": calibrate_threshold(t.far_margin, calibration),
    }


def _data(facts: _ManifestFacts) -> dict[str, Any]:
    run, summary = facts.loaded.run, facts.loaded.dataset_summary
    return {
        "trained_on": {
            "format": run.config.format,
            "root": str(run.config.root),
            "track": run.config.track,
            "seed": run.config.seed,
            "splits": summary["splits"],
            "skipped_records": summary["problems"]["total"],
            "checkpoint": {
                "file": str(run.checkpoint_path),
                "sha256": _sha256(run.checkpoint_path),
                "epoch": run.checkpoint.data.get("epoch"),
                "dev": run.checkpoint.dev,
            },
        },
        "calibrated_on": facts.calibration.describe(),
        "thresholds_from": {
            "split": "dev",
            "files": facts.dev.thresholds.files,
            "scores": facts.dev.source,
        },
        "parity_on": {
            "split": "eval",
            "files": len(facts.evaluation.records),
            "windows": int(facts.evaluation.windows.shape[0]),
        },
    }


def _tools(conversion: TfliteConversion) -> dict[str, Any]:
    return {
        **tool_versions(),
        "onnx_opset": ONNX_OPSET,
        "onnx_exporter": "torch.onnx.export(dynamo=False), eval mode, BatchNorm folded",
        "onnx2tf_arguments": " ".join(conversion.onnx2tf_arguments),
        "int8_quantization": conversion.quantization,
        "int8_io": (
            "int8 input and output: the device quantizes the normalized window with the "
            "input's scale/zero_point and dequantizes the logits, so the graph is integer "
            "end to end"
        ),
    }


def convert_run(
    settings: ConvertSettings,
    *,
    calibration: CalibrationSet | None = None,
    log: Log = _stderr_log,
) -> ConvertResult:
    """Convert one run into a bundle and run the parity gate (see the module docstring).

    `calibration` replaces the seeded draw from the training split (tests use it to build a
    genuinely bad int8 model and watch the gate trip). The steps run in the order written
    here; each takes the results of the steps before it.
    """
    clock = _Clock(log)
    lock = _BundleLock(settings.out_dir)
    try:
        staging = _prepare_out_dir(settings.out_dir)
    except ConversionError:
        lock.release()
        raise
    temporary = None
    work_dir = settings.work_dir
    if work_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="clad-convert-")
        work_dir = Path(temporary.name)
    work_dir.mkdir(parents=True, exist_ok=True)
    steps = _Conversion(settings, staging, work_dir, log)
    step = clock.step
    try:
        with step(f"loading {settings.run_dir / settings.checkpoint_name}"):
            loaded = steps.load()
        with step("drawing calibration windows from the training split"):
            calibration = steps.draw_calibration(loaded, calibration)
        with step("exporting ONNX (opset 17, [1, window_samples]) + onnx.checker"):
            onnx_path = steps.export_and_start_tflite(loaded, calibration)
        with step("dev split: PyTorch file scores, thresholds"):
            dev = steps.choose_thresholds(loaded)
        with step("eval split: windows, PyTorch and onnxruntime logits"):
            reference = steps.score_reference_rows(loaded, onnx_path)
        with step("waiting for onnx2tf and the int8 quantization"):
            conversion = steps.finish_tflite()
        with step("TFLite files: tensor specs, XNNPACK partitions, latency at 1 thread"):
            tflite = steps.inspect_tflite(loaded, conversion)
        facts = _ManifestFacts(loaded, calibration, dev, reference.evaluation, conversion)
        with step("writing the model manifest and reading it back as the device does"):
            model_files = steps.write_model_manifest(facts, onnx_path, tflite)
        with step("TFLite eval logits: device.runtime in-process + device venvs"):
            rows = [*reference.rows, *steps.score_tflite_rows(reference.evaluation)]
        with step("parity metrics, gate, report and plots"):
            report = steps.report(facts, reference, rows, tflite, clock.steps)
        with step("final manifest (sha256 of every file), moving the bundle into place"):
            steps.write_final_manifest(facts, model_files, tflite, report)
        if settings.out_dir.exists():
            shutil.rmtree(settings.out_dir)
        staging.rename(settings.out_dir)
        log(f"[{clock.total_s:6.1f} s] bundle written to {settings.out_dir}")
        result = {**report.parity_report}
        result["timings_s"] = {**clock.steps, "total": round(clock.total_s, 2)}
        return ConvertResult(
            out_dir=settings.out_dir,
            passed=report.passed,
            report=result,
            table=report.table,
        )
    finally:
        steps.cancel_background()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if temporary is not None:
            temporary.cleanup()
        lock.release()


def _fit_score_calibration(margins: np.ndarray, labels: np.ndarray, log: Log) -> Any:
    from convert.score_calibration import fit_calibration

    fit = fit_calibration(margins, labels)
    log(f"           score calibration on dev file margins: {fit.reason}")
    return fit


DEV_SCORES_FILE = "scores_dev.txt"
DEV_CHECK_FILES = 16
DEV_CHECK_MAX_DIFF = 1e-4


def _dev_margins(
    run: LoadedRun,
    dev_records: list[Any],
    window_samples: int,
    hop_samples: int,
    floor_dbfs: float,
    settings: ConvertSettings,
    log: Log,
) -> tuple[np.ndarray, str]:
    """Spoof logit margins of the dev files: from the run's score file when it is the same model.

    Training scored the dev split with these very weights and wrote `scores_dev.txt`
    (ASVspoof convention: logit_bonafide - logit_spoof, 6 decimals). It is used when it
    covers every dev file and a seeded sample of DEV_CHECK_FILES files, scored again here
    with PyTorch, agrees within DEV_CHECK_MAX_DIFF; otherwise the whole dev split is scored.
    """
    path = run.checkpoint_path.parent / DEV_SCORES_FILE
    file_margins = _read_score_file(path)
    ids = [r.utterance_id or Path(r.path).stem for r in dev_records]
    if file_margins is not None and all(i in file_margins for i in ids):
        margins = np.array([file_margins[i] for i in ids], dtype=np.float64)
        rng = np.random.default_rng(0)
        sample = sorted(rng.choice(len(dev_records), min(DEV_CHECK_FILES, len(ids)), replace=False))
        checked = par.prepare_split(
            [dev_records[i] for i in sample], "dev", window_samples, hop_samples, floor_dbfs
        )
        torch_margins = spoof_margin(checked.file_logits(torch_logits(run.model, checked.windows)))
        diff = float(np.max(np.abs(torch_margins - margins[sample])))
        if diff <= DEV_CHECK_MAX_DIFF:
            return margins, (
                f"PyTorch file scores from {path.name} ({len(sample)} files re-scored here, "
                f"max difference {diff:.1e})"
            )
        log(
            f"           {path} differs from these weights by {diff:.2e} on {len(sample)} "
            "files: scoring the dev split here"
        )
    with _progress("dev files", len(dev_records), settings.show_progress) as advance:
        dev = par.prepare_split(
            dev_records, "dev", window_samples, hop_samples, floor_dbfs, advance
        )
    return spoof_margin(dev.file_logits(torch_logits(run.model, dev.windows))), (
        "PyTorch file scores computed here"
    )


def _read_score_file(path: Path) -> dict[str, float] | None:
    """utterance id -> spoof margin from an ASVspoof score file, or None when unusable."""
    if not path.is_file():
        return None
    out: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) != 4:
            return None
        try:
            out[parts[0]] = -float(parts[3])  # higher = more bona fide -> spoof margin
        except ValueError:
            return None
    return out


def _sha256(path: Path) -> str:
    from device.bundle import sha256_of

    return sha256_of(path)


def _count_parameters(model: Any) -> int:
    from train.model import count_parameters

    return count_parameters(model)


def _count_macs(model: Any) -> int:
    from train.model import count_macs

    return count_macs(model)


def render_markdown(
    report: dict[str, Any], table: str, delegation: dict[str, DelegationReport]
) -> str:
    threshold = report["threshold"]
    latency = report["latency_1_thread"]
    lines = [
        "# Parity gate",
        "",
        f"Result: **{'PASSED' if report['passed'] else 'FAILED'}**",
        "",
        f"Eval split: {report['eval']['files']} files, {report['eval']['windows']} windows. "
        f"Threshold: P(spoof) >= {threshold['value']:.4f} (dev EER point, dev EER "
        f"{100 * threshold['eer_dev']:.2f}%); {100 * threshold['far_target']:g}% dev "
        f"false-alarm threshold {threshold['far_target_value']:.4f}.",
        "",
        table,
        "",
        "## Gate",
        "",
    ]
    for check in report["gate"]:
        lines.append(f"- {par.GateCheck(**check).describe()}")
    lines += [
        "",
        "## XNNPACK and latency (1 thread, this machine)",
        "",
        f"- fp32: {delegation['fp32'].summary()}",
        f"- int8: {delegation['int8'].summary()}",
        f"- median latency: fp32 {latency['fp32']['median_ms']:.3f} ms, int8 "
        f"{latency['int8']['median_ms']:.3f} ms "
        f"({'int8 not slower' if latency['int8_not_slower'] else 'int8 SLOWER than fp32'})",
        "",
    ]
    return "\n".join(lines)
