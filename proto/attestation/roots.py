"""Pinned trust anchors: the AWS Nitro Enclaves Root-G1 shipped with the package, or another."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from nitrokms.proto.attestation.errors import UntrustedRootError

AWS_ROOT_RESOURCE = "aws_nitro_enclaves_root_g1.pem"
AWS_ROOT_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
MAX_ROOT_BYTES = 64 * 1024


@functools.cache
def aws_nitro_root() -> x509.Certificate:
    """The AWS Nitro Enclaves Root-G1 certificate, checked against its pinned DER SHA-256.

    Raises UntrustedRootError if the bundled file is missing, unreadable or has been altered.
    """
    try:
        pem = resources.files("nitrokms.proto.data").joinpath(AWS_ROOT_RESOURCE).read_bytes()
    except OSError as exc:
        raise UntrustedRootError(f"untrusted root: bundled AWS root unreadable ({exc})") from None
    cert = load_root(pem)
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    if fingerprint != AWS_ROOT_SHA256:
        raise UntrustedRootError("untrusted root: bundled AWS root does not match its fingerprint")
    return cert


def load_root(root: x509.Certificate | bytes | None) -> x509.Certificate:
    """A trust anchor from a certificate, PEM or DER bytes; None means the AWS root.

    Raises UntrustedRootError when the bytes are not one X.509 certificate.
    """
    if root is None:
        return aws_nitro_root()
    if isinstance(root, x509.Certificate):
        return root
    if len(root) > MAX_ROOT_BYTES:
        raise UntrustedRootError("untrusted root: root certificate file is too large")
    try:
        if root.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(root)
        return x509.load_der_x509_certificate(root)
    except ValueError:
        raise UntrustedRootError("untrusted root: root is not a PEM or DER certificate") from None
