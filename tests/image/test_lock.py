"""requirements/*.lock: hash-pinned, generated, and covering every runtime dependency."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LINUX_PY311: dict[str, str] = {k: str(v) for k, v in default_environment().items()} | {
    "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux",
    "os_name": "posix", "implementation_name": "cpython", "extra": "",
}  # fmt: skip


def read_lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """canonical name -> (version, hashes)."""
    text = (REPO / "requirements" / name).read_text()
    logical = re.sub(r"\\\n\s*", " ", text)
    entries: dict[str, tuple[str, list[str]]] = {}
    for raw in logical.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)((?:\s+--hash=\S+)*)", line)
        assert match, f"{name}: unexpected line {line!r}"
        hashes = re.findall(r"--hash=(\S+)", match.group(3))
        entries[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return entries


ENCLAVE_LOCK = read_lock("enclave.lock")
BUILD_LOCK = read_lock("build.lock")


@pytest.mark.parametrize("lock", [ENCLAVE_LOCK, BUILD_LOCK], ids=["enclave", "build"])
def test_every_pin_has_sha256_hashes(lock: dict[str, tuple[str, list[str]]]) -> None:
    assert lock
    for name, (_, hashes) in lock.items():
        assert hashes, f"{name} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_compiled_packages_carry_hashes_for_more_than_one_wheel() -> None:
    for name in ("cryptography", "cffi", "cbor2"):
        assert len(ENCLAVE_LOCK[name][1]) >= 4, f"{name}: only this platform's wheel is hashed"


IMAGE_SOURCES = ("enclave", "proto", "transport", "nitrokms/__init__.py")
# import name -> distribution, for what the image side imports
DISTRIBUTION_OF = {"cryptography": "cryptography", "cbor2": "cbor2", "botocore": "botocore",
                   "cffi": "cffi", "boto3": "boto3", "yaml": "pyyaml", "dns": "dnspython",
                   "asn1crypto": "asn1crypto"}  # fmt: skip
# Imported only by the application helper `attested_kms_client` (not by the service), which
# documents that an image using it adds boto3.
NOT_SHIPPED_ON_PURPOSE = {"boto3"}


def image_side_imports() -> set[str]:
    """Top-level names of every third-party module the image's code imports (lazy ones too)."""
    stdlib = set(sys.stdlib_module_names)
    found: set[str] = set()
    for source in IMAGE_SOURCES:
        path = REPO / source
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.split(".")[0])
    return found - stdlib - {"nitrokms", "__future__"}


def enclave_in() -> dict[str, Requirement]:
    lines = (REPO / "requirements" / "enclave.in").read_text().splitlines()
    requirements = [
        Requirement(line) for line in lines if line.strip() and not line.startswith("#")
    ]
    return {canonicalize_name(r.name): r for r in requirements}


def test_enclave_in_lists_exactly_what_the_image_side_imports() -> None:
    imported = image_side_imports()
    assert imported <= set(DISTRIBUTION_OF), f"map these imports: {imported - set(DISTRIBUTION_OF)}"
    wanted = {DISTRIBUTION_OF[name] for name in imported - NOT_SHIPPED_ON_PURPOSE}
    assert set(enclave_in()) == wanted


def test_parent_only_packages_stay_out_of_the_image_lock() -> None:
    for name in ("boto3", "s3transfer", "pyyaml", "dnspython", "asn1crypto"):
        assert name not in ENCLAVE_LOCK, name


def test_enclave_in_ranges_are_the_declared_ranges() -> None:
    declared: dict[str, str] = {
        canonicalize_name(Requirement(r).name): str(Requirement(r))
        for r in PYPROJECT["project"]["dependencies"]
    }
    for name, requirement in enclave_in().items():
        assert declared[name] == str(requirement)


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        (ENCLAVE_LOCK, [str(r) for r in enclave_in().values()]),
        (BUILD_LOCK, PYPROJECT["build-system"]["requires"]),
    ],
    ids=["runtime", "build-system"],
)
def test_lock_pins_satisfy_the_declared_ranges(lock, requirements: list[str]) -> None:
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is not in the lock"
        assert requirement.specifier.contains(lock[name][0], prereleases=True), text


def test_lock_is_closed_under_dependencies() -> None:
    checked = 0
    for name, (version, _) in ENCLAVE_LOCK.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        checked += 1
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(LINUX_PY311):
                continue
            assert canonicalize_name(requirement.name) in ENCLAVE_LOCK, f"{name} needs {text}"
    assert checked >= len(ENCLAVE_LOCK) // 2


def test_runtime_lock_holds_no_test_tooling_and_no_local_index() -> None:
    test_only = {
        canonicalize_name(Requirement(r).name)
        for r in PYPROJECT["project"]["optional-dependencies"]["test"]
    }
    assert not test_only & set(ENCLAVE_LOCK)
    for name in ("enclave.lock", "build.lock"):
        text = (REPO / "requirements" / name).read_text()
        assert "autogenerated by pip-compile with Python 3.11" in text
        assert not re.search(r"^\s*--(?:index-url|extra-index-url|find-links)", text, re.MULTILINE)
        assert "file://" not in text
