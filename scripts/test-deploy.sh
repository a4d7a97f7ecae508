#!/usr/bin/env bash
# make test-deploy: `make deploy` end to end against a real SSH target on loopback.
#
#   1. a Debian bookworm root made with debootstrap (minbase + openssh-server, sudo, python3-venv
#      and the packages install-on-pi.sh needs), cached in $DEPLOY_CACHE (default .cache/deploy)
#   2. sshd from that root, run with chroot on 127.0.0.1 on a free port, with a key generated
#      for this run (root login by key only)
#   3. `make deploy PI=root@127.0.0.1 PI_PORT=<port>` with that key: deploy.sh copies device/,
#      the bundle and deploy/ over ssh and runs install-on-pi.sh there (apt check, user, venv with
#      the locked runtime + PyAudio, settings, unit; no systemd runs in a chroot, so it says how
#      to start the agent instead)
#   4. over the same ssh: `clad-agent score` on a WAV file and `python -m device.bench` answer
#      from /opt/clad-agent in the target
#
# The bundle: $DEPLOY_BUNDLE, else bundles/demo when it holds a manifest, else the fixture bundle
# of tests/device_fixtures.py. Needs root (debootstrap, chroot, mounts), debootstrap
# (apt-get install debootstrap) and the network (Debian mirror, PyPI). Mounts live in a private
# mount namespace (unshare), so nothing stays mounted when the script ends, however it ends.
# Every step runs under `timeout` (the sum bounds the run). Measured here: 3 minutes cold
# (debootstrap 112 s, a 598 MB root), 55 s warm (make deploy 44 s with PyAudio compiled).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
cache="${DEPLOY_CACHE:-$repo/.cache/deploy}"
root="$cache/bookworm"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# What install-on-pi.sh installs with apt, put in the root up front (the test then checks its
# "already installed" path and does not download a compiler every run), plus sshd and sudo.
packages=(openssh-server sudo ca-certificates python3 python3-venv python3-dev portaudio19-dev gcc)
say() { echo "test-deploy: $*"; }
fail() { echo "test-deploy: error: $*" >&2; exit 1; }

if [ -z "${CLAD_TEST_DEPLOY_NS:-}" ]; then
  [ "$(id -u)" -eq 0 ] || fail "expected to run as root (debootstrap, chroot and mounts need it), running as uid $(id -u)"
  command -v debootstrap >/dev/null || fail "expected debootstrap on PATH, found none (apt-get install debootstrap)"
  command -v unshare >/dev/null || fail "expected unshare (util-linux) on PATH, found none"
  # Re-run in a private mount namespace: its mounts vanish with it.
  exec unshare --mount --propagation private env CLAD_TEST_DEPLOY_NS=1 "$0" "$@"
fi
start_s=$SECONDS
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

# ------------------------------------------------------------------ 1. the root
key="$(printf '%s\n' "${packages[@]}" bookworm "$mirror" | sha256sum | cut -c1-16)"
if [ ! -f "$root/.clad-stamp" ] || [ "$(cat "$root/.clad-stamp")" != "$key" ]; then
  say "debootstrap bookworm into ${root#"$repo"/} (${packages[*]})"
  rm -rf "$root" "$root.tmp"
  if ! timeout 1200 debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
    bookworm "$root.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1; then
    tail -20 "$cache/debootstrap.log" >&2
    fail "debootstrap failed (log: ${cache#"$repo"/}/debootstrap.log)"
  fi
  echo "$key" >"$root.tmp/.clad-stamp"
  mv "$root.tmp" "$root"
  say "root built in $((SECONDS - start_s)) s, $(du -sh "$root" | cut -f1)"
fi

