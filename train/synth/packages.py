"""Debian packages the demo corpus reads, fetched into a cache without installing them.

    fetch(["asterisk-core-sounds-en-g722"], cache) -> {name: FetchedPackage}

Each package is downloaded with `apt-get download NAME` (no root needed once apt's
package lists exist) and unpacked with `dpkg-deb -x` into `<cache>/<name>_<version>/`.
When a download fails and the caller is root, the package lists are refreshed once
(`apt-get update`) and the download retried. A package already unpacked there is a cache hit: no apt call, no network. Its version,
the .deb's sha256 and size are recorded so that stats.json says exactly what a corpus
was built from. The licence of each package is in `LICENCES` (read from the package's
debian/copyright; docs/demo_corpus.md repeats them).

The default cache is `$CLAD_CACHE/debian`, else `$XDG_CACHE_HOME/clad-edge/debian`, else
`~/.cache/clad-edge/debian`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

LICENCES = {
    "asterisk-core-sounds-en-g722": "CC-BY-SA-3.0",
    "asterisk-core-sounds-es-g722": "CC-BY-SA-3.0",
    "asterisk-core-sounds-fr-g722": "CC-BY-SA-3.0",
    "asterisk-core-sounds-it-g722": "CC-BY-3.0",
    "asterisk-core-sounds-ru-g722": "CC-BY-3.0",
    "fillets-ng-data-cs": "GPL-2.0-or-later",
    "fillets-ng-data-nl": "GPL-2.0-or-later",
    "libcodec2-1.0": "LGPL-2.1",
}
"""Licence of each package's content, from its debian/copyright."""

_STAMP = ".clad-fetched.json"


class FetchError(RuntimeError):
    """A package could not be downloaded or unpacked; the message names it and the fix."""


@dataclass(frozen=True)
class FetchedPackage:
    """One unpacked package and where it came from."""

    name: str
    version: str
    deb_sha256: str
    deb_bytes: int
    root: str  # the unpacked tree (contains usr/...)
    licence: str
    cache_hit: bool

    def provenance(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("root")
        out.pop("cache_hit")
        return out


def default_cache() -> Path:
    if os.environ.get("CLAD_CACHE"):
        return Path(os.environ["CLAD_CACHE"]) / "debian"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clad-edge" / "debian"


def _cached(name: str, cache: Path) -> FetchedPackage | None:
    for stamp in sorted(cache.glob(f"{name}_*/{_STAMP}")):
        try:
            data = json.loads(stamp.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("name") == name and (stamp.parent / "usr").is_dir():
            return FetchedPackage(**{**data, "root": str(stamp.parent), "cache_hit": True})
    return None


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise FetchError(
            f"{command[0]} not found: the demo corpus fetches Debian packages with apt-get "
            "and dpkg-deb (a Debian or Ubuntu machine)"
        ) from error


def _refresh_lists() -> bool:
    """`apt-get update` when running as root (stale lists name versions the mirror dropped)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    done = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, check=False)
    return done.returncode == 0


def _download(name: str, cache: Path, refreshed: list[bool]) -> FetchedPackage:
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{name}-") as staging:
        staging_dir = Path(staging)
        os.chmod(staging_dir, 0o755)  # apt's _apt user may write here
        done = _run(["apt-get", "download", "-q", name], staging_dir)
        debs = sorted(staging_dir.glob(f"{name}_*.deb"))
        if (done.returncode != 0 or not debs) and not refreshed[0]:
            refreshed[0] = True
            if _refresh_lists():
                done = _run(["apt-get", "download", "-q", name], staging_dir)
                debs = sorted(staging_dir.glob(f"{name}_*.deb"))
        if done.returncode != 0 or not debs:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise FetchError(
                f"cannot download Debian package {name!r}: "
                f"{detail[-1] if detail else f'apt-get exited {done.returncode}'}. "
                f"Expected `apt-get download {name}` to fetch it; refresh the package lists "
                f"with `sudo apt-get update` and check `apt-cache policy {name}`"
            )
        deb = debs[0]
        version = _run(["dpkg-deb", "-f", str(deb), "Version"], staging_dir).stdout.strip()
        if not version:
            raise FetchError(f"{deb.name}: dpkg-deb could not read its Version field")
        tree = staging_dir / "tree"
        unpacked = _run(["dpkg-deb", "-x", str(deb), str(tree)], staging_dir)
        if unpacked.returncode != 0:
            raise FetchError(f"dpkg-deb -x {deb.name} failed: {unpacked.stderr.strip()}")
        digest = hashlib.sha256(deb.read_bytes()).hexdigest()
        package = FetchedPackage(
            name=name,
            version=version,
            deb_sha256=digest,
            deb_bytes=deb.stat().st_size,
            root="",
            licence=LICENCES.get(name, "see its debian/copyright"),
            cache_hit=False,
        )
        final = cache / f"{name}_{version.replace(':', '%3a')}"
        if final.exists():
            shutil.rmtree(final)
        stamp = {k: v for k, v in asdict(package).items() if k not in ("root", "cache_hit")}
        (tree / _STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        tree.rename(final)
    return FetchedPackage(**{**stamp, "root": str(final), "cache_hit": False})


def fetch(names: Sequence[str], cache: Path | None = None) -> dict[str, FetchedPackage]:
    """Every named package unpacked in the cache (downloaded only when missing)."""
    cache = Path(cache) if cache is not None else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, FetchedPackage] = {}
    refreshed = [False]  # one `apt-get update` at most per call, and only as root
    for name in names:
        out[name] = _cached(name, cache) or _download(name, cache, refreshed)
    return out
