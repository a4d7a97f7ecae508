"""`clad-agent` (= `python -m device`): devices, score, listen.

    clad-agent devices [--json]
    clad-agent score FILE... --bundle DIR [--json] [--model int8|fp32] [--windows]
    clad-agent listen --bundle DIR --source mic|stdin|FILE [--device NAME] [--rate HZ]
                      [--channels N] [--realtime] [--api HOST:PORT] [--config FILE.toml]
                      [--events-file PATH] [--json] [--every-window] ...
    clad-agent calibrate --config FILE.toml [--bundle DIR] --source mic|stdin|FILE
                      [--minutes N] [--target-fa-per-hour R] [--device NAME] [--rate HZ]

This module parses and hands over: settings come from --config (TOML) and are overridden
by flags (device.config); the work is done by device.runtime and device.agent.
Exit status: 0 success; 1 a file failed to score, or the agent failed; 2 bad usage,
settings, bundle or source.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from device.audio import DEFAULT_MAX_DURATION_S, AudioError
from device.bundle import BundleError
from device.config import (
    TOKEN_ENV,
    ApiSettings,
    ConfigError,
    DecisionSettings,
    EventSettings,
    ModelSettings,
    Settings,
    SourceSettings,
    load_settings,
    override,
)
from device.runtime import MODEL_FORMATS, InterpreterUnavailableError, Scorer

log = logging.getLogger("device.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    """The clad-agent commands and their options.

    Long because: one add_argument call (with its help text) per option, declarations only.
    """
    parser = argparse.ArgumentParser(
        prog="clad-agent",
        description="Audio deepfake detection on the device: score files, or listen to a "
        "microphone, stdin or a file and report decisions.",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="stderr log level (default: warning for score/devices, info for listen)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "bench",
        help="latency at 1..N threads, RTF, cold start, peak RSS and SoC temperature of a bundle "
        "on this machine (options: clad-agent bench --help; same as python -m device.bench)",
        add_help=False,
    )
    devices = sub.add_parser("devices", help="list capture devices (PyAudio)")
    devices.add_argument(
        "--json", action="store_true", help="one JSON line per device (default: a table)"
    )

    score = sub.add_parser("score", help="score audio files, one line per file")
    score.add_argument("files", nargs="+", metavar="FILE", help="audio files (WAV, FLAC, OGG, MP3)")
    score.add_argument(
        "--bundle", required=True, metavar="DIR", help="model bundle directory (required)"
    )
    score.add_argument(
        "--model", choices=MODEL_FORMATS, default="int8", help="model format (default int8)"
    )
    score.add_argument(
        "--threads", type=int, default=1, metavar="N", help="interpreter threads (default 1)"
    )
    score.add_argument(
        "--public-key",
        metavar="FILE",
        default=None,
        help="Ed25519 public key: refuse a bundle without a valid manifest.sig (default: "
        "signatures not checked)",
    )
    score.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="P",
        help="P(spoof) threshold (default: the manifest's)",
    )
    score.add_argument(
        "--json", action="store_true", help="one JSON object per line (default: short text)"
    )
    score.add_argument(
        "--windows",
        action="store_true",
        help="include every window's P(spoof) (window_scores; default off)",
    )
    score.add_argument(
        "--max-audio-s",
        type=float,
        default=DEFAULT_MAX_DURATION_S,
        metavar="S",
        help="refuse files declaring more audio than this, in seconds, before decoding "
        f"(default {DEFAULT_MAX_DURATION_S:g})",
    )

    listen = sub.add_parser("listen", help="score a stream and report decisions")
    _listen_options(listen)

    calibrate = sub.add_parser(
        "calibrate",
        help="listen to the room's genuine audio and set a per-device threshold in the "
        "settings file",
    )
    add = calibrate.add_argument
    add(
        "--config",
        required=True,
        metavar="FILE.toml",
        help="the agent's settings file (required): read, and [device_calibration] written "
        "(created if missing; the bundle is never written)",
    )
    add("--bundle", metavar="DIR", help="model bundle (default: [model] bundle of --config)")
    add("--model", choices=MODEL_FORMATS, default=None, help="model format (default int8)")
    add(
        "--public-key",
        metavar="FILE",
        default=None,
        help="Ed25519 public key: refuse a bundle without a valid signature (default: "
        "[model] public_key, else not checked)",
    )
    add("--source", metavar="mic|stdin|FILE", help="what to listen to (default: [source] kind)")
    add(
        "--device",
        metavar="NAME",
        help="mic: device index or name substring (default: the default input)",
    )
    add("--rate", type=int, default=None, metavar="HZ", help="stdin: sample rate (required)")
    add("--channels", type=int, default=None, metavar="N", help="channels (default 1)")
    add(
        "--minutes",
        type=float,
        default=10.0,
        metavar="N",
        help="minutes of genuine room audio to listen to (default 10; a file may end sooner)",
    )
    add(
        "--target-fa-per-hour",
        type=float,
        default=1.0,
        metavar="R",
        help="false alarms per hour allowed on that audio (default 1)",
    )
    return parser


def _listen_options(listen: argparse.ArgumentParser) -> None:
    """`listen` flags; each overrides the settings-file key named in its help (defaults shown).

    Long because: one add_argument call (with its help text) per option, declarations only.
    """
    m, src, d, e, a = (
        ModelSettings(),
        SourceSettings(),
        DecisionSettings(),
        EventSettings(),
        ApiSettings(),
    )
    add = listen.add_argument
    add("--config", metavar="FILE.toml", help="settings file; flags override it (default: none)")
    add(
        "--bundle",
        metavar="DIR",
        help="model bundle directory with manifest.json (required, here or as [model] bundle)",
    )
    add(
        "--model",
        choices=MODEL_FORMATS,
        default=None,
        help=f"model format (default {m.model_format})",
    )
    add(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help=f"interpreter threads (default {m.num_threads})",
    )
    add(
        "--threshold",
        type=float,
        default=None,
        metavar="P",
        help="P(spoof) decision threshold, strictly between 0 and 1 (default: the manifest's)",
    )
    add(
        "--source",
        metavar="mic|stdin|FILE",
        help=f"a microphone, raw s16le PCM on stdin, or an audio file (default {src.kind})",
    )
    add(
        "--device",
        metavar="NAME",
        help="mic: device index or name substring (default: the default input)",
    )
    add(
        "--rate",
        type=int,
        default=None,
        metavar="HZ",
        help="stdin: sample rate in Hz (required); mic: force a capture rate "
        "(default: first of 48000, 44100, 16000 the device supports)",
    )
    add(
        "--channels",
        type=int,
        default=None,
        metavar="N",
        help=f"channels captured or on stdin, downmixed to mono (default {src.channels})",
    )
    add(
        "--chunk-ms",
        type=float,
        default=None,
        metavar="MS",
        help=f"audio per read from the source, in ms (default {src.chunk_ms:g})",
    )
    add(
        "--queue-chunks",
        type=int,
        default=None,
        metavar="N",
        help=f"chunks buffered between reader and scorer (default {src.queue_chunks})",
    )
    add(
        "--realtime",
        action="store_true",
        default=None,
        help="file: replay at real-time pace (default: as fast as scored)",
    )
    add(
        "--max-seconds",
        type=float,
        default=None,
        metavar="S",
        help="stop after this many seconds of audio (default: no limit)",
    )
    add(
        "--smoothing-windows",
        type=int,
        default=None,
        metavar="N",
        help=f"non-silent windows averaged for a decision (default {d.smoothing_windows})",
    )
    add(
        "--min-windows-above",
        type=int,
        default=None,
        metavar="K",
        help="K of N votes: also require K of the last smoothing windows to be at or above "
        f"threshold + margin to raise an alarm, 0 = off (default {d.min_windows_above})",
    )
    add(
        "--margin",
        type=float,
        default=None,
        metavar="P",
        help=f"hysteresis around the threshold, in P(spoof) (default {d.margin:g})",
    )
    add(
        "--silence-windows",
        type=int,
        default=None,
        metavar="N",
        help=f"consecutive silent windows before 'silence' (default {d.silence_windows})",
    )
    add(
        "--events-file",
        metavar="PATH",
        default=None,
        help="append events as JSON lines to this file, rotated (default: none)",
    )
    add(
        "--fsync-interval-s",
        type=float,
        default=None,
        metavar="S",
        help='sync "window" events to storage at most this many seconds after they are '
        "written (decisions and other events: at once; 0: every event at once; a killed agent "
        f"loses none either way, only a power cut can) (default {e.fsync_interval_s:g})",
    )
    add(
        "--heartbeat-s",
        type=float,
        default=None,
        metavar="S",
        help=f"seconds without an event before a heartbeat (default {e.heartbeat_s:g})",
    )
    add(
        "--json",
        action="store_true",
        default=None,
        help="stdout: JSON lines, one per window plus decisions, heartbeats (default: short text)",
    )
    add(
        "--every-window",
        action="store_true",
        default=None,
        help="write an event for every window, not only decision changes (default off)",
    )
    add("--quiet", action="store_true", help="no events on stdout (default off)")
    add(
        "--api",
        metavar="HOST:PORT",
        default=None,
        help="serve the HTTP API, e.g. 127.0.0.1:8787 (default: no API)",
    )
    add(
        "--api-token-file",
        metavar="PATH",
        default=None,
        help=f"bearer token file, mode 0600 (default: ${TOKEN_ENV}, else no token)",
    )
    add(
        "--mqtt",
        metavar="mqtt://HOST:PORT",
        default=None,
        help="publish decisions and heartbeats to this MQTT broker, with Home Assistant "
        "discovery; mqtts:// for TLS (default: [mqtt] url, else off; needs paho-mqtt)",
    )
    add(
        "--max-upload-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help=f"largest POST /score body in bytes (default {a.max_upload_bytes})",
    )


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, allow_nan=False), flush=True)


# --------------------------------------------------------------------------- devices


def cmd_devices(args: argparse.Namespace) -> int:
    from device.sources import SourceError, list_input_devices

    try:
        devices = list_input_devices()
    except SourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        for device in devices:
            _print_json(device)
        return EXIT_OK
    if not devices:
        print("no capture devices (PortAudio lists no inputs)")
    for d in devices:
        rates = ", ".join(str(r) for r in d["supported_rates"]) or "-"
        mark = "*" if d["default"] else " "
        print(
            f"{mark}{d['index']:3d}  {d['name']}  ({d['max_input_channels']} ch, default "
            f"{d['default_sample_rate']} Hz, supports {rates})"
        )
    return EXIT_OK


# --------------------------------------------------------------------------- score


def cmd_score(args: argparse.Namespace) -> int:
    from device.agent import probe_model
    from device.runtime import Scorer, score_files
    from device.sources import c_stderr_to_debug

    try:
        # a crashing model: an error, not a dead batch; an unsigned one refused when required
        probe_model(args.bundle, args.model, public_key=args.public_key)
        with c_stderr_to_debug("LiteRT"):  # its "Created ... XNNPACK delegate" INFO line
            scorer = Scorer(
                args.bundle,
                model_format=args.model,
                num_threads=args.threads,
                threshold=args.threshold,
            )
    except (BundleError, InterpreterUnavailableError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    failed = 0
    if not args.max_audio_s > 0:
        print(
            f"error: --max-audio-s: expected seconds > 0, got {args.max_audio_s}", file=sys.stderr
        )
        return EXIT_USAGE
    for result in score_files(scorer, args.files, args.windows, args.max_audio_s):
        failed += "error" in result
        if args.json:
            _print_json(result)
        elif "error" in result:
            print(f"{result['file']}: error: {result['error']}")
        else:
            print(
                f"{result['file']}: {result['decision']:8s} P(spoof)={result['score']:.4f}  "
                f"windows={result['windows']} (silent {result['silent_windows']})  "
                f"{result['duration_s']:.2f} s"
            )
    if failed:
        print(f"{failed} of {len(args.files)} file(s) could not be scored", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


# --------------------------------------------------------------------------- listen


def listen_settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    source: dict[str, Any] = {}
    if args.source is not None:
        if args.source in ("mic", "stdin"):
            source["kind"] = args.source
        else:
            source["kind"], source["path"] = "file", args.source
    source.update(
        device=args.device,
        sample_rate=args.rate,
        channels=args.channels,
        chunk_ms=args.chunk_ms,
        queue_chunks=args.queue_chunks,
        realtime=args.realtime,
        max_seconds=args.max_seconds,
    )
    events: dict[str, Any] = {
        "file": args.events_file,
        "heartbeat_s": args.heartbeat_s,
        "fsync_interval_s": args.fsync_interval_s,
        "json": args.json,
        "every_window": args.every_window,
    }
    if args.quiet:
        events["stdout"] = False
    settings = override(
        settings,
        {
            "model": {
                "bundle": args.bundle,
                "model_format": args.model,
                "num_threads": args.threads,
                "threshold": args.threshold,
                "public_key": getattr(args, "public_key", None),
            },
            "source": source,
            "decision": {
                "smoothing_windows": args.smoothing_windows,
                "min_windows_above": args.min_windows_above,
                "margin": args.margin,
                "silence_windows": args.silence_windows,
            },
            "events": events,
            "api": {
                "listen": args.api,
                "token_file": args.api_token_file,
                "max_upload_bytes": args.max_upload_bytes,
            },
            "mqtt": {"url": args.mqtt},
        },
    )
    if not settings.model.bundle:
        raise ConfigError("no bundle: give --bundle DIR or [model] bundle in the settings file")
    return settings


def _threshold_in_force(
    settings: Settings, flag: float | None, from_file: float | None
) -> Settings:
    """Report which threshold `listen` uses and why (device.calibrate.resolve_threshold)."""
    from device.bundle import load_bundle
    from device.calibrate import resolve_threshold

    manifest = load_bundle(settings.model.bundle, verify_files=False).manifest
    choice, notes = resolve_threshold(settings, manifest, flag, from_file)
    for note in notes:
        log.warning("%s", note)
    log.info("%s", choice.describe())
    if choice.source in ("device calibration", "operating point"):
        settings = override(settings, {"model": {"threshold": choice.value}})
    return settings


# --------------------------------------------------------------------------- calibrate


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from device.agent import build_source
    from device.calibrate import (
        choose_room_threshold,
        collect_room_scores,
        model_sha256,
        now_utc,
        write_device_calibration,
    )
    from device.config import DeviceCalibrationSettings
    from device.sources import SourceError, c_stderr_to_debug
    from device.stream import StreamPipeline

    config = Path(args.config)
    try:
        if not (args.minutes > 0 and args.target_fa_per_hour >= 0):
            raise ConfigError(
                f"expected --minutes > 0 and --target-fa-per-hour >= 0, got {args.minutes} and "
                f"{args.target_fa_per_hour}"
            )
        settings = load_settings(config if config.exists() else None)
        settings = override(
            settings,
            {
                "model": {"bundle": args.bundle, "model_format": args.model},
                "source": _calibration_source(args),
            },
        )
        if not settings.model.bundle:
            raise ConfigError("no bundle: give --bundle DIR or [model] bundle in --config")
        m = settings.model
        scorer = _calibration_scorer(settings)
        with c_stderr_to_debug("PortAudio"):
            stream_source = build_source(settings)
        manifest = scorer.bundle.manifest
        bundle_threshold = manifest.threshold.value
        decision = settings.decision
        pipeline = StreamPipeline(scorer, decision.with_threshold(bundle_threshold))
        print(
            f"listening to {stream_source.name} for up to {args.minutes:g} min; keep the room "
            "as it usually is (genuine voices and sounds only)",
            file=sys.stderr,
            flush=True,
        )
        scores = collect_room_scores(stream_source, pipeline, lambda: False)
        choice = choose_room_threshold(scores, decision, bundle_threshold, args.target_fa_per_hour)
    except (
        ConfigError,
        BundleError,
        SourceError,
        InterpreterUnavailableError,
        ValueError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    values = DeviceCalibrationSettings(
        threshold=choice.threshold,
        target_fa_per_hour=float(args.target_fa_per_hour),
        false_alarms_per_hour=round(choice.fa_per_hour, 4),
        audio_s=round(scores.audio_s, 3),
        smoothing_windows=decision.smoothing_windows,
        min_windows_above=decision.min_windows_above,
        margin=decision.margin,
        silence_windows=decision.silence_windows,
        model_sha256=model_sha256(manifest, m.model_format),
        calibrated_at=now_utc(),
    )
    try:
        write_device_calibration(config, values)
    except (OSError, ConfigError) as error:
        print(f"error: cannot write {config}: {error}", file=sys.stderr)
        return EXIT_FAILED
    lines = _calibration_lines(scores, choice, decision, manifest, args, config)
    print("\n".join(lines), flush=True)
    return EXIT_OK


def _calibration_scorer(settings: Settings) -> Scorer:
    """The bundle's Scorer for `calibrate`, after the checks `score` and `listen` make: the
    signature when a public key is set, and the model run in a probe process first (a damaged
    model is refused with a message instead of crashing the command)."""
    from device.agent import probe_model
    from device.sources import c_stderr_to_debug

    m = settings.model
    probe_model(m.bundle, m.model_format, public_key=m.public_key or None)
    with c_stderr_to_debug("LiteRT"):
        return Scorer(
            m.bundle, m.model_format, m.num_threads, silence_floor_dbfs=m.silence_floor_dbfs
        )


def _calibration_source(args: argparse.Namespace) -> dict[str, Any]:
    """The [source] overrides of `clad-agent calibrate`: --source, --device, --rate,
    --channels, and --minutes as the most audio to hear."""
    source: dict[str, Any] = {"max_seconds": args.minutes * 60.0}
    if args.source is not None:
        if args.source in ("mic", "stdin"):
            source["kind"] = args.source
        else:
            source["kind"], source["path"] = "file", args.source
    source.update(device=args.device, sample_rate=args.rate, channels=args.channels)
    return source


def _calibration_lines(
    scores: Any, choice: Any, decision: Any, manifest: Any, args: argparse.Namespace, config: Any
) -> list[str]:
    """What `clad-agent calibrate` prints: what it heard, the bundle's and the chosen threshold
    with their false alarms, the cost on the eval stream, and where it wrote the result."""
    from device.calibrate import eval_stream_cost

    b_threshold, b_alarms, b_rate = choice.at_bundle
    q = choice.p_quantiles
    smoothed = "-" if choice.smoothed_max is None else f"{choice.smoothed_max:.4f}"
    lines = [
        f"heard {scores.audio_s / 60:.2f} min: {scores.windows} windows, "
        f"{scores.loud_windows} non-silent; window P(spoof) median {q['0.5']:.4f}, p90 "
        f"{q['0.9']:.4f}, p99 {q['0.99']:.4f}; highest smoothed ({decision.smoothing_windows} "
        f"windows) {smoothed}",
        f"bundle threshold {b_threshold:.4f}: {b_alarms} false alarm(s), {b_rate:.2f}/h",
        f"chose threshold {choice.threshold:.4f}: {choice.false_alarms} false alarm(s), "
        f"{choice.fa_per_hour:.2f}/h (target {args.target_fa_per_hour:g}/h; one alarm on this "
        f"much audio is {choice.resolution_per_hour:.2f}/h; never below the bundle's threshold)",
        f"cost: {eval_stream_cost(manifest, decision, choice.threshold)}",
        f"wrote [device_calibration] threshold = {choice.threshold:.4f} to {config}; "
        "`clad-agent listen --config` uses it unless --threshold or [model] threshold is given",
    ]
    return lines


def cmd_listen(args: argparse.Namespace) -> int:
    from device.agent import build_agent
    from device.events import EventFileError
    from device.sources import SourceError, c_stderr_to_debug

    try:
        settings = listen_settings(args)
        threshold_from_file = load_settings(args.config).model.threshold
        settings = _threshold_in_force(settings, args.threshold, threshold_from_file)
        with c_stderr_to_debug("LiteRT and PortAudio"):
            agent = build_agent(settings)
    except (
        ConfigError,
        BundleError,
        SourceError,
        AudioError,
        InterpreterUnavailableError,
        EventFileError,
        ValueError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # e.g. the API port is taken
        print(f"error: cannot start: {error}", file=sys.stderr)
        return EXIT_USAGE

    def stop(signum: int, _frame: Any) -> None:
        agent.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return agent.run()
    except EventFileError as error:
        log.error("%s", error)
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:  # device/bench.py parses its own options
        from device.bench import main as bench_main

        return bench_main(arguments[1:])
    args = _parser().parse_args(arguments)
    level = args.log_level or ("info" if args.command == "listen" else "warning")
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    commands = {
        "devices": cmd_devices,
        "score": cmd_score,
        "listen": cmd_listen,
        "calibrate": cmd_calibrate,
    }
    try:
        return commands[args.command](args)
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, as other CLI tools do.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
