"""The parity gate: every format scores the held-out files, and must agree with PyTorch.

Each eval file is decoded and cut once (`train.scoring.prepare_file`: the device front
end, silent windows dropped). Every format then computes the logits of every window, and
the file score follows the one rule of `device.scores` (mean of the window logits,
softmax; thresholds and EERs on the spoof logit margin). Rows:

    torch                      the reference
    onnx                       onnxruntime, batch-1 graph
    fp32, int8                 the bundle's TFLite files through `device.runtime.Scorer`,
                               i.e. the code the device runs (ai-edge-litert, XNNPACK on)
    fp32/int8 @ <venv>         the same, in a subprocess of another device venv
                               (tflite-runtime 2.14, LiteRT 2.3); skipped, with the
                               reason, when the venv is not there, except the Pi's own
                               runtime (LiteRT 2.3 in .venv-device): its rows fail when it
                               cannot run, unless skipped by name (`--skip-runtime device`)

Per row: EER (rank of the spoof logit margin), accuracy and decision agreement with torch
at the bundle's threshold, max/mean |delta P(spoof)| per file, max |delta logit| per window.

The gate fails when a row failed to run (the Pi's runtime not built counts), when an int8
row agrees with torch on fewer than 99% of the decisions, when an int8 row's EER is more
than 1 percentage point from torch's, or when an ONNX or fp32 row's window logits differ
from torch's by more than 1e-4.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.audio import DEFAULT_SILENCE_FLOOR_DBFS
from device.runtimes import CURRENT_ENVIRONMENT, DEVICE_VENVS, DeviceVenv, device_venv_named
from device.scores import p_spoof, p_spoof_from_margin, spoof_margin
from train.data.records import BONAFIDE_ATTACK, Record
from train.metrics import compute_eer, error_rates, per_attack_eer
from train.scoring import PreparedFile, aggregate, prepare_file

Predictor = Callable[[np.ndarray], np.ndarray]

INT8_MIN_AGREEMENT = 0.99
INT8_MAX_EER_DELTA = 0.01
FLOAT_MAX_LOGIT_DIFF = 1e-4
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEVICE_VENVS = tuple(DEVICE_VENVS)
"""Every device venv of `device.runtimes.DEVICE_VENVS` (what each holds and scores is there)."""


def device_venv_formats(venv: str) -> tuple[str, ...]:
    """The formats scored in a device venv; both TFLite files for a venv not in the table."""
    known = DEVICE_VENVS.get(Path(venv).name)
    return known.parity_formats if known else ("fp32", "int8")


WORKER_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class GateLimits:
    int8_min_agreement: float = INT8_MIN_AGREEMENT
    int8_max_eer_delta: float = INT8_MAX_EER_DELTA
    float_max_logit_diff: float = FLOAT_MAX_LOGIT_DIFF


# --------------------------------------------------------------------------- corpus


@dataclass
class ScoringSet:
    """The files of one split, cut once: all kept windows in one array, with file offsets."""

    split: str
    records: list[Record]
    prepared: list[PreparedFile]
    windows: np.ndarray  # (total kept windows, window_samples) float32
    offsets: np.ndarray  # (files + 1,) start of each file's windows in `windows`

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.target for r in self.records], dtype=np.int64)

    @property
    def attacks(self) -> list[str]:
        return [r.attack for r in self.records]

    def file_logits(self, window_logits: np.ndarray) -> np.ndarray:
        """(files, 2) file logits by `train.scoring.aggregate` over each file's windows."""
        if window_logits.shape != (self.windows.shape[0], 2):
            raise ValueError(
                f"expected window logits shaped ({self.windows.shape[0]}, 2), got "
                f"{window_logits.shape}"
            )
        out = np.empty((len(self.prepared), 2), dtype=np.float64)
        for i, prepared in enumerate(self.prepared):
            chunk = window_logits[self.offsets[i] : self.offsets[i + 1]]
            out[i] = aggregate(chunk, prepared.windows_total, prepared.all_silent).logits
        return out


def prepare_split(
    records: Sequence[Record],
    split: str,
    window_samples: int,
    hop_samples: int,
    silence_floor_dbfs: float = DEFAULT_SILENCE_FLOOR_DBFS,
    progress: Callable[[], None] | None = None,
) -> ScoringSet:
    chosen = [r for r in records if r.split == split]
    prepared = []
    for record in chosen:
        prepared.append(prepare_file(record.path, window_samples, hop_samples, silence_floor_dbfs))
        if progress is not None:
            progress()
    counts = [p.windows.shape[0] for p in prepared]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    windows = (
        np.concatenate([p.windows for p in prepared], axis=0)
        if prepared
        else np.zeros((0, window_samples), dtype=np.float32)
    )
    return ScoringSet(split, chosen, prepared, np.ascontiguousarray(windows), offsets)


