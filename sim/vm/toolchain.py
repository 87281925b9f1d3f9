"""What booting the enclave image here needs beyond the image itself, installed once and cached
under `~/.cache/nitrokms/vm` (`$NITROKMS_VM_CACHE` overrides; spec: shared/spec/vm-facts.md): a
Debian sid chroot (mmdebstrap) holding QEMU >= 11 (the microvm machine, vhost-user devices,
`vhost-user-test-device`) and vhost-device-vsock. Its programs run with /dev, /proc and the work
directories bind-mounted, in a private mount namespace, so nothing leaks into the host's mounts.
(The kernel, command line and ramdisks come from the image's EIF.)

Packages come from the Debian mirror the machine's apt is already configured with (the same rule
as image/debian.py's host_mirror, which `nitrokms.sim` cannot import: `image/` is not installed).
The install ends with a stamp file, so an interrupted one starts again, and a lock file serialises
concurrent installs. Every command has a time limit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CACHE_ENV: Final = "NITROKMS_VM_CACHE"
TOOLCHAIN_SUITE: Final = "sid"
TOOLCHAIN_PACKAGES: Final = ("qemu-system-x86", "vhost-device-vsock")
INSTALL_TIMEOUT_S: Final = 900.0
APT_SOURCES: Final = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# The vhost-device-vsock and QEMU flags that would reach this machine's own AF_VSOCK, whose CID 2
# is the real hypervisor. Nothing here passes them; `check_vsock_argv` refuses them anyway.
FORBIDDEN_VSOCK_FLAGS: Final = ("--forward-cid", "--forward-listen")


_SOURCE_URL = re.compile(r"(?m)^(?:deb\s+(?:\[[^]]*]\s+)?|URIs:\s*)(\S+)")


class ToolchainError(RuntimeError):
    """A tool could not be installed or found; the message names the step and the output tail."""


@dataclass(frozen=True)
class Toolchain:
    """Paths of an installed toolchain."""

    cache: Path
    chroot: Path

    def chroot_argv(self, argv: Sequence[str], binds: Sequence[Path]) -> list[str]:
        """`argv` run inside the chroot, in a private mount namespace with /dev, /proc and each
        of `binds` (absolute directories, at the same path) mounted."""
        check_vsock_argv(argv)
        script = [
            "set -e",
            'root="$1"; shift',
            'mount --rbind /dev "$root/dev"',
            'mount -t proc proc "$root/proc"',
        ]
        for bind in binds:
            script.append(f'mkdir -p "$root{bind}" && mount --bind "{bind}" "$root{bind}"')
        script.append('exec chroot "$root" "$@"')
        return [
            "unshare", "-m", "--propagation", "private",
            "sh", "-c", "\n".join(script), "sh", str(self.chroot), *argv,
        ]  # fmt: skip


def check_vsock_argv(argv: Sequence[str]) -> None:
    """Refuse a command line that would make vhost-device-vsock use this machine's AF_VSOCK."""
    for arg in argv:
        if arg.split("=", 1)[0] in FORBIDDEN_VSOCK_FLAGS:
            raise ToolchainError(f"{arg.split('=', 1)[0]} would reach this machine's real vsock")


def cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "nitrokms" / "vm"


def debian_mirror() -> str:
    """The Debian archive URL the machine's apt uses (one-line or deb822 sources).

    Raises ToolchainError when none is configured.
    """
    for source in APT_SOURCES:
        files = sorted(source.glob("*.list")) + sorted(source.glob("*.sources"))
        for path in [source] if source.is_file() else files:
            with contextlib.suppress(OSError):
                for url in re.findall(
                    r"(?m)^(?:deb\s+(?:\[[^]]*]\s+)?|URIs:\s*)(\S+)", path.read_text()
                ):
                    if url.rstrip("/").endswith("/debian"):
                        return str(url)
    raise ToolchainError("no Debian archive in the apt sources; cannot fetch packages")


def _run(
    step: str,
    argv: Sequence[str],
    timeout_s: float = INSTALL_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> str:
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"{step}: still running after {timeout_s:g} s") from None
    except OSError as exc:
        raise ToolchainError(f"{step}: cannot run {argv[0]}: {exc}") from None
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise ToolchainError(f"{step} failed ({result.returncode}):\n" + "\n".join(tail))
    return result.stdout


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _say(message: str) -> None:
    print(f"vm toolchain: {message}", file=sys.stderr, flush=True)


def _host_tool(step: str, program: str) -> None:
    """Install `program` (its Debian package has the same name) from the host's own apt sources
    when it is not on PATH: a fresh machine has no mmdebstrap."""
    if shutil.which(program) is not None:
        return
    _say(f"{step}: {program} is not installed; apt-get install {program}")
    quiet = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(step, ["apt-get", "-qq", "update"], env=quiet)
    _run(step, ["apt-get", "-qq", "-y", "install", program], env=quiet)


def _mmdebstrap(step: str, target: Path, suite: str, packages: Sequence[str], variant: str) -> None:
    if (target.parent / f"{target.name}.ok").exists():
        return
    _host_tool(step, "mmdebstrap")
    shutil.rmtree(target, ignore_errors=True)
    _say(f"{step}: mmdebstrap {suite} ({', '.join(packages)})")
    started = time.monotonic()
    _run(
        step,
        [
            "mmdebstrap", f"--variant={variant}", "--aptopt=Acquire::Check-Valid-Until \"false\"",
            f"--include={','.join(packages)}", suite, str(target), debian_mirror(),
        ],
    )  # fmt: skip
    (target.parent / f"{target.name}.ok").write_text(f"{time.monotonic() - started:.1f} s\n")


def ensure() -> Toolchain:
    """Install the chroot if it is missing (about a minute the first time, nothing after) and
    return the paths. Raises ToolchainError naming the failed step."""
    if os.geteuid() != 0:
        raise ToolchainError("the VM toolchain needs root (mmdebstrap, chroot, mount namespaces)")
    cache = cache_dir()
    chroot = cache / f"toolchain-{TOOLCHAIN_SUITE}"
    with _locked(cache):
        _mmdebstrap("toolchain", chroot, TOOLCHAIN_SUITE, TOOLCHAIN_PACKAGES, "apt")
    return Toolchain(cache=cache, chroot=chroot)
