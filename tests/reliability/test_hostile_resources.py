"""A hostile parent spending the enclave's resources (issue 15): memory for replies it never reads,
CPU for frames that decode big, worker threads for a KMS-bound backlog, connection slots.

Each test attacks the real enclave process of the simulated world and measures what another,
well-behaved client (or the credential provider) sees meanwhile. Figures are printed for
RELIABILITY.md. The bounded versions run in `make test`; the `slow` ones measure over longer runs.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import cbor2
import pytest
from nitrokms.parent.rpc import AsyncEnclaveClient, EnclaveClient
from nitrokms.parent.rpc.errors import RPCError
from nitrokms.proto import messages as m
from nitrokms.sim.kms.faults import remaining, write_plan
from nitrokms.sim.world import EnclaveProcess, World

from tests.reliability.hostile import (
    Flood,
    amplification_frame,
    open_raw,
    read_responses,
    request_frame,
)
from tests.reliability.support import CONTEXT, RSSSeries, sample_rss

MiB = 1024 * 1024
SEAL_BYTES = MiB
RSS_GROWTH_GOAL_KIB = 256 * 1024
RSS_SAFETY_STOP_KIB = 1536 * 1024  # today's enclave grows ~260 MiB/s; stop before the machine does
HEALTH_P99_GOAL_S = 0.100
LOCAL_SEAL_GOAL_S = 1.0
KMS_DELAY_S = 2.0
BACKLOG_CONNECTIONS = 4
SEND_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 1.0


def _seal_frames(handle: str) -> Callable[[int], bytes]:
    plaintext = b"\xa5" * SEAL_BYTES
    return lambda n: request_frame(n, m.SealRequest(plaintext=plaintext, handle=handle))


def _watch_rss(pid: int, flood: Flood, seconds: float) -> RSSSeries:
    """Run `flood` for `seconds` (or until the enclave's RSS passes the safety stop) while
    sampling the enclave's RSS; return the samples."""
    with sample_rss({"enclave": pid}) as rss:
        flood.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and flood.is_alive():
            series = rss["enclave"]
            if series.samples and series.peak - series.start > RSS_SAFETY_STOP_KIB:
                break
            flood.join(0.25)
        flood.stop.set()
        flood.join(10)
    return rss["enclave"]


# --- 1. replies nobody reads ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hoarded(world: World) -> EnclaveProcess:
    """An enclave with short send and request timeouts, so tests of them finish in seconds."""
    return world.spawn_enclave(
        "hoarded",
        extra_args=(
            "--send-timeout-s", str(SEND_TIMEOUT_S), "--request-timeout-s", str(REQUEST_TIMEOUT_S),
        ),
    )  # fmt: skip


def test_a_client_that_never_reads_its_replies_costs_bounded_memory_and_is_closed(
    world: World, key_id: str, hoarded: EnclaveProcess
) -> None:
    with EnclaveClient(hoarded.address) as client:
        handle = client.generate_data_key(key_id, encryption_context=CONTEXT).handle
    flood = Flood(str(hoarded.socket_path), _seal_frames(handle))
    rss = _watch_rss(hoarded.pid, flood, seconds=SEND_TIMEOUT_S + 4)
    growth = rss.peak - rss.start
    print(f"non-reading client, {flood.sent} x 1 MiB Seals sent: enclave RSS {rss}")
    assert growth <= RSS_GROWTH_GOAL_KIB, str(rss)
    assert flood.closed_after is not None, "the enclave never closed the non-reading connection"
    with EnclaveClient(hoarded.address, timeout_s=10) as client:
        sealed = client.seal(b"still serving", handle=handle)
        assert client.unseal(sealed.envelope, encryption_context=CONTEXT) == b"still serving"


@pytest.mark.slow
def test_a_client_that_never_reads_its_replies_for_15_s_costs_at_most_256_mib(
    world: World, held: m.GenerateDataKeyResult
) -> None:
    """The RELIABILITY.md figure: the world's enclave with its default limits."""
    flood = Flood(str(world.enclave.socket_path), _seal_frames(held.handle))
    rss = _watch_rss(world.enclave_pid, flood, seconds=15)
    print(
        f"non-reading client for 15 s, {flood.sent} x 1 MiB Seals sent, closed after "
        f"{flood.closed_after}: enclave RSS {rss} (+{(rss.peak - rss.start) / 1024:.0f} MiB)"
    )
    assert rss.peak - rss.start <= RSS_GROWTH_GOAL_KIB, str(rss)


# --- 2. frames that decode big, and frames that keep being invalid ------------------------------


def _health_latencies(address: str, seconds: float) -> list[float]:
    latencies: list[float] = []
    with EnclaveClient(address, timeout_s=30) as client:
        client.health()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            begun = time.monotonic()
            client.health()
            latencies.append(time.monotonic() - begun)
    return latencies


def _p(latencies: list[float], q: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _amplification_run(world: World, seconds: float) -> tuple[list[float], Flood]:
    frame = amplification_frame(1)
    flood = Flood(str(world.enclave.socket_path), lambda n: frame, reconnect=True)
    flood.start()
    try:
        latencies = _health_latencies(world.enclave_address, seconds)
    finally:
        flood.stop.set()
        flood.join(30)
    return latencies, flood


def test_health_stays_fast_while_another_client_streams_amplification_frames(
    world: World,
) -> None:
    latencies, flood = _amplification_run(world, seconds=4)
    print(
        f"amplification: {flood.sent} frames on {flood.connections} connections; Health "
        f"p50 {_p(latencies, 0.5) * 1000:.1f} ms p99 {_p(latencies, 0.99) * 1000:.1f} ms "
        f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} calls"
    )
    assert _p(latencies, 0.99) <= HEALTH_P99_GOAL_S


def test_a_connection_that_keeps_sending_invalid_frames_is_closed(world: World) -> None:
    """Well-formed envelopes with invalid bodies are answered one by one (the id is readable), but
    a connection that sends nothing else is closed after a few."""
    bad = b"".join(_invalid_body_frame(i) for i in range(1, 65))
    with open_raw(str(world.enclave.socket_path)) as sock:
        sock.sendall(bad)
        outcome = read_responses(sock, 64)
    codes = outcome.codes()
    assert outcome.closed, f"still open after {len(codes)} invalid frames"
    assert 1 <= len(codes) <= 16, codes
    assert codes[:-1] == ["protocol.InvalidField"] * (len(codes) - 1), codes
    assert codes[-1] == "enclave.TooManyBadRequests", codes
    with world.client() as client:
        assert client.health().region == world.region


def _invalid_body_frame(request_id: int) -> bytes:
    body = cbor2.dumps({"v": 1, "id": request_id, "op": "Seal", "body": {"plaintext": 7}})
    return struct.pack(">I", len(body)) + body


# --- 3. a KMS-bound backlog against local work; slow connections against the provider -----------


@contextmanager
def _kms_backlog(
    world: World, fault_plan: Path, key_id: str, per_connection: int
) -> Iterator[None]:
    """Four connections, each with `per_connection` GenerateDataKey calls in flight, on a KMS that
    answers each after KMS_DELAY_S; returns once the KMS holds some of them."""
    total = BACKLOG_CONNECTIONS * per_connection
    write_plan(fault_plan, [{"operation": "GenerateDataKey", "delay_s": KMS_DELAY_S}] * total)
    stop = threading.Event()
    loop_ready = threading.Event()
    state: dict[str, object] = {}

    async def attack() -> None:
        clients = [
            AsyncEnclaveClient(world.enclave_address, timeout_s=120, max_in_flight=per_connection)
            for _ in range(BACKLOG_CONNECTIONS)
        ]

        async def one(client: AsyncEnclaveClient) -> None:
            with suppress(RPCError):
                await client.generate_data_key(key_id)

        tasks = [asyncio.ensure_future(one(c)) for c in clients for _ in range(per_connection)]
        loop_ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        for client in clients:
            await client.aclose()

    def run() -> None:
        try:
            asyncio.run(attack())
        except BaseException as exc:  # surfaced below
            state["error"] = exc

    thread = threading.Thread(target=run, name="kms-backlog", daemon=True)
    thread.start()
    try:
        assert loop_ready.wait(30)
        deadline = time.monotonic() + 30
        while remaining(fault_plan) > total - 8:  # the KMS is holding at least 8 of them
            assert time.monotonic() < deadline, "the backlog never reached KMS"
            time.sleep(0.05)
        yield
    finally:
        stop.set()
        thread.join(60)
        write_plan(fault_plan, [])
    assert "error" not in state, state


def test_a_local_seal_is_not_starved_by_four_connections_of_kms_backlog(
    world: World, key_id: str, held: m.GenerateDataKeyResult, fault_plan: Path
) -> None:
    with (
        _kms_backlog(world, fault_plan, key_id, per_connection=64),
        EnclaveClient(world.enclave_address, timeout_s=10) as client,
    ):
        seal_s, seal_outcome = _timed(lambda: client.seal(b"local work", handle=held.handle))
        fetch_s, fetch_outcome = _timed(lambda: client.generate_data_key(key_id))
    print(
        f"KMS backlog (4 x 64 GenerateDataKey, KMS answers in {KMS_DELAY_S:g} s): local Seal "
        f"{seal_s * 1000:.0f} ms ({seal_outcome}); another connection's GenerateDataKey "
        f"{fetch_s:.1f} s ({fetch_outcome})"
    )
    assert seal_outcome == "ok"
    assert seal_s < LOCAL_SEAL_GOAL_S
    assert fetch_outcome == "ok"
    assert fetch_s < 3 * KMS_DELAY_S


def _timed(call: Callable[[], object]) -> tuple[float, str]:
    """Seconds the call took, and "ok" or the error code it failed with."""
    begun = time.monotonic()
    try:
        call()
    except RPCError as exc:
        return time.monotonic() - begun, exc.code
    return time.monotonic() - begun, "ok"


def test_256_slow_connections_do_not_lock_the_credential_provider_out(world: World) -> None:
    path = str(world.enclave.socket_path)
    socks: list[socket.socket] = []
    try:
        for _ in range(256):
            try:
                sock = open_raw(path, timeout_s=5)
            except OSError:
                break
            socks.append(sock)
            sock.sendall(b"\x00\x00")  # half a length header, then nothing
        with (
            pytest.raises(RPCError) as refused,
            EnclaveClient(world.enclave_address, connect_timeout_s=2) as client,
        ):
            client.health()
        assert refused.value.code in ("enclave.TooManyConnections", "client.ConnectionLost")
        begun = time.monotonic()
        world.push_credentials_once(world.enclave)
        print(
            f"{len(socks)} slow connections held: the credential provider pushed in "
            f"{time.monotonic() - begun:.1f} s"
        )
    finally:
        for sock in socks:
            sock.close()


def test_a_request_past_its_deadline_makes_no_further_kms_attempt(
    world: World, held: m.GenerateDataKeyResult, hoarded: EnclaveProcess, fault_plan: Path
) -> None:
    """KMS fails each attempt after 2 s; the request times out after 1 s. Without a deadline the
    worker thread would go on through all four attempts (8 s and more) for a caller long gone.
    (LoadDataKey, so KMS's Decrypt: nothing else in the suite calls it meanwhile.)"""
    fault = {"operation": "Decrypt", "delay_s": KMS_DELAY_S, "status": 500}
    write_plan(fault_plan, [fault] * 4)
    mark = hoarded.process.mark()
    begun = time.monotonic()
    with EnclaveClient(hoarded.address, timeout_s=30) as client:
        load = lambda: client.load_data_key(held.ciphertext_blob, encryption_context=CONTEXT)  # noqa: E731
        waited_s, outcome = _timed(load)
    hoarded.process.wait_for_line("stopped past its deadline", after=mark, timeout_s=30)
    stopped_s = time.monotonic() - begun
    used = 4 - remaining(fault_plan)
    print(
        f"deadline: caller answered {outcome} after {waited_s:.1f} s; the worker stopped after "
        f"{stopped_s:.1f} s having made {used} KMS attempt(s)"
    )
    assert outcome == "enclave.Timeout"
    assert used == 1