# --------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class Thresholds:
    """Chosen on the dev split from PyTorch's file scores."""

    eer: float
    eer_margin: float
    eer_p_spoof: float
    far_target: float
    far_margin: float
    far_p_spoof: float
    far_achieved: float  # bona fide called spoof at far_margin on dev
    far_spoof_acceptance: float  # spoof called bona fide at far_margin on dev
    files: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _between(thresholds: np.ndarray, index: int) -> float:
    """A threshold strictly between the distinct dev scores index-1 and index.

    Every threshold in (scores[index-1], scores[index]] makes the same dev decisions; the
    midpoint keeps the dev error rates and sits away from any dev file's score instead of
    on one (on a perfectly separated dev set, in the middle of the gap between classes).
    Beyond the ends: one margin unit below the lowest score or above the highest.
    """
    upper = float(thresholds[index])
    lower = float(thresholds[index - 1]) if index > 0 else -math.inf
    if math.isinf(upper) and math.isinf(lower):
        return 0.0
    if math.isinf(upper):
        return lower + 1.0
    if math.isinf(lower):
        return upper - 1.0
    return (lower + upper) / 2.0


def choose_thresholds(
    file_logits: np.ndarray, labels: np.ndarray, far_target: float = 0.01
) -> Thresholds:
    """Thresholds from dev file logits; see `thresholds_from_margins`."""
    return thresholds_from_margins(spoof_margin(file_logits), labels, far_target)


