"""`make image-test`: the enclave service run from the built image, not from the development venv.

The test builds an image for eu-west-1 (image/build.py, as `make image` does) whose settings differ
from a production image's only where the simulated world must stand in for Nitro: the relay, the
RPC socket and the KMS TLS roots are files under /run instead of vsock addresses and Amazon's roots.
It then runs the image's CMD with the image's environment, exactly as listed in its manifest, with
no argument added: the image's own /usr/bin/python3.11 and site-packages, chrooted into the
unpacked rootfs.tar, in a new mount and network namespace (loopback only), under the simulated NSM
(whose boot PCRs are the EIF's own measurements). The only way out is the relay's unix socket to
the local KMS. A key whose policy `nitrokms policy` made from the EIF's measurements.json is then
fetched through it. Needs root (chroot, namespaces) and the network for the first build (cached).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nitrokms.parent.rpc import EnclaveClient
from nitrokms.parent.rpc.errors import RemoteError
from nitrokms.sim.launch import base_env
from nitrokms.sim.nsm.server import preload_library_path
from nitrokms.sim.processes import ManagedProcess, spawn
from nitrokms.sim.world import ROLE_ARN, World

from .conftest import REPO

REGION = "eu-west-1"
pytestmark = [
    pytest.mark.image,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and namespaces need root"),
]
# Inside the image: the world's run directory is mounted on /run.
TEST_SETTINGS = ("kms_relay=unix:///run/kms-relay.sock", "ca_bundle=/run/kms-ca.pem",
                 "listen=unix:///run/image-enclave.sock",
                 "control_listen=unix:///run/image-enclave.ctl")  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("image-out")
    work = tmp_path_factory.mktemp("image-work")
    settings = [arg for item in TEST_SETTINGS for arg in ("--setting", item)]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    result = subprocess.run(
        [sys.executable, "-m", "image.build", "--region", REGION, "--out", str(out),
         "--work", str(work), *settings],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=840, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("sha256:")
    shutil.rmtree(work)
    return out


@pytest.fixture(scope="module")
def root(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("rootfs")
    with tarfile.open(built / "rootfs.tar") as tar:
        tar.extractall(target, filter="tar")
    return target


def manifest(built: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((built / "manifest.json").read_text())
    return value


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with World(tmp_path_factory.mktemp("world"), region=REGION) as running:
        yield running


LAUNCHER = """set -eu
mount --make-rprivate /
mount --bind "$RUN_DIR" "$ROOT/run"
mkdir -p "$ROOT/run/nsm"
mount --bind "$(dirname "$NITROKMS_NSM_SOCKET")" "$ROOT/run/nsm"
exec env -i $IMAGE_ENV LD_PRELOAD=/run/nsm-preload.so NITROKMS_NSM_SOCKET=/run/nsm/nsm.sock \\
    chroot "$ROOT" "$@"
"""


def start_image_enclave(world: World, built: Path, root: Path) -> ManagedProcess:
    """The image's CMD and /env under `nsm run`, chrooted, in new mount and network namespaces."""
    run_dir = world.run_dir
    shutil.copy(world.kms_ca_path, run_dir / "kms-ca.pem")
    shutil.copy(preload_library_path(), run_dir / "nsm-preload.so")
    for name in ("image-enclave.sock", "image-enclave.ctl"):
        (run_dir / name).unlink(missing_ok=True)
    launcher = world.workdir / "image-launcher.sh"
    launcher.write_text(LAUNCHER)
    info = manifest(built)
    env = base_env() | {"RUN_DIR": str(run_dir), "ROOT": str(root),
                        "IMAGE_ENV": " ".join(info["env"])}  # fmt: skip
    argv = [
        sys.executable, "-m", "nitrokms.sim", "nsm", "run", "--state", str(world.nsm_state),
        "--measurements", str(built / "measurements.json"), "--region", REGION,
        "--role-arn", ROLE_ARN, "--",
        "unshare", "-m", "-n", "sh", str(launcher), *info["cmd"],
    ]  # fmt: skip
    process, _ = spawn("image-enclave", argv, log_path=world.log_dir / "image-enclave.log",
                       env=env, cwd=world.workdir, ready='"event": "ready"')  # fmt: skip
    return process


def test_the_image_holds_the_enclave_side_only(root: Path, built: Path) -> None:
    site = root / "usr/local/lib/python3.11/dist-packages"
    package = site / "nitrokms"
    assert sorted(p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__") == [
        "enclave", "proto", "transport",
    ]  # fmt: skip
    for absent in ("boto3", "yaml", "dns", "asn1crypto", "s3transfer", "pytest", "hypothesis"):
        assert not (site / absent).exists(), absent
    assert not list(root.rglob("sim")), "the simulated world is in the image"
    settings = json.loads((root / "etc/nitrokms/enclave.json").read_text())
    assert settings["region"] == REGION
    assert manifest(built)["cmd"] == ["/usr/bin/python3.11", "-m", "nitrokms.enclave"]


def test_kms_roots_are_the_amazon_and_starfield_roots_only(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.utils import CryptographyDeprecationWarning

    pem = _production_roots(tmp_path / "prod")
    with warnings.catch_warnings():  # Starfield's G2 root has serial number 0 (RFC 5280 says > 0)
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        names = [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(pem)]
    assert len(names) == 5
    assert sum("Amazon Root CA" in n for n in names) == 4
    assert sum("Starfield Services Root Certificate Authority - G2" in n for n in names) == 1


def _production_roots(out: Path) -> bytes:
    # Same function the build uses, applied to the cached ca-certificates archive.
    from image.build import KMS_ROOTS, kms_roots
    from image.debian import Apt, host_mirror

    apt = Apt(Path.home() / ".cache" / "nitrokms" / "apt" / "bookworm", "bookworm", host_mirror())
    package = apt.fetch("ca-certificates")
    apt.extract(package, out / "ca")
    kms_roots(out / "ca/usr/share/ca-certificates/mozilla", KMS_ROOTS, out / "root")
    return (out / "root/etc/nitrokms/kms-roots.pem").read_bytes()


def test_image_enclave_fetches_an_attested_key_for_its_region_only(
    world: World, built: Path, root: Path
) -> None:
    process = start_image_enclave(world, built, root)
    try:
        key = world.create_key(
            world.key_policy(measurements=built / "measurements.json"), "image-test key"
        )
        credential = world.parent_credentials()
        with EnclaveClient(f"unix://{world.run_dir / 'image-enclave.sock'}") as client:
            described = client.describe()
            image_pcrs = json.loads((built / "measurements.json").read_text())["Measurements"]
            assert described.pcrs[0].hex() == image_pcrs["PCR0"]
            assert described.pcrs[2].hex() == image_pcrs["PCR2"]
            secret = (credential.access_key_id, credential.secret_access_key)
            token = credential.session_token
            with pytest.raises(RemoteError) as refused:
                client.set_credentials(*secret, "us-east-1", session_token=token)
            assert refused.value.code == "enclave.RegionMismatch"
            client.set_credentials(*secret, REGION, session_token=token)
            result = client.generate_data_key(key, key_spec="AES_256")
            assert result.key_id == key
            assert result.handle
            health = client.health()
            assert (health.region, health.credentials_present) == (REGION, True)
    finally:
        process.stop()
    log = (world.log_dir / "image-enclave.log").read_text()
    assert credential.secret_access_key not in log
