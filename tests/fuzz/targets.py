"""Every decoder that faces untrusted bytes, as fuzz targets with their typed errors.

Each target's `run` takes raw bytes and must return or raise one of `typed_errors`; targets that
have an invariant beyond "no crash" (the local KMS never answers 500, a decoded frame survives a
re-encode) assert it, and an AssertionError is a failure like any other. Expensive set-up (a
simulated PKI, the local KMS's key store) happens once, lazily, in `_Context`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from nitrokms.enclave import envelope, kms_shapes
from nitrokms.enclave.cms import CMSError, decrypt_enveloped_data, inspect_enveloped_data
from nitrokms.enclave.errors import (
    DecryptionError,
    KMSError,
    MalformedEnvelopeError,
    NSMError,
    NSMErrorCode,
)
from nitrokms.enclave.kms_errors import error_from_response
from nitrokms.enclave.kms_wire import HTTPResponseError, ResponseReader
from nitrokms.enclave.nsm import codec as nsm_codec
from nitrokms.parent.proxy.allowlist import parse_allowlist
from nitrokms.parent.proxy.errors import ConfigError
from nitrokms.proto import messages as m
from nitrokms.proto.addresses import parse_address
from nitrokms.proto.attestation import AttestationError, AttestationVerifier, parse_document
from nitrokms.proto.connection import BadRequest, ServerConnection
from nitrokms.proto.errors import AddressError, RemoteProtocolError
from nitrokms.proto.framing import FrameDecoder, encode_frame
from nitrokms.sim.kms.auth import Credential, ReceivedRequest, SigV4Verifier
from nitrokms.sim.kms.models import KeyStore
from nitrokms.sim.kms.recipient import RecipientReader
from nitrokms.sim.kms.responses import JSON_CONTENT_TYPE, KMSApplication, Response
from nitrokms.sim.nsm.pki import SimulatedPKI

from tests.fuzz.engine import Target

VECTORS: Final = Path(__file__).resolve().parents[1] / "vectors"
MODULE_ID: Final = "i-0f73a4b4cb74cc9f2-enc0192e4188fef781d"
KMS_CREDENTIAL: Final = Credential("AKIDFUZZ", "fuzz-secret-key")
KMS_URL: Final = "https://kms.us-east-1.amazonaws.com/"
KMS_OPERATIONS: Final = (
    "GenerateDataKey", "Decrypt", "Encrypt", "GenerateRandom", "DescribeKey", "CreateAlias",
    "GenerateDataKeyWithoutPlaintext", "GetKeyPolicy", "ListAliases", "PutKeyPolicy", "Nope",
)  # fmt: skip
ENVELOPE_KEY: Final = bytes(range(32))
AUTH_SEED_BODY: Final = b'{"NumberOfBytes":32}'


class _Context:
    """Lazily built, process-wide fixtures the targets share."""

    @functools.cached_property
    def pki(self) -> SimulatedPKI:
        return SimulatedPKI.ephemeral()

    @functools.cached_property
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC).replace(microsecond=0)

    @functools.cached_property
    def sim_document(self) -> bytes:
        return self.pki.sign_document(
            module_id=MODULE_ID, timestamp_ms=int(self.now.timestamp() * 1000),
            pcrs={i: bytes([i + 1]) * 48 for i in range(16)},
            public_key=b"pk", user_data=b"u", nonce=b"n",
        )  # fmt: skip

    @functools.cached_property
    def verifier(self) -> AttestationVerifier:
        return AttestationVerifier(self.pki.root_certificate)

    @functools.cached_property
    def cms_key(self) -> RSAPrivateKey:
        key = load_pem_private_key(
            (VECTORS / "cms" / "kms_cms_hello-world.key.pem").read_bytes(), None
        )
        assert isinstance(key, RSAPrivateKey)
        return key

    @functools.cached_property
    def auth_seed(self) -> bytes:
        """Authorization, X-Amz-Date and operation of one genuine request, one per line."""
        headers = dict(signed_request("GenerateRandom", AUTH_SEED_BODY).headers)
        return "\n".join(
            [headers["Authorization"], headers["X-Amz-Date"], "GenerateRandom"]
        ).encode()

    @functools.cached_property
    def kms_state(self) -> tempfile.TemporaryDirectory[str]:
        """The key store's directory, removed when the process exits."""
        return tempfile.TemporaryDirectory(prefix="nitrokms-fuzz-kms-")

    @functools.cached_property
    def kms(self) -> KMSApplication:
        state = Path(self.kms_state.name)
        verifier = SigV4Verifier([KMS_CREDENTIAL], region="us-east-1")
        app = KMSApplication(
            KeyStore(state, region="us-east-1", account="111122223333"),
            verifier,
            RecipientReader(self.pki.root_certificate_pem),
        )
        created = app.handle(signed_request("CreateKey", b"{}"))
        key_id = created.body["KeyMetadata"]["KeyId"]
        alias = json.dumps({"AliasName": "alias/fuzz", "TargetKeyId": key_id}).encode()
        assert app.handle(signed_request("CreateAlias", alias)).status == 200
        return app