def thresholds_from_margins(
    m: np.ndarray, labels: np.ndarray, far_target: float = 0.01
) -> Thresholds:
    """The dev EER point, and the lowest threshold whose dev false-alarm rate is <= far_target.

    `m`: spoof logit margins of the dev files. False alarm = bona fide called spoof (the
    alarm the device raises by mistake). Each threshold is placed between two adjacent
    distinct dev scores (see `_between`).
    """
    m = np.asarray(m, dtype=np.float64)
    eer = compute_eer(m, labels)
    thresholds, rejection, acceptance = error_rates(m, labels)
    eer_index = int(np.searchsorted(thresholds, eer.threshold, side="left"))
    ok = np.flatnonzero(rejection <= far_target)
    far_index = int(ok[0])  # rejection is non-increasing; the last threshold (+inf) qualifies
    eer_margin = _between(thresholds, eer_index)
    far_margin = _between(thresholds, far_index)
    return Thresholds(
        eer=float(eer.eer),
        eer_margin=eer_margin,
        eer_p_spoof=float(p_spoof_from_margin(eer_margin)),
        far_target=float(far_target),
        far_margin=far_margin,
        far_p_spoof=float(p_spoof_from_margin(far_margin)),
        far_achieved=float(rejection[far_index]),
        far_spoof_acceptance=float(acceptance[far_index]),
        files=len(labels),
    )


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One format on one runtime, scored on the eval split (or skipped/failed, with why)."""

    name: str
    format: str  # torch | onnx | fp32 | int8
    runtime: str  # label: pip name and version ("ai-edge-litert 2.3.0"); "-" when it did not run
    distribution: str  # pip name of the runtime (device.runtimes), known even when skipped
    environment: str = CURRENT_ENVIRONMENT  # or the device venv it ran in (".venv-tflite")
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    window_logits: np.ndarray | None = None
    file_logits: np.ndarray | None = None
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


def compute_row_metrics(
    row: Row, reference: Row, scoring: ScoringSet, threshold_p_spoof: float
) -> dict[str, Any]:
    labels = scoring.labels
    for item in (row, reference):
        if item.file_logits is None or item.window_logits is None:
            raise ValueError(f"row {item.name!r} has no scores ({item.status}: {item.reason})")
    m = spoof_margin(row.file_logits)
    p = p_spoof(row.file_logits)
    p_ref = p_spoof(reference.file_logits)
    decisions = p >= threshold_p_spoof
    decisions_ref = p_ref >= threshold_p_spoof
    eer = compute_eer(m, labels)
    window_diff = np.abs(
        row.window_logits.astype(np.float64) - reference.window_logits.astype(np.float64)
    )
    p_diff = np.abs(p - p_ref)
    return {
        "files": int(labels.size),
        "windows": int(row.window_logits.shape[0]),
        "eer": float(eer.eer),
        "accuracy": float(np.mean(decisions == (labels == 1))),
        "agreement": float(np.mean(decisions == decisions_ref)),
        "disagreements": int(np.sum(decisions != decisions_ref)),
        "max_abs_dp_spoof": float(p_diff.max()),
        "mean_abs_dp_spoof": float(p_diff.mean()),
        "max_abs_logit_diff": float(window_diff.max()) if window_diff.size else 0.0,
        "mean_abs_logit_diff": float(window_diff.mean()) if window_diff.size else 0.0,
        "per_attack_eer": {
            attack: values["eer"]
            for attack, values in per_attack_eer(
                m, labels, scoring.attacks, BONAFIDE_ATTACK
            ).items()
        },
    }


@dataclass(frozen=True)
class GateCheck:
    row: str
    check: str
    value: float | None
    limit: float
    passed: bool
    skipped: bool = False

    def describe(self) -> str:
        if self.skipped:
            return f"skipped  {self.row}: {self.check}"
        mark = "pass" if self.passed else "FAIL"
        if self.value is None:  # a row that did not run: the check names why
            return f"{mark}     {self.row}: {self.check}"
        return f"{mark}     {self.row}: {self.check} = {self.value:.6g} (limit {self.limit:g})"


def gate_checks(rows: Sequence[Row], reference: Row, limits: GateLimits) -> list[GateCheck]:
    checks: list[GateCheck] = []
    ref_eer = reference.metrics.get("eer")
    for row in rows:
        if row is reference:
            continue
        if row.status != "ok":
            what = "int8 agreement and EER" if row.format == "int8" else "max |delta logit|"
            ran_not = row.status == "skipped"  # skipped passes; failed (could not run) fails
            checks.append(
                GateCheck(
                    row.name, f"{what} ({row.status}: {row.reason})", None, 0.0, ran_not, ran_not
                )
            )
            continue
        if row.format == "int8":
            agreement = row.metrics["agreement"]
            checks.append(
                GateCheck(
                    row.name,
                    "decision agreement with torch",
                    agreement,
                    limits.int8_min_agreement,
                    agreement >= limits.int8_min_agreement,
                )
            )
            delta = abs(row.metrics["eer"] - ref_eer)
            checks.append(
                GateCheck(
                    row.name,
                    "|EER - torch EER|",
                    delta,
                    limits.int8_max_eer_delta,
                    delta <= limits.int8_max_eer_delta,
                )
            )
        else:
            diff = row.metrics["max_abs_logit_diff"]
            checks.append(
                GateCheck(
                    row.name,
                    "max |delta logit| per window vs torch",
                    diff,
                    limits.float_max_logit_diff,
                    diff <= limits.float_max_logit_diff,
                )
            )
    return checks


# --------------------------------------------------------------------------- other venvs


def device_venv_python(venv: str | Path) -> Path | None:
    path = Path(venv)
    if not path.is_absolute():
        path = REPO_ROOT / path
    python = path / "bin" / "python"
    return python if python.is_file() else None


@dataclass(frozen=True)
class VenvPlan:
    """What the gate does with one device venv before any bundle exists."""

    venv: str
    action: str  # run | skip | fail
    reason: str = ""  # for skip and fail: the whole sentence, naming the venv


def pi_runtime_missing(venv: DeviceVenv, why: str) -> str:
    """The message of a failed row of the Pi's runtime: what was expected, what is wrong, the fix."""
    return (
        f"the Pi's runtime ({venv.holds}) could not run: {why}; build it with "
        f"`make {venv.make_target}` (`make convert` builds it), or skip its rows by name with "
        f"`--skip-runtime {venv.kind}` (`make convert SKIP_RUNTIMES={venv.kind}`)"
    )


