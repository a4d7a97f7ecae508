#!/usr/bin/env bash
# `make deploy PI=user@host [BUNDLE=bundles/demo]`: install the device agent on a Raspberry Pi.
#
#   scripts/deploy.sh user@host BUNDLE_DIR
#
# Copies device/, requirements/device.txt, deploy/ (systemd unit, example settings, the
# installer), docs/ and the bundle to the Pi over ssh (tar through the ssh pipe: nothing
# beyond ssh and tar is needed on either side), then runs deploy/install-on-pi.sh there with
# sudo: apt packages (portaudio19-dev...), a `clad` user, a venv with the locked device
# runtime + PyAudio in /opt/clad-agent, /etc/clad-agent/clad-agent.toml, the clad-agent
# systemd service. Needs ssh access with sudo on the Pi (Raspberry Pi OS 64-bit).
#
#   DRY_RUN=1 scripts/deploy.sh pi@raspberrypi.local bundles/demo
# prints every command (and the installer's commands) without touching the network.
# Also: PI_PORT (ssh port, default ssh's own), SSH_OPTS="-i key -o ...", REMOTE_STAGING (default
# .cache/clad-agent-deploy in the Pi user's home), PREFIX (default /opt/clad-agent).
set -euo pipefail

usage() {
  echo "usage: $0 user@host BUNDLE_DIR   (DRY_RUN=1 prints the commands only)" >&2
  exit 2
}
[ $# -eq 2 ] || usage
pi=$1
bundle=$2
DRY_RUN=${DRY_RUN:-0}
PREFIX=${PREFIX:-/opt/clad-agent}
REMOTE_STAGING=${REMOTE_STAGING:-.cache/clad-agent-deploy}
read -r -a ssh_opts <<<"${SSH_OPTS:-}"
PI_PORT=${PI_PORT:-}
if [ -n "$PI_PORT" ]; then
  case "$PI_PORT" in
    *[!0-9]*) echo "error: expected PI_PORT to be a port number, got '$PI_PORT'" >&2; exit 2 ;;
  esac
  ssh_opts+=(-p "$PI_PORT")
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

case "$pi" in
  -*|"") echo "error: expected user@host for the Pi, got '$pi'" >&2; exit 2 ;;
esac
for needed in device/cli.py requirements/device.txt deploy/clad-agent.service deploy/clad-agent.toml deploy/install-on-pi.sh; do
  [ -e "$needed" ] || { echo "error: expected $repo/$needed, found nothing" >&2; exit 1; }
done
if [ ! -f "$bundle/manifest.json" ]; then
  echo "error: expected a bundle directory with manifest.json at '$bundle' (make convert writes one), found none" >&2
  exit 1
fi
if [ ! -f "$bundle/model_int8.tflite" ]; then
  echo "error: '$bundle' has no model_int8.tflite; the agent runs int8 by default" >&2
  exit 1
fi
bundle_abs="$(cd "$bundle" && pwd)"

run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# The pieces of a pipeline, printed as one line in a dry run.
pipe() {  # pipe "producer command" "consumer command"
  if [ "$DRY_RUN" = 1 ]; then
    printf '+ %s | %s\n' "$1" "$2"
  else
    bash -c "$1" | bash -c "$2"
  fi
}

q() { printf '%q' "$1"; }
ssh_cmd="ssh ${ssh_opts[*]:+${ssh_opts[*]} }$(q "$pi")"
remote_q=$(q "$REMOTE_STAGING")

echo "== deploy to $pi: device/ and bundle $bundle"
run ssh "${ssh_opts[@]}" "$pi" "rm -rf $remote_q && mkdir -p $remote_q/bundle"
docs=()
[ -d docs ] && docs=(docs)
pipe "tar -C $(q "$repo") --exclude=__pycache__ -cf - device requirements/device.txt deploy ${docs[*]}" \
     "$ssh_cmd $(q "tar -C $remote_q -xf -")"
pipe "tar -C $(q "$bundle_abs") -cf - ." "$ssh_cmd $(q "tar -C $remote_q/bundle -xf -")"

echo "== install on $pi (sudo)"
run ssh -t "${ssh_opts[@]}" "$pi" \
  "sudo PREFIX=$(q "$PREFIX") bash $remote_q/deploy/install-on-pi.sh $remote_q"

if [ "$DRY_RUN" = 1 ]; then
  echo
  echo "== what install-on-pi.sh runs there (its own dry run):"
  staging=$(mktemp -d)
  trap 'rm -rf "$staging"' EXIT
  mkdir -p "$staging/requirements" "$staging/bundle"
  cp -r device deploy "$staging/"
  cp requirements/device.txt "$staging/requirements/"
  cp "$bundle_abs/manifest.json" "$staging/bundle/"
  DRY_RUN=1 PREFIX="$PREFIX" bash deploy/install-on-pi.sh "$staging" | sed "s#$staging#~/$REMOTE_STAGING#g"
fi
echo "done. On the Pi: journalctl -u clad-agent -f (where systemd runs; else the installer said how to start it)"