CONTEXT = _Context()


def signed_request(operation: str, body: bytes) -> ReceivedRequest:
    """A request to the local KMS signed with SigV4 now, as boto3 would sign it."""
    request = AWSRequest(
        method="POST",
        url=KMS_URL,
        data=body,
        headers={"Content-Type": JSON_CONTENT_TYPE, "X-Amz-Target": f"TrentService.{operation}"},
    )
    signer = SigV4Auth(
        Credentials(KMS_CREDENTIAL.access_key_id, KMS_CREDENTIAL.secret_access_key),
        "kms",
        "us-east-1",
    )
    signer.add_auth(request)
    headers = [("Host", "kms.us-east-1.amazonaws.com"), *request.headers.items()]
    return ReceivedRequest("POST", "/", headers, body)


# --- proto -------------------------------------------------------------------------------------

_REQUEST_BODIES: Final[Sequence[m.Body]] = (
    m.HealthRequest(),
    m.DescribeRequest(),
    m.GenerateDataKeyRequest(key_id="alias/app", key_spec="AES_256", encryption_context={"a": "b"}),
    m.LoadDataKeyRequest(ciphertext_blob=b"\x02" * 184, key_id="alias/app"),
    m.ForgetKeyRequest(handle="kh-1"),
    m.SealRequest(plaintext=b"secret data", handle="kh-1", encryption_context={"a": "b"}),
    m.UnsealRequest(envelope=b"NKSE" + b"\x00" * 60),
    m.AttestRequest(nonce=b"\x01" * 32, user_data=b""),
    m.SetCredentialsRequest(
        access_key_id="AKIAFUZZFUZZFUZZ",
        secret_access_key="s",
        region="us-east-1",
        session_token="t",
    ),
)


def _request_seeds() -> list[bytes]:
    return [m.encode_request(m.Request(i + 1, body)) for i, body in enumerate(_REQUEST_BODIES)]


def _response_seeds() -> list[bytes]:
    return [
        m.encode_response(m.Reply(1, m.SealResult(envelope=b"\x01\x02", key_id="k", handle="h"))),
        m.encode_response(m.Reply(2, m.UnsealResult(plaintext=b"p", key_id="k"))),
        m.encode_response(m.Reply(3, m.AttestResult(document=b"\x84" + b"\x00" * 40))),
        m.encode_response(m.ErrorReply(4, "Unseal", "crypto.DecryptionFailed", "failed")),
        m.encode_response(m.ErrorReply(None, None, "protocol.FrameTooLarge", "too big")),
    ]


def _decode_request(data: bytes) -> None:
    request = m.decode_request(data)
    assert m.decode_request(m.encode_request(request)) == request


def _decode_response(data: bytes) -> None:
    m.decode_response(data)


def _frame_stream_seeds() -> list[bytes]:
    frames = [encode_frame(s) for s in _request_seeds()]
    return [b"".join(frames[:3]), b"".join(frames[3:]), frames[0], frames[-1]]


def _frames(data: bytes) -> None:
    """Chunk sizes come from the input's first byte, so the fuzzer explores fragmentation."""
    step = (data[0] % 17 + 1) if data else 1
    decoder = FrameDecoder(max_frame_bytes=64 * 1024)
    for start in range(0, len(data), step):
        decoder.feed(data[start : start + step])
        for frame in decoder.frames():
            assert frame
    decoder.feed_eof()


def _server_connection(data: bytes) -> None:
    connection = ServerConnection(max_frame_bytes=64 * 1024)
    events = connection.receive_data(data)
    for event in events:
        if isinstance(event, BadRequest):
            connection.send(event.error)
        else:
            assert isinstance(event, m.Request)
    connection.receive_eof()


# --- enclave-side decoders ---------------------------------------------------------------------


def _nsm_seeds() -> list[bytes]:
    requests: list[nsm_codec.Request] = [
        nsm_codec.DescribePCRRequest(index=3),
        nsm_codec.ExtendPCRRequest(index=16, data=b"x" * 48),
        nsm_codec.AttestationRequest(user_data=b"u", nonce=b"n", public_key=b"k"),
        nsm_codec.GetRandomRequest(),
        nsm_codec.DescribeNSMRequest(),
    ]
    responses: list[nsm_codec.Response] = [
        nsm_codec.AttestationResponse(document=b"\x84" + b"\x00" * 20),
        nsm_codec.GetRandomResponse(random=b"r" * 256),
        nsm_codec.PCRState(locked=False, data=b"\x00" * 48),
        nsm_codec.ErrorResponse(NSMErrorCode.InvalidIndex),
    ]
    return [nsm_codec.encode_request(r) for r in requests] + [
        nsm_codec.encode_response(r) for r in responses
    ]


