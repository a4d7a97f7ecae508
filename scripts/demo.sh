#!/usr/bin/env bash
# `make demo`: the whole pipeline on the built-in demo corpus, on a fresh machine.
#   corpus -> train -> convert (parity gate) -> agent scores held-out files
#   -> real speech and fakes the corpus never saw -> benchmark table
# Every step is a make target you can run on its own; this script only sequences them
# and prints where everything went.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-data/demo}
RUN=${RUN:-runs/demo}
OUT=${OUT:-bundles/demo}
PY=.venv/bin/python
started=$(date +%s)

step() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }
elapsed() { echo "$(( $(date +%s) - started ))s"; }

step "1/6 demo corpus -> $DATA"
make --no-print-directory data DATA="$DATA"

step "2/6 train CLAD -> $RUN  ($(elapsed) so far)"
make --no-print-directory train DATA="$DATA" RUN="$RUN"

step "3/6 convert + parity gate -> $OUT  ($(elapsed) so far)"
make --no-print-directory convert RUN="$RUN" OUT="$OUT"

step "4/6 the device agent scores held-out eval files  ($(elapsed) so far)"
protocol="$DATA/LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.eval.trl.txt"
audio_dir="$DATA/LA/ASVspoof2019_LA_eval/flac"
# three bona fide files and one file of every attack system (A04 and A08 are unseen in training)
mapfile -t picks < <(awk '$5 == "bonafide" && n++ < 3 {print $2} $5 == "spoof" && !seen[$4]++ {print $2}' "$protocol")
files=()
for utt in "${picks[@]}"; do files+=("$audio_dir/$utt.flac"); done
for utt in "${picks[@]}"; do
  printf '  %-16s truth=%s\n' "$utt" "$(awk -v u="$utt" '$2 == u {print $5 " " $4}' "$protocol")"
done
"$PY" -m device score "${files[@]}" --bundle "$OUT"   # add --json for one JSON object per file

step "5/6 real speech and fakes from packages the corpus never read  ($(elapsed) so far)"
make --no-print-directory outside BUNDLE="$OUT"

step "6/6 benchmark  ($(elapsed) so far)"
make --no-print-directory bench BUNDLE="$OUT"

step "done in $(elapsed)"
cat <<SUMMARY
  corpus      $DATA/LA            (counts and shortcut-cue check: $DATA/stats.json)
  training    $RUN/               (metrics.json, best.pt, plots/, scores)
  bundle      $OUT/               (manifest.json, model_int8.tflite, parity.json, plots/)
  outside     data/outside/       (real voices and Flite fakes not in the corpus: outside-*.json)
  benchmarks  benchmarks/results/ (JSON + PNG)
  next        .venv/bin/clad-agent listen --bundle $OUT --source mic
SUMMARY
