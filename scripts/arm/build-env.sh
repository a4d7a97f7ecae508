#!/usr/bin/env bash
# Builds the emulated aarch64 environment of `make test-arm` under .cache/arm/ (or $ARM_CACHE),
# changing nothing machine-wide: no package is installed, no binfmt_misc handler is registered.
#
#   bin/qemu-aarch64-static   taken out of Debian's qemu-user-static .deb (never installed)
#   rootfs/                   Debian bookworm arm64 userland with python3.11 (.debs unpacked with dpkg -x)
#   roots/<cpu>/              overlay root per CPU model: symlinks into rootfs/ plus a fake
#                             /proc/cpuinfo (qemu's -L serves ROOT/proc/cpuinfo; LiteRT crashes
#                             on the host's x86 one)
#   site/litert, site/tflite  the aarch64 wheels of requirements/device.txt and device-tflite.txt
#   bin/python-<cpu>-<runtime>  wrappers: QEMU_CPU=<cpu> qemu-aarch64-static -L roots/<cpu> python3.11
#
# apt runs with a private state (lists, cache, dpkg status) under the cache folder, so the host's
# package database is neither read nor written. Every step is skipped when its stamp matches, so
# a second run takes about a second.
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${ARM_CACHE:-$repo/.cache/arm}"
host_python="${HOST_PYTHON:-$repo/.venv/bin/python}"
cpus=(cortex-a53 cortex-a72 cortex-a76)  # Pi Zero 2 W / Pi 3, Pi 4, Pi 5
declare -A lock_files=([litert]=requirements/device.txt [tflite]=requirements/device-tflite.txt)
# Packages of the arm64 userland; apt adds their dependencies (about 40 .debs).
arm_packages=(python3.11 libstdc++6)

mkdir -p "$cache/bin"
exec 9>"$cache/.lock"
flock 9