def _nsm(data: bytes) -> None:
    with contextlib.suppress(NSMError):
        nsm_codec.decode_request(data)
    nsm_codec.decode_response(data)


def _attestation_seeds() -> list[bytes]:
    real = (VECTORS / "attestation" / "attestation_2024-11-14_debug.cose").read_bytes()
    return [CONTEXT.sim_document, real]


def _attestation(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        parse_document(data)
    CONTEXT.verifier.verify(data, at=CONTEXT.now)


def _cms_seeds() -> list[bytes]:
    names = ("kms_cms_hello-world.ber", "openssl_oaep256_issuer.der", "openssl_pkcs1v15.der")
    return [(VECTORS / "cms" / n).read_bytes() for n in names]


def _cms(data: bytes) -> None:
    json.dumps(inspect_enveloped_data(data).to_json())
    decrypt_enveloped_data(data, CONTEXT.cms_key)


def _envelope_seeds() -> list[bytes]:
    return [
        envelope.seal(
            ENVELOPE_KEY, b"sealed plaintext", key_id="arn:aws:kms:us-east-1:1:key/k",
            ciphertext_blob=b"\x01" * 184, encryption_context={"tenant": "a", "z": "b"},
        ),
        envelope.seal(ENVELOPE_KEY, b"", key_id="k", ciphertext_blob=b"b"),
    ]  # fmt: skip


def _envelope(data: bytes) -> None:
    parsed = envelope.parse(data)
    envelope.open_envelope(parsed, ENVELOPE_KEY)


# --- parent-side parsers -----------------------------------------------------------------------

_ADDRESS_SEEDS: Final = (
    "vsock://3:8000", "vsock://any:5000", "tcp://127.0.0.1:8000", "tcp://[::1]:443",
    "unix:///run/nitrokms/enclave.sock", "unix://@abstract", "tcp://kms.us-east-1.amazonaws.com:443",
)  # fmt: skip


def _address(data: bytes) -> None:
    parse_address(data.decode("utf-8", "replace"))


def _allowlist_seeds() -> list[bytes]:
    return [
        b"allowlist:\n- {address: kms.us-east-1.amazonaws.com, port: 443}\n"
        b"- {address: 127.0.0.1, port: 8443}\n",
        b"allowlist:\n  - address: '::1'\n    port: 443\n",
        b"allowlist: []\n",
    ]


def _allowlist(data: bytes) -> None:
    parse_allowlist(data, source="fuzz")


# --- the enclave's own KMS client reading KMS's responses ----------------------------------------


def _kms_response_seeds() -> list[bytes]:
    body = b'{"CiphertextForRecipient":"AAAA","CiphertextBlob":"AQID","KeyId":"k"}'
    return [
        b"\x05HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        b"\x01HTTP/1.1 400 Bad Request\r\nContent-Length: 58\r\n\r\n"
        b'{"__type":"com.amazonaws.kms#NotFoundException","message":"k"}',
        b"\x03HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"\x07HTTP/1.1 503 Service Unavailable\r\n\r\n<html>busy</html>",
    ]


def _kms_response(data: bytes) -> None:
    """The first byte picks the fragment size; the rest is what the connection delivered."""
    step = 1 + data[0] % 64 if data else 1
    reader, response = ResponseReader(), None
    for start in range(1, len(data), step):
        response = reader.feed(data[start : start + step])
        if response is not None:
            break
    if response is None:
        response = reader.eof()
    if response.status >= 300:
        assert isinstance(error_from_response(response), KMSError)
    else:
        kms_shapes.json_object(response)


# --- the local KMS -----------------------------------------------------------------------------


def _kms_body_seeds() -> list[bytes]:
    bodies: list[dict[str, Any]] = [
        {"KeyId": "alias/fuzz", "KeySpec": "AES_256", "EncryptionContext": {"a": "b"}},
        {"CiphertextBlob": "AAEC", "EncryptionContext": {"a": "b"}, "KeyId": "alias/fuzz"},
        {"KeyId": "alias/fuzz", "Plaintext": "aGVsbG8="},
        {"NumberOfBytes": 32, "Recipient": {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                                             "AttestationDocument": "hKBA"}},
        {"KeyId": "alias/fuzz"},
        {"AliasName": "alias/other", "TargetKeyId": "alias/fuzz"},
        {"KeyId": "alias/fuzz", "NumberOfBytes": 64, "GrantTokens": ["t"], "DryRun": True},
        {"KeyId": "alias/fuzz", "PolicyName": "default"},
        {"Limit": 5},
        {"KeyId": "alias/fuzz", "PolicyName": "default", "Policy": "{\"Version\":\"2012-10-17\"}"},
    ]  # fmt: skip
    return [bytes([i]) + json.dumps(b).encode() for i, b in enumerate(bodies)]


class KMSErrorReply(Exception):
    """The local KMS answered with a 4xx error reply: the typed outcome for a KMS target."""


def _kms_body(data: bytes) -> None:
    """A validly signed request with a fuzzed body: a 200 or a 4xx KMS error, never a 500."""
    if not data:
        return
    operation = KMS_OPERATIONS[data[0] % len(KMS_OPERATIONS)]
    _check_kms_reply(CONTEXT.kms.handle(signed_request(operation, data[1:])))


def _check_kms_reply(response: Response) -> None:
    assert response.status < 500, response.body
    if response.status != 200:
        assert isinstance(response.body.get("__type"), str)
        raise KMSErrorReply(response.body["__type"])


def _kms_auth_seeds() -> list[bytes]:
    return [CONTEXT.auth_seed]


def _kms_auth(data: bytes) -> None:
    """Fuzzed Authorization / X-Amz-Date / X-Amz-Target lines: a 4xx unless still authentic.

    Authentic means the genuine signature over the same date and operation is still in the
    header (the local KMS, like a lenient parser, lets a later duplicate parameter win).
    """
    lines = data.decode("utf-8", "replace").split("\n")[:3]
    lines += [""] * (3 - len(lines))
    headers = [
        ("Authorization", lines[0]),
        ("X-Amz-Date", lines[1]),
        ("X-Amz-Target", f"TrentService.{lines[2]}"),
        ("Content-Type", JSON_CONTENT_TYPE),
        ("Host", "kms.us-east-1.amazonaws.com"),
    ]
    response = CONTEXT.kms.handle(ReceivedRequest("POST", "/", headers, AUTH_SEED_BODY))
    if response.status == 200:
        authorization, date, operation = CONTEXT.auth_seed.decode().split("\n")
        signature = authorization.rpartition("Signature=")[2]
        assert (lines[1], lines[2]) == (date, operation), lines
        assert signature in lines[0], lines
    _check_kms_reply(response)


TARGETS: Final[tuple[Target, ...]] = (
    Target("frames", _frames, _frame_stream_seeds, (RemoteProtocolError,),
           "proto.framing.FrameDecoder, fed in input-chosen chunks"),
    Target("rpc-request", _decode_request, _request_seeds, (RemoteProtocolError,),
           "proto.messages.decode_request (+ re-encode round trip)"),
    Target("rpc-response", _decode_response, _response_seeds, (RemoteProtocolError,),
           "proto.messages.decode_response"),
    Target("rpc-server-stream", _server_connection, _frame_stream_seeds, (RemoteProtocolError,),
           "proto.connection.ServerConnection: the enclave's view of a parent's byte stream"),
    Target("nsm-codec", _nsm, _nsm_seeds, (NSMError,),
           "enclave.nsm.codec request and response decoders"),
    Target("attestation", _attestation, _attestation_seeds, (AttestationError,),
           "proto.attestation parse_document + AttestationVerifier.verify"),
    Target("cms", _cms, _cms_seeds, (CMSError, DecryptionError),
           "enclave.cms inspect + decrypt (CiphertextForRecipient)"),
    Target("envelope", _envelope, _envelope_seeds, (MalformedEnvelopeError,
                                                     DecryptionError),
           "enclave.envelope parse + open (Seal envelopes from the parent)"),
    Target("address", _address, lambda: [a.encode() for a in _ADDRESS_SEEDS], (AddressError,),
           "proto.addresses.parse_address"),
    Target("allowlist", _allowlist, _allowlist_seeds, (ConfigError,),
           "parent.proxy.allowlist.parse_allowlist (vsock-proxy YAML)"),
    Target("kms-response", _kms_response, _kms_response_seeds, (HTTPResponseError, KMSError),
           "enclave.kms_wire ResponseReader + error mapping: the lean KMS client's input"),
    Target("kms-json", _kms_body, _kms_body_seeds, (KMSErrorReply,),
           "local KMS: signed requests with fuzzed JSON bodies -> 200 or 4xx, never a 500"),
    Target("kms-sigv4", _kms_auth, _kms_auth_seeds, (KMSErrorReply,),
           "local KMS: fuzzed Authorization/X-Amz-Date/X-Amz-Target -> 4xx unless authentic"),
)  # fmt: skip


def by_name(names: Sequence[str]) -> list[Target]:
    """The named targets (all if `names` is empty). Raises KeyError for an unknown name."""
    table = {t.name: t for t in TARGETS}
    return [table[n] for n in names] if names else list(TARGETS)
