"""A man-in-the-middle parent: instead of relaying the enclave's bytes, it terminates TLS itself
with a certificate for the KMS host name from its own CA, and would relay the decrypted requests
to the real (local) KMS over a second TLS connection, reading everything on the way.

The enclave must refuse the handshake: the certificate does not chain to its CA bundle.
`handshake_errors` records what the enclave's refusal looked like from here, `requests_seen` the
requests this parent managed to read (zero if the enclave held firm).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import select
import socket
import ssl
import threading
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CHUNK = 65536
IO_TIMEOUT_S = 30.0


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def impostor_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """A CA of our own and a server certificate for `host` it signed; returns (cert, key) paths
    (the chain file holds leaf then CA)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Impostor Parent CA"))
        .issuer_name(_name("Impostor Parent CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "impostor-chain.pem", directory / "impostor-key.pem"
    pem = serialization.Encoding.PEM
    cert_path.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class MITMRelay:
    """Listens on `socket_path`; each connection: TLS server handshake with the impostor
    certificate, then TLS to `upstream` (verified against `upstream_ca`) and a plaintext pipe."""

    def __init__(
        self,
        socket_path: Path,
        *,
        cert: Path,
        key: Path,
        upstream: tuple[str, int],
        upstream_host: str,
        upstream_ca: Path,
    ) -> None:
        self.socket_path = socket_path
        self.upstream = upstream
        self.upstream_host = upstream_host
        self.server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_context.load_cert_chain(cert, key)
        self.client_context = ssl.create_default_context(cafile=str(upstream_ca))
        self.handshake_errors: list[str] = []
        self.requests_seen = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="mitm-accept", daemon=True)

    def __enter__(self) -> MITMRelay:
        self.socket_path.unlink(missing_ok=True)
        self._listener.bind(str(self.socket_path))
        self._listener.listen(16)
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join(IO_TIMEOUT_S)
        for thread in self._threads:
            thread.join(IO_TIMEOUT_S)
        self.socket_path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT_S)
        try:
            with (
                self.server_context.wrap_socket(conn, server_side=True) as tls,
                socket.create_connection(self.upstream, timeout=IO_TIMEOUT_S) as raw,
                self.client_context.wrap_socket(raw, server_hostname=self.upstream_host) as up,
            ):
                self._pipe(tls, up)
        except ssl.SSLError as exc:
            with self._lock:
                self.handshake_errors.append(str(exc))
        except OSError:
            pass
        finally:
            conn.close()

    def _pipe(self, client: ssl.SSLSocket, upstream: ssl.SSLSocket) -> None:
        peers = {client: upstream, upstream: client}
        while True:
            readable, _, _ = select.select(list(peers), [], [], IO_TIMEOUT_S)
            if not readable:
                return
            for source in readable:
                data = source.recv(CHUNK)
                if not data:
                    return
                if source is client:
                    with self._lock:
                        self.requests_seen += 1
                peers[source].sendall(data)