def plan_device_venvs(venvs: Sequence[str], skip: Sequence[str] = ()) -> list[VenvPlan]:
    """Run, skip or fail each device venv of the gate.

    `skip` names runtimes the user chose to leave out ("device" or ".venv-device"); an unknown
    name raises ValueError. A venv that is not built is skipped, except the Pi's own runtime
    (`DeviceVenv.pi_runtime`), whose rows fail: a bundle is not checked on the runtime the Pi
    runs unless the user says so. The Pi's runtime fails the same way when it is left out of
    `venvs` without being skipped by name.
    """
    skipped = {device_venv_named(name).name for name in skip}
    plans = []
    for venv in venvs:
        known = DEVICE_VENVS.get(Path(venv).name)
        if known is not None and known.name in skipped:
            plans.append(
                VenvPlan(venv, "skip", f"{venv} skipped by name (--skip-runtime {known.kind})")
            )
        elif device_venv_python(venv) is not None:
            plans.append(VenvPlan(venv, "run"))
        elif known is not None and known.pi_runtime:
            why = f"{venv} is not built (no {Path(venv) / 'bin' / 'python'})"
            plans.append(VenvPlan(venv, "fail", pi_runtime_missing(known, why)))
        else:
            target = known.make_target if known else "install"
            plans.append(VenvPlan(venv, "skip", f"{venv} not built (make {target})"))
    listed = {Path(venv).name for venv in venvs}
    for known in DEVICE_VENVS.values():
        if known.pi_runtime and known.name not in listed | skipped:
            why = f"{known.name} is not among the device venvs to run"
            plans.append(VenvPlan(known.name, "fail", pi_runtime_missing(known, why)))
    return plans


class DeviceVenvJob:
    """`convert.device_worker` in another venv's Python, run in the background.

    `start()` raises FileNotFoundError when the venv is not there; `result()` returns the
    window logits of each format and the worker's info, or raises RuntimeError.
    """

    def __init__(
        self,
        venv: str | Path,
        bundle_dir: Path,
        windows_path: Path,
        formats: Sequence[str],
        work_dir: Path,
        *,
        num_threads: int = 1,
        timeout_s: float = WORKER_TIMEOUT_S,
    ) -> None:
        self.venv = str(venv)
        self.formats = tuple(formats)
        self.work_dir = work_dir
        self.timeout_s = timeout_s
        python = device_venv_python(venv)
        if python is None:
            raise FileNotFoundError(f"{venv}: no bin/python (build it with `make tflite-venv`)")
        self.python = python
        self.command = [
            str(python),
            "-m",
            "convert.device_worker",
            "--bundle",
            str(bundle_dir.resolve()),
            "--windows",
            str(windows_path.resolve()),
            "--out-dir",
            str(work_dir.resolve()),
            "--formats",
            ",".join(self.formats),
            "--threads",
            str(num_threads),
        ]
        self._process: subprocess.Popen[str] | None = None
        self._started = 0.0
        self.seconds = 0.0

    def start(self) -> DeviceVenvJob:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._started = time.perf_counter()
        self._process = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return self

    def cancel(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.communicate()

    def result(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if self._process is None:
            raise RuntimeError(f"{self.venv}: the worker was not started")
        try:
            output, _ = self._process.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired as error:
            self.cancel()
            raise RuntimeError(
                f"{self.python} -m convert.device_worker did not finish in {self.timeout_s:.0f} s"
            ) from error
        self.seconds = time.perf_counter() - self._started
        if self._process.returncode != 0:
            raise RuntimeError(
                f"{self.python} -m convert.device_worker exited {self._process.returncode}: "
                f"{(output or '')[-2000:]}"
            )
        info = json.loads((self.work_dir / "info.json").read_text())
        logits = {fmt: np.load(self.work_dir / f"logits_{fmt}.npy") for fmt in self.formats}
        return logits, info


# --------------------------------------------------------------------------- report


def render_table(rows: Sequence[Row]) -> str:
    """Markdown table of the rows (percentages for rates)."""
    header = (
        "| format | runtime | files | EER % | accuracy % | agreement % | max abs dP | "
        "mean abs dP | max abs dlogit | status |"
    )
    lines = [header, "|" + "---|" * 10]
    for row in rows:
        m = row.metrics
        if row.status != "ok":
            lines.append(
                f"| {row.name} | {row.runtime} | - | - | - | - | - | - | - | "
                f"{row.status}: {row.reason} |"
            )
            continue
        lines.append(
            f"| {row.name} | {row.runtime} | {m['files']} | {100 * m['eer']:.2f} | "
            f"{100 * m['accuracy']:.2f} | {100 * m['agreement']:.2f} | "
            f"{m['max_abs_dp_spoof']:.2e} | {m['mean_abs_dp_spoof']:.2e} | "
            f"{m['max_abs_logit_diff']:.2e} | ok |"
        )
    return "\n".join(lines)
