#!/usr/bin/env bash
# Runs ON the Raspberry Pi, as root (scripts/deploy.sh copies it there and runs it with sudo):
#   install-on-pi.sh STAGING_DIR
# STAGING_DIR holds device/, requirements/device.txt, deploy/ and bundle/ as copied by deploy.sh.
# Installs into PREFIX (default /opt/clad-agent):
#   app/      device/ (+ docs), put on the venv's path with a .pth file (no build step)
#   venv/     python3 -m venv; the locked device runtime + PyAudio (compiled against portaudio19-dev)
#   bundle/   the model bundle
# plus the `clad` system user (group audio), /etc/clad-agent/clad-agent.toml (kept if present),
# and the systemd unit, then (re)starts the service. Idempotent. DRY_RUN=1 prints the commands.
set -euo pipefail

PREFIX=${PREFIX:-/opt/clad-agent}
SERVICE_USER=${SERVICE_USER:-clad}
PYAUDIO_VERSION=${PYAUDIO_VERSION:-0.2.14}
DRY_RUN=${DRY_RUN:-0}

usage() { echo "usage: $0 STAGING_DIR   (as root on the Pi; DRY_RUN=1 to print the commands)" >&2; exit 2; }
[ $# -eq 1 ] || usage
staging=$1

run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# install_templated SRC DST MODE: copy with /opt/clad-agent replaced by $PREFIX.
install_templated() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+ sed s#/opt/clad-agent#%s#g %q > %q; chmod %s %q\n' "$PREFIX" "$1" "$2" "$3" "$2"
  else
    sed "s#/opt/clad-agent#$PREFIX#g" "$1" >"$2.tmp"
    chmod "$3" "$2.tmp"
    mv "$2.tmp" "$2"
  fi
}

for needed in device requirements/device.txt deploy/clad-agent.service deploy/clad-agent.toml bundle/manifest.json; do
  if [ ! -e "$staging/$needed" ]; then
    echo "error: expected $staging/$needed (copied by scripts/deploy.sh), found nothing" >&2
    exit 1
  fi
done
if [ "$DRY_RUN" != 1 ] && [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (sudo $0 $staging)" >&2
  exit 1
fi

python=${PYTHON:-python3}
if [ "$DRY_RUN" != 1 ]; then
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  case "$version" in
    3.11|3.12|3.13) ;;
    *) echo "error: expected Python 3.11-3.13 (Raspberry Pi OS 64-bit Bookworm has 3.11), got $version" >&2; exit 1 ;;
  esac
  if [ "$(uname -m)" != aarch64 ]; then
    echo "warning: this is $(uname -m), not aarch64 (64-bit Raspberry Pi OS); continuing" >&2
  fi
fi

echo "== system packages"
packages=(python3-venv python3-dev portaudio19-dev gcc)
missing=()
for pkg in "${packages[@]}"; do
  if [ "$DRY_RUN" = 1 ] || ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  run apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "== user $SERVICE_USER (group audio)"
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
  run useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --groups audio "$SERVICE_USER"
fi

echo "== files in $PREFIX"
run install -d -m 0755 "$PREFIX" "$PREFIX/app" "$PREFIX/app/requirements"
run rm -rf "$PREFIX/app/device" "$PREFIX/bundle.new"
run cp -r "$staging/device" "$PREFIX/app/device"
run install -m 0644 "$staging/requirements/device.txt" "$PREFIX/app/requirements/device.txt"
if [ -d "$staging/docs" ]; then
  run rm -rf "$PREFIX/app/docs"
  run cp -r "$staging/docs" "$PREFIX/app/docs"
fi
# The bundle is swapped in whole, so a failed copy never leaves half a bundle in place.
run cp -r "$staging/bundle" "$PREFIX/bundle.new"
run rm -rf "$PREFIX/bundle.old"
if [ -e "$PREFIX/bundle" ] || [ "$DRY_RUN" = 1 ]; then
  run mv "$PREFIX/bundle" "$PREFIX/bundle.old"
fi
run mv "$PREFIX/bundle.new" "$PREFIX/bundle"
run rm -rf "$PREFIX/bundle.old"

echo "== venv $PREFIX/venv (locked device runtime + PyAudio $PYAUDIO_VERSION)"
if [ ! -x "$PREFIX/venv/bin/python" ] || [ "$DRY_RUN" = 1 ]; then
  run "$python" -m venv "$PREFIX/venv"
fi
run "$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
run "$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: \
  --no-deps -r "$PREFIX/app/requirements/device.txt"
run "$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check "pyaudio==$PYAUDIO_VERSION"
if [ "$DRY_RUN" = 1 ]; then
  echo "+ (write $PREFIX/app into the venv's site-packages/clad_edge.pth and $PREFIX/venv/bin/clad-agent)"
else
  site=$("$PREFIX/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$PREFIX/app" >"$site/clad_edge.pth"
  cat >"$PREFIX/venv/bin/clad-agent" <<WRAPPER
#!$PREFIX/venv/bin/python
import sys

from device.cli import main

sys.exit(main())
WRAPPER
  chmod 0755 "$PREFIX/venv/bin/clad-agent"
fi

echo "== settings /etc/clad-agent"
run install -d -m 0750 -g "$SERVICE_USER" /etc/clad-agent
if [ ! -e /etc/clad-agent/clad-agent.toml ] || [ "$DRY_RUN" = 1 ]; then
  install_templated "$staging/deploy/clad-agent.toml" /etc/clad-agent/clad-agent.toml 0640
  run chgrp "$SERVICE_USER" /etc/clad-agent/clad-agent.toml
else
  echo "   keeping the existing /etc/clad-agent/clad-agent.toml"
fi

echo "== check: the bundle loads and scores in the installed runtime"
run "$PREFIX/venv/bin/python" -c "from device.runtime import Scorer; import numpy as np; s = Scorer('$PREFIX/bundle'); s.score_windows(np.zeros((1, s.window_samples), np.float32)); print('bundle ok:', s.describe())"

echo "== systemd unit"
install_templated "$staging/deploy/clad-agent.service" /etc/systemd/system/clad-agent.service 0644
if [ "$DRY_RUN" != 1 ] && [ ! -d /run/systemd/system ]; then
  # A container or chroot: systemctl would fail here. Install everything, say how to start it.
  install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" /var/lib/clad-agent
  echo "no systemd is running here (no /run/systemd/system): the agent is installed but not started;"
  echo "the unit is in /etc/systemd/system/clad-agent.service for when systemd runs. Start it by hand:"
  echo "  sudo -u $SERVICE_USER env PYTHONUNBUFFERED=1 $PREFIX/venv/bin/clad-agent listen --config /etc/clad-agent/clad-agent.toml"
  echo "done (not started): events go to /var/lib/clad-agent/events.jsonl"
  exit 0
fi
run systemctl daemon-reload
run systemctl enable clad-agent.service
run systemctl restart clad-agent.service
run systemctl --no-pager --lines=5 status clad-agent.service
echo "done: journalctl -u clad-agent -f   (events: /var/lib/clad-agent/events.jsonl)"
