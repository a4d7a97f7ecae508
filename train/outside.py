"""What a bundle says about real speech and fakes that no demo-corpus file came from.

    python -m train.outside --bundle bundles/demo [--out data/outside] [--per-source 40] [--json]

Builds (once, cached in --out) a small set in the `folders` layout from Debian packages the
demo corpus never reads, then scores every file with the device runtime (int8, as on the Pi):

- bona fide, real people: `asterisk-prompt-it-menardi-wav` (an Italian voice, 8 kHz PCM),
  `asterisk-prompt-fr-armelle` (French, GSM 06.10), `asterisk-prompt-es-co` (Colombian
  Spanish, GSM 06.10), and the recordings of `codec2-examples` (English speakers, studio
  and radio, 8 and 16 kHz);
- spoof: Flite (`flite`, four English voices: a classic TTS the corpus has no file of), once
  as it comes (16 kHz) and once through G.711 mu-law at 8 kHz, like the telephone prompts.

Files are taken as they are: no channel is added. The report gives, per source, the share
of files the bundle calls bona fide at its own threshold and the mean P(spoof), and the EER
of all real files against each spoof group. Written to <out>/outside-<bundle name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from train.synth.cues import equal_error_rate
from train.synth.packages import FetchError, default_cache, fetch

BONAFIDE_SOURCES = {
    "menardi-it": (
        "asterisk-prompt-it-menardi-wav",
        "usr/share/asterisk/sounds/it_IT_f_Menardi/*.wav",
    ),
    "armelle-fr": ("asterisk-prompt-fr-armelle", "usr/share/asterisk/sounds/fr/*.gsm"),
    "colombia-es": ("asterisk-prompt-es-co", "usr/share/asterisk/sounds/es/*.gsm"),
    "codec2-examples-en": ("codec2-examples", "usr/share/codec2/wav/*.wav"),
}
# codec2-examples also holds the codec's own decoded output: those are not bona fide
_CODEC_OUTPUTS = {"f2400", "m2400"}
FLITE_VOICES = ("slt", "awb", "rms", "kal16")
TOOL_PACKAGES = ("flite", "libflite1")


def _decode(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        pieces = [frame.to_ndarray().astype(np.float64) for frame in container.decode(stream)]
        rate = stream.rate
    signal = np.concatenate(pieces, axis=1).mean(axis=0)
    if np.issubdtype(pieces[0].dtype, np.integer) or np.max(np.abs(signal)) > 2.0:
        signal = signal / 32768.0
    return signal, rate


def _bonafide(root: Path, per_source: int, rng: np.random.Generator, packages: dict) -> list:
    rows = []
    out = root / "bonafide"
    out.mkdir(parents=True, exist_ok=True)
    for source, (package, pattern) in BONAFIDE_SOURCES.items():
        files = sorted(Path(packages[package].root).glob(pattern))
        files = [f for f in files if f.stem not in _CODEC_OUTPUTS]
        usable = []
        for path in files:
            try:
                signal, rate = _decode(path)
            except Exception as error:  # one unreadable file never stops the set
                print(f"  skipped {path.name}: {error}", file=sys.stderr)
                continue
            if signal.size >= rate:  # at least a second
                usable.append((path, signal, rate))
        picks = rng.choice(len(usable), size=min(per_source, len(usable)), replace=False)
        for index in sorted(picks):
            path, signal, rate = usable[int(index)]
            target = out / f"{source}_{path.stem}.wav"
            sf.write(target, signal[: 12 * rate], rate, subtype="PCM_16")
            rows.append({"file": str(target), "label": "bonafide", "source": source})
    return rows


def _flite(root: Path, per_voice: int, rng: np.random.Generator, packages: dict) -> list:
    from train.synth.codecs import CODECS, roundtrip
    from train.synth.text import sentence

    binary = Path(packages["flite"].root) / "usr/bin/flite"
    libraries = sorted(Path(packages["libflite1"].root).glob("usr/lib/*"))
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(str(p) for p in libraries)}
    rows = []
    for group in ("flite-16k", "flite-mulaw-8k"):
        (root / "spoof" / group).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        for voice in FLITE_VOICES:
            for i in range(per_voice):
                text = sentence("en", int(rng.integers(6, 16)), rng)
                raw = Path(staging) / "out.wav"
                done = subprocess.run(
                    [str(binary), "-voice", voice, "-t", text, "-o", str(raw)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"flite -voice {voice} failed: {done.stderr.strip()}")
                signal, rate = sf.read(raw, dtype="float64")
                wide = root / "spoof" / "flite-16k" / f"{voice}_{i:03d}.wav"
                sf.write(wide, signal, rate, subtype="PCM_16")
                narrow = roundtrip(signal, rate, CODECS["mulaw-8k"])
                phone = root / "spoof" / "flite-mulaw-8k" / f"{voice}_{i:03d}.wav"
                sf.write(phone, narrow, rate, subtype="PCM_16")
                rows.append({"file": str(wide), "label": "spoof", "source": "flite-16k"})
                rows.append({"file": str(phone), "label": "spoof", "source": "flite-mulaw-8k"})
    return rows


def build_set(root: Path, per_source: int, seed: int, cache: Path | None) -> list[dict]:
    index = root / "index.json"
    settings = {"per_source": per_source, "seed": seed, "version": 1}
    if index.is_file():
        saved = json.loads(index.read_text())
        if saved.get("settings") == settings and all(
            Path(r["file"]).is_file() for r in saved["files"]
        ):
            return saved["files"]
    packages = fetch([*sorted({p for p, _ in BONAFIDE_SOURCES.values()}), *TOOL_PACKAGES], cache)
    rng = np.random.default_rng(seed)
    rows = _bonafide(root, per_source, rng, packages) + _flite(root, per_source // 2, rng, packages)
    provenance = {name: p.provenance() for name, p in packages.items()}
    index.write_text(
        json.dumps({"settings": settings, "sources": provenance, "files": rows}, indent=1) + "\n"
    )
    return rows


def score_set(bundle: Path, rows: list[dict]) -> dict[str, Any]:
    from device.runtime import Scorer

    scorer = Scorer(bundle)
    scored = []
    for row in rows:
        try:
            result = scorer.score_file(row["file"])
        except Exception as error:  # report the file, go on with the rest
            scored.append({**row, "error": str(error)})
            continue
        scored.append({**row, "p_spoof": result["score"], "decision": result["decision"]})
    ok = [r for r in scored if "p_spoof" in r]
    bona = np.array([r["p_spoof"] for r in ok if r["label"] == "bonafide"])
    per_source = {}
    for source in sorted({r["source"] for r in ok}):
        mine = [r for r in ok if r["source"] == source]
        per_source[source] = {
            "label": mine[0]["label"],
            "files": len(mine),
            "called_bonafide": round(sum(r["decision"] == "bonafide" for r in mine) / len(mine), 3),
            "mean_p_spoof": round(float(np.mean([r["p_spoof"] for r in mine])), 3),
        }
        if mine[0]["label"] == "spoof":
            spoof = np.array([r["p_spoof"] for r in mine])
            per_source[source]["eer_vs_all_real"] = round(equal_error_rate(bona, spoof), 4)
    spoof_all = np.array([r["p_spoof"] for r in ok if r["label"] == "spoof"])
    return {
        "bundle": str(bundle),
        "threshold": scorer.threshold,
        "files": len(scored),
        "errors": [r for r in scored if "error" in r],
        "eer_all": round(equal_error_rate(bona, spoof_all), 4),
        "real_called_bonafide": round(float(np.mean(bona < scorer.threshold)), 3),
        "per_source": per_source,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{'source':<22} {'label':<9} {'files':>5} {'called bona fide':>17} {'mean P(spoof)':>14} "
        f"{'EER vs real':>11}"
    ]
    for source, row in report["per_source"].items():
        eer = f"{100 * row['eer_vs_all_real']:.1f}%" if "eer_vs_all_real" in row else ""
        lines.append(
            f"{source:<22} {row['label']:<9} {row['files']:>5} "
            f"{100 * row['called_bonafide']:>16.1f}% {row['mean_p_spoof']:>14.3f} {eer:>11}"
        )
    lines.append(
        f"all real vs all Flite: EER {100 * report['eer_all']:.1f}%; real people called bona "
        f"fide at the bundle threshold ({report['threshold']:.3f}): "
        f"{100 * report['real_called_bonafide']:.1f}%"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.outside",
        description="Score real speech and fakes that the demo corpus never saw.",
    )
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory to score")
    parser.add_argument(
        "--out", type=Path, default=Path("data/outside"), help="set folder (default: data/outside)"
    )
    parser.add_argument(
        "--per-source",
        type=int,
        default=40,
        help="real files per source; Flite makes half as many per voice (default: 40)",
    )
    parser.add_argument("--seed", type=int, default=0, help="which files are picked (default: 0)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"Debian package cache (default: {default_cache()})",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.per_source < 2:
        print(f"error: --per-source must be at least 2, got {args.per_source}", file=sys.stderr)
        return 2
    try:
        rows = build_set(args.out, args.per_source, args.seed, args.cache)
        report = score_set(args.bundle, rows)
    except (FetchError, OSError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = args.out / f"outside-{args.bundle.resolve().name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if not args.json:
        print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
