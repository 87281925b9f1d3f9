"""The NSM codec, the production client and the simulated NSM against bytes from AWS's nsm-api.

The vectors in tests/vectors/nsm were serialised by nsm-api's own types through serde_cbor (see
their README), never by our encoder, so the codec the client and the simulator share is checked
against the real thing: every request and response variant must encode to those bytes and decode
from them, the client must send them and understand the replies, and the simulator, fed the
real requests, must answer with the real replies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nitrokms.enclave.nsm import NSMClient, NSMError, NSMErrorCode, TransportBackend, codec
from nitrokms.proto.attestation import parse_document
from nitrokms.sim.nsm.pki import SimulatedPKI
from nitrokms.sim.nsm.simulator import NSMSimulator, boot_pcrs

from tests.nsm.conftest import INSTANCE_ID, MODULE_ID

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "nsm"
DOCUMENT = (
    Path(__file__).resolve().parents[1] / "vectors" / "attestation"
) / "attestation_2024-11-14_debug.cose"
ZERO = bytes(48)
PCR4 = hashlib.sha384(ZERO + INSTANCE_ID.encode()).digest()
EXT = hashlib.sha384(ZERO + b"abc").digest()
PUBLIC_KEY = bytes(i % 256 for i in range(300))


def golden(name: str) -> bytes:
    return (VECTORS / f"{name}.cbor").read_bytes()


REQUESTS: dict[str, codec.Request] = {
    "request-DescribePCR-16": codec.DescribePCRRequest(16),
    "request-DescribePCR-4": codec.DescribePCRRequest(4),
    "request-DescribePCR-300": codec.DescribePCRRequest(300),
    "request-ExtendPCR-16-abc": codec.ExtendPCRRequest(16, b"abc"),
    "request-ExtendPCR-16-x": codec.ExtendPCRRequest(16, b"x"),
    "request-LockPCR-16": codec.LockPCRRequest(16),
    "request-LockPCRs-32": codec.LockPCRsRequest(32),
    "request-LockPCRs-33": codec.LockPCRsRequest(33),
    "request-DescribeNSM": codec.DescribeNSMRequest(),
    "request-GetRandom": codec.GetRandomRequest(),
    "request-Attestation-none": codec.AttestationRequest(None, None, None),
    "request-Attestation-nonce": codec.AttestationRequest(None, b"nonce-0001", None),
    "request-Attestation-all": codec.AttestationRequest(b"user data", b"", PUBLIC_KEY),
}

RESPONSES: dict[str, codec.Response] = {
    "response-DescribeNSM": codec.NSMDescription(
        1, 0, 0, MODULE_ID, 32, tuple(range(16)), "SHA384"
    ),
    "response-DescribeNSM-edges": codec.NSMDescription(65535, 256, 24, "", 32, (), "SHA512"),
    "response-DescribePCR-16": codec.PCRState(False, ZERO),
    "response-DescribePCR-4": codec.PCRState(True, PCR4),
    "response-DescribePCR-empty": codec.PCRState(False, b""),
    "response-ExtendPCR-16-abc": codec.ExtendPCRResponse(EXT),
    "response-LockPCR": codec.LockPCRResponse(),
    "response-LockPCRs": codec.LockPCRsResponse(),
    "response-GetRandom": codec.GetRandomResponse(b"\x5a" * 256),
    "response-Attestation": codec.AttestationResponse(DOCUMENT.read_bytes()),
    **{f"response-Error-{c.name}": codec.ErrorResponse(c) for c in NSMErrorCode},
}


def test_every_vector_file_is_checked_and_every_variant_has_one() -> None:
    assert {p.stem for p in VECTORS.glob("*.cbor")} == set(REQUESTS) | set(RESPONSES)
    request_types = {type(r) for r in REQUESTS.values()}
    response_types = {type(r) for r in RESPONSES.values()}
    assert request_types == set(codec.Request.__args__)
    assert response_types == set(codec.Response.__args__)


@pytest.mark.parametrize(("name", "message"), REQUESTS.items(), ids=list(REQUESTS))
def test_requests_encode_and_decode_as_nsm_api(name: str, message: codec.Request) -> None:
    assert codec.encode_request(message) == golden(name)
    assert codec.decode_request(golden(name)) == message


@pytest.mark.parametrize(("name", "response"), RESPONSES.items(), ids=list(RESPONSES))
def test_responses_encode_and_decode_as_nsm_api(name: str, response: codec.Response) -> None:
    assert codec.encode_response(response) == golden(name)
    assert codec.decode_response(golden(name)) == response


def test_the_golden_attestation_reply_carries_the_real_document() -> None:
    reply = codec.decode_response(golden("response-Attestation"))
    assert isinstance(reply, codec.AttestationResponse)
    assert parse_document(reply.document).module_id == "i-0f73a4b4cb74cc9f2-enc0192e4188fef781d"


class Replay:
    """An NSMTransport that expects one exact request and answers one reply (both vectors)."""

    def __init__(self, request: str, reply: str) -> None:
        self.expected, self.reply = golden(request), golden(reply)
        self.sent: list[bytes] = []

    def exchange(self, request: bytes) -> bytes:
        self.sent.append(request)
        return self.reply


CLIENT_CALLS: list[tuple[Callable[[NSMClient], Any], str, str, Any]] = [
    (NSMClient.describe_nsm, "request-DescribeNSM", "response-DescribeNSM",
     RESPONSES["response-DescribeNSM"]),
    (lambda c: c.describe_pcr(4), "request-DescribePCR-4", "response-DescribePCR-4",
     codec.PCRState(True, PCR4)),
    (lambda c: c.extend_pcr(16, b"abc"), "request-ExtendPCR-16-abc", "response-ExtendPCR-16-abc",
     EXT),
    (lambda c: c.lock_pcr(16), "request-LockPCR-16", "response-LockPCR", None),
    (lambda c: c.lock_pcrs(32), "request-LockPCRs-32", "response-LockPCRs", None),
    (NSMClient.get_random, "request-GetRandom", "response-GetRandom", b"\x5a" * 256),
    (lambda c: c.get_attestation_doc(nonce=b"nonce-0001"), "request-Attestation-nonce",
     "response-Attestation", DOCUMENT.read_bytes()),
    (lambda c: c.get_attestation_doc(b"user data", b"", PUBLIC_KEY), "request-Attestation-all",
     "response-Attestation", DOCUMENT.read_bytes()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "sent", "reply", "result"), CLIENT_CALLS, ids=[c[1] for c in CLIENT_CALLS]
)
def test_the_client_sends_nsm_api_requests_and_reads_its_replies(
    call: Callable[[NSMClient], Any], sent: str, reply: str, result: Any
) -> None:
    transport = Replay(sent, reply)
    assert call(NSMClient(TransportBackend(transport))) == result
    assert transport.sent == [transport.expected]


def test_the_client_turns_a_real_error_reply_into_nsm_error() -> None:
    transport = Replay("request-LockPCR-16", "response-Error-ReadOnlyIndex")
    client = NSMClient(TransportBackend(transport))
    with pytest.raises(NSMError) as info:
        client.lock_pcr(16)
    assert info.value.code == "nsm.ReadOnlyIndex"
    assert transport.sent == [transport.expected]


# A fresh simulated NSM, fed nsm-api's requests in this order, must answer nsm-api's replies.
SESSION = [
    ("request-DescribeNSM", "response-DescribeNSM"),
    ("request-DescribePCR-16", "response-DescribePCR-16"),
    ("request-DescribePCR-4", "response-DescribePCR-4"),
    ("request-DescribePCR-300", "response-Error-InvalidIndex"),
    ("request-ExtendPCR-16-abc", "response-ExtendPCR-16-abc"),
    ("request-LockPCR-16", "response-LockPCR"),
    ("request-ExtendPCR-16-x", "response-Error-ReadOnlyIndex"),
    ("request-LockPCRs-32", "response-LockPCRs"),
    ("request-LockPCRs-33", "response-Error-InvalidIndex"),
    ("request-GetRandom", "response-GetRandom"),
]


def test_the_simulator_answers_nsm_api_requests_with_nsm_api_replies(pki: SimulatedPKI) -> None:
    simulator = NSMSimulator(
        pki,
        module_id=MODULE_ID,
        pcrs=boot_pcrs(instance_id=INSTANCE_ID),
        clock_ms=lambda: 1_700_000_000_123,
        random_bytes=lambda n: b"\x5a" * n,
    )
    for request, reply in SESSION:
        assert simulator.exchange(golden(request)) == golden(reply), request
    assert simulator.exchange(b"\xff") == golden("response-Error-InvalidArgument")


@pytest.mark.parametrize(
    "name", ["request-Attestation-none", "request-Attestation-nonce", "request-Attestation-all"]
)
def test_the_simulator_attests_from_nsm_api_requests(simulator: NSMSimulator, name: str) -> None:
    reply = codec.decode_response(simulator.exchange(golden(name)))
    assert isinstance(reply, codec.AttestationResponse)
    document = parse_document(reply.document)
    sent = REQUESTS[name]
    assert isinstance(sent, codec.AttestationRequest)
    assert (document.user_data, document.nonce, document.public_key) == (
        sent.user_data,
        sent.nonce,
        sent.public_key,
    )