# ------------------------------------------------------------------ 2. sshd on loopback
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mkdir -p "$root/run/sshd"
cp /etc/resolv.conf "$root/etc/resolv.conf"  # pip inside the target reaches PyPI
# ... and trusts what this machine trusts (a TLS-inspecting proxy on the way has its own CA).
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
grep -q " $(hostname)\$" "$root/etc/hosts" 2>/dev/null || echo "127.0.1.1 $(hostname)" >>"$root/etc/hosts"
# A fresh /opt/clad-agent and /etc/clad-agent every run: the install is tested from nothing.
rm -rf "$root/opt/clad-agent" "$root/etc/clad-agent" "$root/root/.cache/clad-agent-deploy"
work="$(mktemp -d)"
sshd_pid=""
cleanup() {
  if [ -n "$sshd_pid" ]; then
    kill "$sshd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N "" -C clad-test-deploy -f "$work/id"
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$work/id.pub" "$root/root/.ssh/authorized_keys"
chroot "$root" ssh-keygen -A >/dev/null
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
chroot "$root" /usr/sbin/sshd -D -e -p "$port" -o ListenAddress=127.0.0.1 \
  -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no -o UsePAM=no \
  -o PidFile=/run/sshd.pid >"$work/sshd.log" 2>&1 &
sshd_pid=$!
ssh_opts=(-i "$work/id" -o BatchMode=yes -o StrictHostKeyChecking=no
  -o UserKnownHostsFile="$work/known_hosts" -o LogLevel=ERROR -o ConnectTimeout=10)
for _ in $(seq 50); do
  ssh "${ssh_opts[@]}" -p "$port" root@127.0.0.1 true 2>/dev/null && break
  kill -0 "$sshd_pid" 2>/dev/null || { cat "$work/sshd.log" >&2; fail "sshd exited"; }
  sleep 0.2
done
ssh "${ssh_opts[@]}" -p "$port" root@127.0.0.1 true || fail "sshd on 127.0.0.1:$port does not answer"
say "sshd in the root on 127.0.0.1:$port"

# ------------------------------------------------------------------ 3. make deploy
bundle="${DEPLOY_BUNDLE:-}"
if [ -z "$bundle" ] && [ -f bundles/demo/manifest.json ]; then
  bundle=bundles/demo
fi
if [ -z "$bundle" ]; then
  say "no bundles/demo; using the fixture bundle of tests/device_fixtures.py"
  bundle="$(nice "$repo/.venv/bin/python" -c '
import sys
from pathlib import Path
from tests.device_fixtures import cached_bundle
print(cached_bundle(Path(sys.argv[1])))' "$cache")"
fi
deploy_s=$SECONDS
if ! SSH_OPTS="${ssh_opts[*]}" timeout 1500 make --no-print-directory deploy \
  PI=root@127.0.0.1 PI_PORT="$port" BUNDLE="$bundle" 2>&1 | tee "$work/deploy.log"; then
  fail "make deploy failed (above)"
fi
grep -q "no systemd is running here" "$work/deploy.log" ||
  fail "expected install-on-pi.sh to say how to start the agent without systemd"
say "make deploy: $((SECONDS - deploy_s)) s"

# ------------------------------------------------------------------ 4. the agent answers there
# 2.5 s of a voiced 140 Hz tone with harmonics, 16 kHz int16 (the standard library only).
python3 - "$work/speech.wav" <<'EOF'
import math
import struct
import sys
import wave

rate = 16000
with wave.open(sys.argv[1], "wb") as out:
    out.setnchannels(1)
    out.setsampwidth(2)
    out.setframerate(rate)
    samples = (
        sum(math.sin(2 * math.pi * 140 * k * i / rate) / k for k in range(1, 8))
        * abs(math.sin(2 * math.pi * 2.5 * i / rate))
        for i in range(int(2.5 * rate))
    )
    out.writeframes(b"".join(struct.pack("<h", int(8000 * x)) for x in samples))
EOF
cp "$work/speech.wav" "$root/tmp/speech.wav"
remote() { timeout 300 ssh "${ssh_opts[@]}" -p "$port" root@127.0.0.1 "$@"; }
answer="$(remote /opt/clad-agent/venv/bin/clad-agent score /tmp/speech.wav \
  --bundle /opt/clad-agent/bundle --json)" || fail "clad-agent score failed in the target"
echo "$answer"
echo "$answer" | python3 -c '
import json, sys
rows = [json.loads(line) for line in sys.stdin if line.startswith("{")]
row = next((r for r in rows if r.get("file", "").endswith("speech.wav")), None)
if row is None or row.get("decision") not in ("bonafide", "spoof", "silence"):
    sys.exit(f"expected a decision for /tmp/speech.wav, got {rows}")
' || fail "clad-agent score answered without a decision"
remote "cd /tmp && sudo -u clad /opt/clad-agent/venv/bin/python -m device.bench \
  --bundle /opt/clad-agent/bundle --formats int8 --threads 1 --rounds 1 \
  --seconds-per-row 0.5 --sustain-s 1" || fail "python -m device.bench failed in the target"
say "passed in $((SECONDS - start_s)) s: make deploy installed the agent over ssh, clad-agent" \
  "score and device.bench answer there"
