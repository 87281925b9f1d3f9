"""The shared CBOR loader (`nitrokms.proto.cbor`): its cost on valid messages, and what refusing
an amplification input costs.

Run `.venv/bin/python -m tests.bench.bench_cbor`. Valid messages: `loads` (the header walk, then
cbor2) against bare `cbor2.loads` of the same bytes, the two timed alternately in the same loop.
Amplification: CPU time and peak traced memory for the production decoder to refuse each hostile
input, against bare `cbor2.loads` of the same bytes (what the loader before the header walk paid:
cbor2 built the whole item before any limit could look at it).
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import cbor2
from nitrokms.enclave.errors import EnclaveError
from nitrokms.enclave.nsm import codec
from nitrokms.proto import messages as m
from nitrokms.proto.attestation import parse_document
from nitrokms.proto.attestation.cose import CBOR_LIMITS as COSE_LIMITS
from nitrokms.proto.cbor import CBORLimits, loads
from nitrokms.proto.errors import ProtocolError

from tests.bench.common import Figure, aggregate, figure, summarize, table

ROUNDS = 3000
VECTOR = Path(__file__).resolve().parents[1] / "vectors" / "attestation"
FRAME_BYTES = 4 * 1024 * 1024 - 16


def _request(body: m.Body) -> bytes:
    return m.encode_request(m.Request(7, body))


def valid_messages() -> Iterator[tuple[str, bytes, CBORLimits]]:
    context = {f"k{i}": f"value-{i}" for i in range(4)}
    yield "RPC Health request", _request(m.HealthRequest()), m.CBOR_LIMITS
    yield (
        "RPC GenerateDataKey request, 4-pair context",
        _request(m.GenerateDataKeyRequest("alias/app", "AES_256", encryption_context=context)),
        m.CBOR_LIMITS,
    )
    yield (
        "RPC Seal request, 1 MiB",
        _request(m.SealRequest(b"\x07" * 2**20, handle="h1", encryption_context=context)),
        m.CBOR_LIMITS,
    )
    describe = m.DescribeResult(
        "i-0123456789abcdef0-enc0123456789abcdef", {i: bytes(48) for i in range(16)}, False,
        "0.1.0", "1.0.0", "SHA384", tuple(range(16)),
    )  # fmt: skip
    yield "RPC Describe result", m.encode_response(m.Reply(7, describe)), m.CBOR_LIMITS
    document = (VECTOR / "attestation_2024-11-14_debug.cose").read_bytes()
    yield "attestation document (real, COSE)", document, COSE_LIMITS
    payload = cbor2.loads(document)[2]
    yield "attestation payload (real)", payload, COSE_LIMITS
    yield (
        "NSM DescribeNSM response",
        codec.encode_response(
            codec.NSMDescription(1, 0, 0, "i-0-enc0", 32, tuple(range(16)), "SHA384")
        ),
        codec.CBOR_LIMITS,
    )


def hostile_inputs(size: int) -> Iterator[tuple[str, bytes, Callable[[bytes], object]]]:
    """(name, bytes, the production decoder that must refuse them)."""
    count = size - 6
    yield (
        f"RPC frame: array of {_many(count)} empty arrays",
        b"\x9a" + count.to_bytes(4, "big") + b"\x80" * count,
        m.decode_request,
    )
    yield (
        f"RPC frame: indefinite array of {_many(count)} empty maps",
        b"\x9f" + b"\xa0" * count + b"\xff",
        m.decode_request,
    )
    envelope = b"\xa4\x61v\x01\x62id\x01\x62op\x66Health\x64body\xa1\x61x\x9f"
    yield (
        f"RPC frame: Health envelope, body holding {_many(count)} empty arrays",
        envelope + b"\x80" * (size - len(envelope) - 1) + b"\xff",
        m.decode_request,
    )
    pairs = b"".join(b"\x1a" + i.to_bytes(4, "big") + b"\xf6" for i in range(count // 6))
    yield (
        f"RPC frame: map of {count // 6 // 1000}k integer keys",
        b"\xbf" + pairs + b"\xff",
        (m.decode_request),
    )
    yield (
        "16 KiB document of empty arrays",
        b"\x9f" + b"\x80" * (16 * 1024 - 2) + b"\xff",
        (parse_document),
    )
    yield (
        "12 KiB NSM response of empty maps",
        b"\x9f" + b"\xa0" * (12 * 1024 - 2) + b"\xff",
        (codec.decode_response),
    )


def _many(count: int) -> str:
    return f"{count / 2**20:.0f}M" if count >= 2**20 else f"{count / 1000:.0f}k"


def _alternating(
    a: Callable[[], object], b: Callable[[], object], rounds: int
) -> tuple[list[float], list[float]]:
    """Seconds per call of `a` and of `b`, called alternately so both see the same noise."""
    for _ in range(20):
        a(), b()
    first, second = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        a()
        middle = time.perf_counter()
        b()
        first.append(middle - start)
        second.append(time.perf_counter() - middle)
    return first, second


def _cost(call: Callable[[], object]) -> tuple[float, float]:
    """(CPU ms, peak traced MiB) of one `call()`: timed untraced, then traced for memory."""
    start = time.process_time()
    call()
    cpu_ms = (time.process_time() - start) * 1000
    tracemalloc.start()
    try:
        call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return cpu_ms, peak / 2**20


def _refused(decode: Callable[[bytes], object], data: bytes) -> Callable[[], None]:
    def call() -> None:
        try:
            decode(data)
        except (ProtocolError, EnclaveError):
            return
        raise AssertionError("a hostile input was accepted")

    return call


def _bare(data: bytes) -> Callable[[], None]:
    def call() -> None:
        with contextlib.suppress(cbor2.CBORError, ValueError):
            cbor2.loads(data)

    return call


def run(quick: bool = False) -> list[Figure]:
    """Decode cost per valid message, and refusal cost per hostile input, each beside cbor2."""
    rounds = 300 if quick else ROUNDS
    figures: list[Figure] = []
    for name, data, limits in valid_messages():
        ours, bare = _alternating(partial(loads, data, limits), partial(cbor2.loads, data), rounds)
        figures.append(
            figure("cbor", f"decode {name}", summarize(ours, 1e6), "µs", "bare cbor2.loads",
                   summarize(bare, 1e6).median)
        )  # fmt: skip
    for name, data, decode in hostile_inputs(2**16 if quick else FRAME_BYTES):
        cpu_ms, peak_mib = _cost(_refused(decode, data))
        base_ms, base_mib = _cost(_bare(data))
        figures.append(aggregate("cbor", f"refuse {name}: CPU", cpu_ms, "ms", 1,
                                 "bare cbor2.loads", base_ms))  # fmt: skip
        figures.append(aggregate("cbor", f"refuse {name}: peak memory", peak_mib, "MiB", 1,
                                 "bare cbor2.loads", base_mib))  # fmt: skip
    return figures


if __name__ == "__main__":
    print(table(run()))