say() { echo "test-arm: $*"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# apt-get with a private state for one architecture: nothing under /var/lib is touched.
private_apt() {
  local arch="$1" state="$2"
  shift 2
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
  touch "$state/status"
  apt-get -q \
    -oAPT::Architecture="$arch" -oAPT::Architectures="$arch" \
    -oDir::State::Lists="$state/lists" -oDir::Cache="$state/cache" \
    -oDir::State::status="$state/status" -oDebug::NoLocking=1 \
    -oAPT::Sandbox::User=root "$@"
}

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "error: expected Debian's apt-get and dpkg-deb to fetch the arm64 packages, found none" >&2
  exit 1
fi

# ------------------------------------------------------------------ qemu-aarch64-static
qemu="$cache/bin/qemu-aarch64-static"
if [ ! -x "$qemu" ]; then
  say "fetching qemu-user-static (amd64 .deb; only qemu-aarch64-static is kept)"
  state="$cache/apt-amd64"
  rm -rf "$state"
  private_apt amd64 "$state" update >/dev/null
  (cd "$state" && private_apt amd64 "$state" download qemu-user-static >/dev/null)
  deb="$(ls "$state"/qemu-user-static_*.deb)"
  mkdir -p "$state/x"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$state/x" ./usr/bin/qemu-aarch64-static
  mv "$state/x/usr/bin/qemu-aarch64-static" "$qemu.tmp"
  basename "$deb" >"$cache/bin/qemu-aarch64-static.deb-name"
  rm -rf "$state"
  mv "$qemu.tmp" "$qemu"
fi

# ------------------------------------------------------------------ arm64 userland
rootfs="$cache/rootfs"
rootfs_key="$(echo "${arm_packages[*]}" | sha256sum | cut -c1-16)"
if ! stamp_ok "$rootfs/.clad-stamp" "$rootfs_key"; then
  say "fetching Debian arm64 ${arm_packages[*]} and their dependencies"
  state="$cache/apt-arm64"
  rm -rf "$state" "$rootfs" "$rootfs.tmp"
  private_apt arm64 "$state" update >/dev/null
  private_apt arm64 "$state" install -y --download-only --no-install-recommends \
    "${arm_packages[@]}" >/dev/null
  mkdir -p "$rootfs.tmp"
  for deb in "$state"/cache/archives/*.deb; do
    dpkg -x "$deb" "$rootfs.tmp"
    basename "$deb" >>"$rootfs.tmp/.clad-packages"
  done
  rm -rf "$state"
  # Debian compiles the stdlib's .pyc in postinst; do it here with the host's 3.11 (same bytecode)
  # so that emulated start-up does not compile the stdlib under qemu every time.
  "$host_python" -m compileall -q -j 0 "$rootfs.tmp/usr/lib/python3.11" >/dev/null || true
  echo "$rootfs_key" >"$rootfs.tmp/.clad-stamp"
  mv "$rootfs.tmp" "$rootfs"
fi

# ------------------------------------------------------------------ overlay roots with a fake cpuinfo
for cpu in "${cpus[@]}"; do
  root="$cache/roots/$cpu"
  cpuinfo="$repo/scripts/arm/cpuinfo/$cpu.txt"
  if [ ! -f "$root/proc/cpuinfo" ] || ! cmp -s "$cpuinfo" "$root/proc/cpuinfo"; then
    rm -rf "$root"
    mkdir -p "$root/proc"
    for entry in "$rootfs"/* "$rootfs"/.[!.]*; do
      [ -e "$entry" ] || continue
      name="$(basename "$entry")"
      [ "$name" = proc ] || ln -s "../../rootfs/$name" "$root/$name"
    done
    cp "$cpuinfo" "$root/proc/cpuinfo"
  fi
done

# ------------------------------------------------------------------ aarch64 wheels, one site per runtime
platforms=()
for glibc in 2014 2_17 2_24 2_26 2_27 2_28 2_31 2_34 2_35 2_36; do
  # pip matches platform tags exactly: list every manylinux tag glibc 2.36 (bookworm, Pi OS) accepts.
  if [ "$glibc" = 2014 ]; then platforms+=(--platform manylinux2014_aarch64)
  else platforms+=(--platform "manylinux_${glibc}_aarch64"); fi
done
sites_changed=0
for runtime in litert tflite; do
  site="$cache/site/$runtime"
  lock="$repo/${lock_files[$runtime]}"
  key="$(hash_of "$lock")"
  if ! stamp_ok "$site/.clad-stamp" "$key"; then
    say "installing the aarch64 wheels of ${lock_files[$runtime]} into site/$runtime"
    rm -rf "$site" "$site.tmp"
    if ! "$host_python" -m pip install -q --disable-pip-version-check --no-compile \
      --target "$site.tmp" --only-binary=:all: --no-deps --python-version 3.11 --implementation cp \
      --abi cp311 --abi abi3 --abi none "${platforms[@]}" -r "$lock" >"$cache/pip-$runtime.log" 2>&1
    then
      grep -v "^WARNING: Location" "$cache/pip-$runtime.log" >&2
      echo "error: pip could not install the aarch64 wheels of ${lock_files[$runtime]}" >&2
      exit 1
    fi
    rm -f "$cache/pip-$runtime.log"
    mv "$site.tmp" "$site"
    sites_changed=1
  fi
done
if [ "$sites_changed" = 1 ]; then
  # Both sites hold the same scipy/soundfile/cffi wheels: hard-link identical files (125 MB).
  "$host_python" "$repo/scripts/arm/dedupe.py" "$cache/site/litert" "$cache/site/tflite"
  # The .pyc, written by the host's 3.11 (the same bytecode), so that emulated imports do not
  # compile under qemu. They name their source path, so each site keeps its own.
  "$host_python" -m compileall -q -j 0 "$cache/site/litert" "$cache/site/tflite" >/dev/null || true
  for runtime in litert tflite; do
    hash_of "$repo/${lock_files[$runtime]}" >"$cache/site/$runtime/.clad-stamp"
  done
fi

# ------------------------------------------------------------------ wrappers
for cpu in "${cpus[@]}"; do
  for runtime in litert tflite; do
    wrapper="$cache/bin/python-$cpu-$runtime"
    cat >"$wrapper.tmp" <<EOF
#!/usr/bin/env bash
# Generated by scripts/arm/build-env.sh: Debian's arm64 python3.11 on an emulated ${cpu}
# with the aarch64 wheels of ${lock_files[$runtime]} and the repository on the path.
export QEMU_CPU=$cpu
export PYTHONPATH="$cache/site/$runtime:$repo"
export PYTHONNOUSERSITE=1
unset PYTHONHOME PYTHONSTARTUP OPENBLAS_CORETYPE OPENBLAS_L2_SIZE  # x86 settings mean nothing here
exec "$qemu" -L "$cache/roots/$cpu" "$rootfs/usr/bin/python3.11" "\$@"
EOF
    chmod +x "$wrapper.tmp"
    mv "$wrapper.tmp" "$wrapper"
  done
done
say "environment ready in ${cache#"$repo"/} ($(du -sh "$cache" | cut -f1))"
