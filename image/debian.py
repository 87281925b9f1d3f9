"""Debian packages for the image, through the machine's own apt with a private configuration.

Each suite gets its own apt state under the cache directory (sources list, package lists, an empty
dpkg status, the downloaded archives), so nothing of the host's apt is touched and a second build
downloads nothing. The mirror is the one the host's apt already uses. `closure` resolves packages
with their dependencies against an empty system (what a fresh root filesystem needs) and returns
exact versions for the manifest; `fetch` downloads one package without dependencies (the kernel);
`extract` unpacks archives with `dpkg-deb -x` (no maintainer scripts run: the image needs none).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
HOST_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
ARCH = "amd64"


class DebianError(RuntimeError):
    """apt or dpkg-deb failed, or the host names no Debian mirror; the message says which."""


def host_mirror() -> str:
    """The Debian archive URI the host's apt uses (deb822 `URIs:` or a one-line `deb` entry)."""
    for path in HOST_SOURCES:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            match = re.match(r"\s*(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(\S+/debian)/?(\s|$)", line)
            if match:
                return match.group(1)
    raise DebianError("no Debian mirror in the host's apt sources: pass MIRROR=URI")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


class Apt:
    """apt-get for one suite, with all state under `root`."""

    def __init__(self, root: Path, suite: str, mirror: str) -> None:
        self.root = root
        self.archives = root / "archives"
        for sub in ("lists/partial", "archives/partial", "etc"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        (root / "etc" / "sources.list").write_text(
            f"deb [arch={ARCH} signed-by={KEYRING}] {mirror} {suite} main\n"
        )
        self.options = [
            f"-oDir::State={root}", f"-oDir::State::Lists={root}/lists",
            f"-oDir::State::status={root}/status", f"-oDir::Cache={root}",
            f"-oDir::Cache::archives={self.archives}",
            f"-oDir::Etc::sourcelist={root}/etc/sources.list", "-oDir::Etc::sourceparts=/dev/null",
            "-oDir::Etc::preferencesparts=/dev/null", f"-oAPT::Architecture={ARCH}",
            "-oAPT::Architectures=", "-oAPT::Install-Recommends=false",
            "-oAPT::Install-Suggests=false", "-oDebug::NoLocking=true",
            "-oAcquire::Check-Valid-Until=false", "-oAPT::Sandbox::User=root",
        ]  # fmt: skip
        self._updated = False

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        command = [tool, *self.options, *args]
        result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise DebianError(f"{tool} {' '.join(args)} failed: {' / '.join(tail)}")
        return result.stdout

    def update(self) -> None:
        if not self._updated:
            self._run("apt-get", "-qq", "update")
            self._updated = True

    def closure(self, names: list[str]) -> list[Package]:
        """`names` and everything they depend on, downloaded; sorted by name."""
        self.update()
        plan = self._run("apt-get", "-s", "install", *names)
        packages = [
            Package(m.group(1), m.group(2), m.group(3))
            for m in re.finditer(r"^Inst (\S+) \((\S+) .*\[(\w+)\]\)", plan, re.MULTILINE)
        ]
        if not packages:
            raise DebianError(f"apt planned nothing for {names}")
        self._run("apt-get", "-qq", "-y", "--download-only", "install", *names)
        return sorted(packages, key=lambda p: p.name)

    def depends(self, name: str) -> str:
        """The one package a metapackage depends on (linux-image-cloud-amd64 -> the versioned)."""
        self.update()
        found = re.findall(r"Depends: (\S+)", self._run("apt-cache", "depends", name))
        if not found:
            raise DebianError(f"{name} depends on nothing")
        return str(found[0])

    def fetch(self, name: str) -> Package:
        """Download `name` alone (no dependencies) into the archives; return it."""
        self.update()
        policy = self._run("apt-cache", "policy", name)
        match = re.search(r"Candidate: (\S+)", policy)
        if match is None or match.group(1) == "(none)":
            raise DebianError(f"no candidate for {name}")
        version = match.group(1)
        for arch in (ARCH, "all"):
            if (self.archives / Package(name, version, arch).filename).exists():
                return Package(name, version, arch)
        self._run("apt-get", "-qq", "download", f"{name}={version}", cwd=self.archives)
        for arch in (ARCH, "all"):
            if (self.archives / Package(name, version, arch).filename).exists():
                return Package(name, version, arch)
        raise DebianError(f"apt-get download {name}={version} left no archive")

    def extract(self, package: Package, into: Path) -> None:
        archive = self.archives / package.filename
        if not archive.exists():
            raise DebianError(f"{archive} was not downloaded")
        into.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["dpkg-deb", "-x", str(archive), str(into)],
                                capture_output=True, text=True, check=False)  # fmt: skip
        if result.returncode != 0:
            raise DebianError(f"dpkg-deb -x {archive.name}: {result.stderr.strip()[:200]}")
