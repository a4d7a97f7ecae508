#!/usr/bin/env bash
# make test-arm: the device runtime on emulated Arm CPUs (Cortex-A53 as in a Pi Zero 2 W and a
# Pi 3, Cortex-A72 as in a Pi 4, Cortex-A76 as in a Pi 5) gives the answers it gives on x86.
# See docs/arm.md. ARM_CPUS="cortex-a53" compares on fewer CPUs (default: all three).
#
#   1. .venv-device and .venv-tflite: x86 venvs from the device lock files (scripts/device-venv.sh)
#   2. .cache/arm: qemu-aarch64-static, Debian's arm64 python3.11 and the aarch64 wheels of the
#      same lock files, with nothing changed machine-wide (scripts/arm/build-env.sh)
#   3. scripts/arm/compare.py: front end and runtimes on a fixed set of audio files, then
#      `python -m device score` / `listen --source stdin` with a bundle, x86 against emulated;
#      report in .cache/arm/results/arm-parity.json
#
# The bundle for step 3: $ARM_BUNDLE, else bundles/demo when it holds a manifest (after
# `make demo`), else the small real bundle that tests/device_fixtures.py builds with tensorflow.
# Everything is cached (in $ARM_CACHE, default .cache/arm): a second run spends its time in the
# comparison alone.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
host_python="$repo/.venv/bin/python"
export ARM_CACHE="${ARM_CACHE:-$repo/.cache/arm}"
start_s=$SECONDS

if [ "$(uname -m)" != x86_64 ]; then
  echo "test-arm: expected an x86_64 host to compare against emulated aarch64, got $(uname -m)" >&2
  exit 1
fi

./scripts/device-venv.sh device
./scripts/device-venv.sh tflite
./scripts/arm/build-env.sh
setup_s=$((SECONDS - start_s))

bundle="${ARM_BUNDLE:-}"
if [ -z "$bundle" ] && [ -f bundles/demo/manifest.json ]; then
  bundle=bundles/demo
fi
if [ -z "$bundle" ] && [ -f tests/device_fixtures.py ]; then
  echo "test-arm: no bundles/demo; using the fixture bundle of tests/device_fixtures.py"
  bundle="$(nice "$host_python" -c '
import sys
from pathlib import Path
from tests.device_fixtures import cached_bundle
print(cached_bundle(Path(sys.argv[1])))' "$ARM_CACHE")"
fi
bundle_args=()
[ -n "$bundle" ] && bundle_args=(--bundle "$bundle")
if [ -n "${ARM_CPUS:-}" ]; then
  read -r -a arm_cpus <<<"$ARM_CPUS"
  bundle_args+=(--cpus "${arm_cpus[@]}")
fi

status=0
nice "$host_python" scripts/arm/compare.py --cache "$ARM_CACHE" "${bundle_args[@]}" || status=$?
echo "test-arm: setup ${setup_s} s, total $((SECONDS - start_s)) s;" \
  "footprint: ${ARM_CACHE#"$repo"/} $(du -sh "$ARM_CACHE" | cut -f1), .venv-device $(du -sh .venv-device | cut -f1)," \
  ".venv-tflite $(du -sh .venv-tflite | cut -f1)"
exit $status
