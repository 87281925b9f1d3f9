"""Regenerate the OpenSSL-made CMS vectors: `.venv/bin/python tests/vectors/cms/make_vectors.py`.

A throwaway RSA-2048 key and self-signed certificate (made once, committed as `test_recipient.*`)
are the recipient; `openssl cms -encrypt` makes DER (definite-length) EnvelopedData blobs that an
encoder independent of ours produced. The tests call `make_openssl_blobs` too, into a temporary
folder, so they check the openssl on the machine as well as the committed files.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

HERE = Path(__file__).resolve().parent
PLAINTEXT = b"OpenSSL made this for the nitrokms CMS reader.\n"
_OAEP_SHA256 = [
    "-keyopt", "rsa_padding_mode:oaep",
    "-keyopt", "rsa_oaep_md:sha256",
    "-keyopt", "rsa_mgf1_md:sha256",
]  # fmt: skip

#: file name -> extra `openssl cms -encrypt` arguments (after -recip: -keyopt applies to it)
OPENSSL_BLOBS: dict[str, list[str]] = {
    "openssl_oaep256_keyid.der": ["-aes256", "-keyid", *_OAEP_SHA256],
    "openssl_oaep256_issuer.der": ["-aes256", *_OAEP_SHA256],
    "openssl_pkcs1v15.der": ["-aes256", "-keyid"],
    "openssl_oaep_sha1.der": ["-aes256", "-keyid", "-keyopt", "rsa_padding_mode:oaep"],
    "openssl_aes128.der": ["-aes128", "-keyid", *_OAEP_SHA256],
}


def make_recipient(key_path: Path, cert_path: Path) -> None:
    """Write a new RSA-2048 key (PKCS#8 PEM) and a self-signed certificate with an SKI."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nitrokms CMS test recipient")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x4E4B4D53)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=36500))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_openssl_blobs(cert_path: Path, out_dir: Path) -> dict[str, Path]:
    """Run `openssl cms -encrypt` for each OPENSSL_BLOBS entry; raises CalledProcessError."""
    plaintext = out_dir / "plaintext.bin"
    plaintext.write_bytes(PLAINTEXT)
    made = {}
    for name, extra in OPENSSL_BLOBS.items():
        out = out_dir / name
        subprocess.run(
            ["openssl", "cms", "-encrypt", "-binary", "-outform", "DER",
             "-in", str(plaintext), "-out", str(out), "-recip", str(cert_path), *extra],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        made[name] = out
    plaintext.unlink()
    return made


def main() -> int:
    key_path, cert_path = HERE / "test_recipient.key.pem", HERE / "test_recipient.cert.pem"
    if not key_path.exists():
        make_recipient(key_path, cert_path)
    for name in make_openssl_blobs(cert_path, HERE):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
