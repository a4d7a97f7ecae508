#!/usr/bin/env bash
# Installs the Debian packages clad-edge needs, and only the ones that are missing.
#   portaudio19-dev  headers PyAudio compiles against (microphone capture)
#   libsndfile1      audio decoding for soundfile on machines without its bundled copy
#   alsa-utils       arecord/aplay, for piping a microphone into `clad-agent listen --source stdin`
#   mosquitto        an MQTT broker: the tests start a real one on a loopback port (MQTT alerts)
#   chromium         a headless browser: the tests load the agent's status page in it
#   (shellcheck)     the tests lint every shell script of the kit with it
# Extra package names given as arguments are added for that call only; `make test-deploy` passes
#   debootstrap      builds the Debian root that the deploy test's loopback SSH target runs in
# Idempotent: when everything is present it prints one line and changes nothing.
set -euo pipefail

packages=(portaudio19-dev libsndfile1 alsa-utils mosquitto chromium shellcheck "$@")
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present (${packages[*]})"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing Debian packages: ${missing[*]}; expected apt-get to install them, found none." >&2
  echo "Install the equivalents with your package manager and run make again." >&2
  exit 1
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "error: missing Debian packages: ${missing[*]}; need root or sudo to install them." >&2
    exit 1
  fi
fi

echo "system packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
