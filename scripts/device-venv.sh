#!/usr/bin/env bash
# Builds a small x86 venv with exactly the device runtime a Pi gets, and nothing else (no torch,
# no tensorflow): used to run `python -m device ...` in a subprocess the way a Pi would.
#
#   scripts/device-venv.sh device   -> .venv-device  (requirements/device.txt: LiteRT, numpy 2)
#   scripts/device-venv.sh tflite   -> .venv-tflite  (requirements/device-tflite.txt: tflite-runtime 2.14, numpy<2)
#
# The repository is put on the venv's path with a .pth file (no build step, so nothing is written
# into the working tree), and bin/clad-agent runs device.cli:main like the installed entry point.
# Idempotent: a stamp holds a hash of the lock file, this script and the Python version; when it
# matches, the script prints one line and exits. A changed lock file rebuilds the venv from scratch.
set -euo pipefail

usage() { echo "usage: $0 device|tflite" >&2; exit 2; }
[ $# -eq 1 ] || usage
name="$1"
case "$name" in
  device) requirements=requirements/device.txt ;;
  tflite) requirements=requirements/device-tflite.txt ;;
  *) echo "error: expected 'device' or 'tflite', got '$name'" >&2; usage ;;
esac

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
venv="$repo/.venv-$name"
python="${PYTHON:-python3.11}"
stamp="$venv/.clad-device-venv"

if ! command -v "$python" >/dev/null 2>&1; then
  echo "error: expected a Python 3.11 interpreter named '$python' (set PYTHON=...), found none" >&2
  exit 1
fi
python_version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$python_version" != "3.11" ]; then
  echo "error: the device lock files are for Python 3.11; '$python' is Python $python_version" >&2
  exit 1
fi

key="$(cat "$requirements" "$0" | sha256sum | cut -c1-16) python-$("$python" -c 'import platform; print(platform.python_version())')"

# One builder at a time per venv (the parity gate and the benchmarks may ask together).
mkdir -p "$repo/.cache"
exec 9>"$repo/.cache/device-venv-$name.lock"
flock 9

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && [ -x "$venv/bin/python" ]; then
  echo ".venv-$name: up to date ($requirements)"
  exit 0
fi

echo ".venv-$name: building from $requirements"
start_s=$SECONDS
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: --no-deps \
  -r "$requirements"
"$venv/bin/python" -m pip check --disable-pip-version-check >/dev/null || {
  echo "error: $requirements is not a complete, consistent set:" >&2
  "$venv/bin/python" -m pip check --disable-pip-version-check >&2
  exit 1
}

site_packages="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$repo" >"$site_packages/clad_edge_repo.pth"
cat >"$venv/bin/clad-agent" <<EOF
#!$venv/bin/python
import sys

from device.cli import main

sys.exit(main())
EOF
chmod +x "$venv/bin/clad-agent"

# The device runtime must not need the desktop stack.
"$venv/bin/python" - <<'EOF'
import importlib.util
import sys

forbidden = [m for m in ("torch", "tensorflow", "onnx") if importlib.util.find_spec(m)]
if forbidden:
    sys.exit(f"error: the device venv must not contain {forbidden}")
EOF

echo "$key" >"$stamp"
echo ".venv-$name: built in $((SECONDS - start_s)) s, $(du -sh "$venv" | cut -f1)"
