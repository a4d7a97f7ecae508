"""`python -m convert --run runs/demo --out bundles/demo`: parse, hand over, exit with the gate.

Exit status: 0 the bundle is written and the parity gate passed; 1 the bundle and its report
are written but the gate failed; 2 the conversion could not be done (the error says why).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from convert.calibrate import DEFAULT_CALIBRATION_SEED, DEFAULT_CALIBRATION_WINDOWS
from convert.parity import DEFAULT_DEVICE_VENVS
from device.runtimes import DEVICE_VENVS, device_venv_named

EXIT_PASSED = 0
EXIT_GATE_FAILED = 1
EXIT_ERROR = 2
SKIPPABLE = tuple(v.kind for v in DEVICE_VENVS.values())
PI_VENV = next(v.name for v in DEVICE_VENVS.values() if v.pi_runtime)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert a training run to ONNX, fp32 and int8 TFLite, run the parity gate "
        "and write the model bundle.",
    )
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="run directory")
    parser.add_argument("--out", type=Path, default=Path("bundles/demo"), help="bundle directory")
    parser.add_argument("--checkpoint", default="best.pt", help="checkpoint file in --run")
    parser.add_argument(
        "--calibration-windows",
        type=int,
        default=DEFAULT_CALIBRATION_WINDOWS,
        help="real training windows that set the int8 ranges (at least 300)",
    )
    parser.add_argument("--calibration-seed", type=int, default=DEFAULT_CALIBRATION_SEED)
    parser.add_argument(
        "--far-target",
        type=float,
        default=0.01,
        help="false-alarm rate (bona fide called spoof) of the second dev threshold",
    )
    parser.add_argument(
        "--device-venv",
        action="append",
        default=None,
        help=f"device venvs to run the TFLite files in as well (default: "
        f"{' '.join(DEFAULT_DEVICE_VENVS)}; skipped when missing, except the Pi's runtime)",
    )
    parser.add_argument(
        "--skip-runtime",
        action="append",
        default=[],
        metavar="NAME",
        help=f"leave a device runtime out of the gate by name ({', '.join(SKIPPABLE)}); "
        f"without it the gate fails when the Pi's runtime ({PI_VENV}) cannot run",
    )
    parser.add_argument(
        "--no-device-venvs",
        action="store_true",
        help="in-process LiteRT only (skips every device runtime by name, the Pi's included)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="keep onnx2tf's files here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--json", action="store_true", help="print parity.json instead of the table"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported after parsing: --help stays instant without torch and tensorflow.
    import json

    from convert.errors import CalibrationError, ConversionError, RunDirectoryError
    from convert.parity import GateCheck
    from convert.pipeline import ConvertSettings, convert_run
    from device.audio import AudioError
    from device.bundle import BundleError

    if args.far_target <= 0 or args.far_target >= 1:
        print(f"error: --far-target must be in (0, 1), got {args.far_target}", file=sys.stderr)
        return EXIT_ERROR
    for name in args.skip_runtime:
        try:
            device_venv_named(name)
        except ValueError as error:
            print(f"error: --skip-runtime: {error}", file=sys.stderr)
            return EXIT_ERROR
    venvs = () if args.no_device_venvs else tuple(args.device_venv or DEFAULT_DEVICE_VENVS)
    skip = SKIPPABLE if args.no_device_venvs else tuple(args.skip_runtime)
    settings = ConvertSettings(
        run_dir=args.run,
        out_dir=args.out,
        checkpoint_name=args.checkpoint,
        calibration_windows=args.calibration_windows,
        calibration_seed=args.calibration_seed,
        far_target=args.far_target,
        device_venvs=venvs,
        skip_runtimes=skip,
        work_dir=args.work_dir,
        show_progress=not args.no_progress,
    )
    try:
        result = convert_run(settings)
    except (
        RunDirectoryError,
        CalibrationError,
        ConversionError,
        BundleError,
        AudioError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(result.report, indent=2))
    else:
        print(result.table)
        print()
        for check in result.report["gate"]:
            print(GateCheck(**check).describe())
        xnnpack = result.report["xnnpack"]["int8"]
        latency = result.report["latency_1_thread"]
        print(
            f"int8 XNNPACK partitions: {xnnpack['partitions']} "
            f"({xnnpack['delegated_ops']}/{xnnpack['ops']} ops delegated"
            + (
                f"; outside: {', '.join(op['op_name'] for op in xnnpack['undelegated'])}"
                if xnnpack["undelegated"]
                else ""
            )
            + ")"
        )
        print(
            f"latency, 1 thread, median: fp32 {latency['fp32']['median_ms']:.3f} ms, "
            f"int8 {latency['int8']['median_ms']:.3f} ms"
        )
        print(f"bundle: {result.out_dir}  (report: parity.md, parity.json)")
    if not result.passed:
        print(
            "parity gate FAILED: the bundle and its report are written; see parity.md",
            file=sys.stderr,
        )
        return EXIT_GATE_FAILED
    return EXIT_PASSED
