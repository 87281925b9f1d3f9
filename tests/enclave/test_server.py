from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import cbor2
import pytest
from nitrokms.enclave.errors import EnclaveError
from nitrokms.enclave.lanes import Lane
from nitrokms.enclave.server import RPCServer, ServerLimits
from nitrokms.proto.addresses import UnixAddress
from nitrokms.proto.messages import (
    AttestRequest,
    AttestResult,
    Body,
    HealthRequest,
    HealthResult,
    Reply,
    Response,
)

from tests.enclave.rpc_client import Client, RawPeer, error_of, header


class Handler:
    """Attest's nonce scripts the behaviour: b"wait:NAME" (anywhere in it) blocks until
    released, b"big" answers with a 16 KiB document."""

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}
        self.calls = 0
        self.released = False

    def gate(self, name: str) -> threading.Event:
        self.entered.setdefault(name, threading.Event())
        gate = self.gates.setdefault(name, threading.Event())
        if self.released:
            gate.set()
        return gate

    def release_all(self) -> None:
        """Open every gate, including those of requests that have not started yet."""
        self.released = True
        for event in list(self.gates.values()):
            event.set()

    def __call__(self, body: Body) -> Body:
        self.calls += 1
        if isinstance(body, HealthRequest):
            return HealthResult(
                ready=True,
                credentials_present=False,
                key_pool_ready=1,
                key_pool_target=1,
                handles=0,
            )
        assert isinstance(body, AttestRequest)
        nonce = body.nonce or b""
        if b"wait:" in nonce:
            name = nonce.partition(b"wait:")[2].decode()
            gate = self.gate(name)
            self.entered[name].set()
            gate.wait(30)
        elif nonce == b"boom":
            raise RuntimeError("secret-material-in-message")
        elif nonce == b"typed":
            raise EnclaveError("no such key", code="kms.NotFoundException")
        elif nonce == b"badcode":
            raise EnclaveError("odd", code="not a code")
        elif nonce == b"big":
            return AttestResult(document=b"d" * 16000)
        return AttestResult(document=b"doc:" + nonce)


def _kms_by_nonce(body: Body) -> Lane:
    """Attest requests whose nonce starts with "kms" stand for KMS-bound work."""
    nonce = body.nonce if isinstance(body, AttestRequest) else None
    return "kms" if (nonce or b"").startswith(b"kms") else "local"


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, handler: Handler, on_shutdown: Callable[[], None] | None = None, **limits
) -> AsyncIterator[RPCServer]:
    server = RPCServer(
        handler, ServerLimits(**limits), lane_of=_kms_by_nonce, on_shutdown=on_shutdown
    )
    await server.start(UnixAddress(str(tmp_path / "rpc.sock")))
    try:
        yield server
    finally:
        handler.release_all()
        await server.shutdown()


async def _entered(handler: Handler, name: str) -> None:
    event = handler.entered.setdefault(name, threading.Event())
    await asyncio.to_thread(event.wait, 10)
    assert event.is_set()


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def test_many_concurrent_requests_are_answered_out_of_order(tmp_path):
    async def scenario() -> None:
        handler = Handler()
        async with serving(tmp_path, handler) as server:
            client = await Client.connect(server.address)
            slow = await client.send(AttestRequest(nonce=b"wait:slow"))
            await _entered(handler, "slow")
            fast_ids = [await client.send(AttestRequest(nonce=bytes([i]))) for i in range(20)]
            fast = [await client.receive() for _ in fast_ids]
            assert {r.id for r in fast} == set(fast_ids)
            for r in fast:
                assert isinstance(r, Reply)
                assert isinstance(r.result, AttestResult)
                assert r.result.document == b"doc:" + bytes([r.id - 2])
            handler.gate("slow").set()
            late = await client.receive()
            assert late.id == slow
            client.close()

    run(scenario())


def test_many_connections_at_once(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, Handler()) as server:
            clients = [await Client.connect(server.address) for _ in range(20)]
            replies = await asyncio.gather(
                *(c.call(AttestRequest(nonce=b"c%d" % i)) for i, c in enumerate(clients))
            )
            documents = [r.result.document for r in replies]  # type: ignore[union-attr]
            assert documents == [b"doc:c%d" % i for i in range(20)]
            for c in clients:
                c.close()

    run(scenario())


def test_bad_frame_closes_only_that_connection(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, Handler()) as server:
            good = await Client.connect(server.address)
            bad = await RawPeer.connect(server.address)
            junk = b"\xff\xfe not cbor"
            await bad.send_raw(header(len(junk)) + junk)
            error = error_of(await bad.next_response())
            assert error.code == "protocol.MalformedMessage"
            assert error.id is None
            assert await bad.next_response() is None
            reply = await good.call(HealthRequest())
            assert isinstance(reply, Reply)
            good.close()
            bad.close()

    run(scenario())


def test_bad_request_with_an_id_keeps_the_connection(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, Handler()) as server:
            peer = await Client.connect(server.address)
            body = cbor2.dumps({"v": 1, "id": 7, "op": "Attest", "body": {"nonsense": 1}})
            await peer.send_raw(header(len(body)) + body)
            error = error_of(await peer.next_response())
            assert (error.id, error.code) == (7, "protocol.InvalidField")
            assert isinstance(await peer.call(HealthRequest()), Reply)
            peer.close()

    run(scenario())


def test_oversize_length_header_is_refused_without_buffering(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, Handler(), max_frame_bytes=1024) as server:
            peer = await RawPeer.connect(server.address)
            await peer.send_raw(header(0xFFFFFFFF) + b"x" * 16)
            error = error_of(await peer.next_response())
            assert error.code == "protocol.FrameTooLarge"
            assert await peer.next_response() is None
            peer.close()

    run(scenario())


def test_slowloris_is_dropped_after_the_idle_timeout(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, Handler(), idle_timeout_s=0.5) as server:
            peer = await RawPeer.connect(server.address)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await peer.send_raw(header(100))
            closed = asyncio.ensure_future(peer.next_response())
            with contextlib.suppress(OSError):
                for _ in range(40):  # dribble a byte every 50 ms: never a whole frame
                    if closed.done():
                        break
                    await peer.send_raw(b"\x00")
                    await asyncio.wait({closed}, timeout=0.05)
            error = error_of(await closed)
            assert error.code == "enclave.Timeout"
            assert loop.time() - started < 1.9
            assert await peer.next_response() is None
            peer.close()

    run(scenario())


def test_truncated_frame_at_eof_gets_an_error(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, Handler()) as server:
            peer = await RawPeer.connect(server.address)
            await peer.send_raw(header(50) + b"abc")
            peer.writer.write_eof()
            assert error_of(await peer.next_response()).code == "protocol.TruncatedFrame"
            peer.close()

    run(scenario())


def test_client_half_close_still_gets_its_replies(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, Handler()) as server:
            client = await Client.connect(server.address)
            ids = [await client.send(AttestRequest(nonce=b"%d" % i)) for i in range(5)]
            client.writer.write_eof()
            got = [await client.receive() for _ in ids]
            assert sorted(r.id or 0 for r in got) == ids
            client.close()

    run(scenario())


def test_per_request_timeout(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, Handler(), request_timeout_s=0.2) as server:
            client = await Client.connect(server.address)
            error = error_of(await client.call(AttestRequest(nonce=b"wait:never")))
            assert error.code == "enclave.Timeout"
            assert "Attest" in error.message
            assert isinstance(await client.call(HealthRequest()), Reply)
            client.close()

    run(scenario())


def test_errors_become_typed_replies_without_leaking(tmp_path, caplog):
    async def scenario() -> None:
        async with serving(tmp_path, Handler()) as server:
            client = await Client.connect(server.address)
            typed = error_of(await client.call(AttestRequest(nonce=b"typed")))
            assert (typed.code, typed.message) == ("kms.NotFoundException", "no such key")
            boom = error_of(await client.call(AttestRequest(nonce=b"boom")))
            assert (boom.code, boom.message) == ("enclave.InternalError", "internal error")
            odd = error_of(await client.call(AttestRequest(nonce=b"badcode")))
            assert odd.code == "enclave.InternalError"
            client.close()

    with caplog.at_level(logging.ERROR, logger="enclave.server"):
        run(scenario())
    assert "RuntimeError" in caplog.text
    assert "secret-material-in-message" not in caplog.text


def test_too_many_in_flight_is_refused_per_request(tmp_path):
    async def scenario() -> None:
        handler = Handler()
        async with serving(tmp_path, handler, max_in_flight=2) as server:
            client = await Client.connect(server.address)
            first = await client.send(AttestRequest(nonce=b"wait:a"))
            second = await client.send(AttestRequest(nonce=b"wait:a"))
            await _entered(handler, "a")
            third = await client.send(AttestRequest(nonce=b"x"))
            refused = error_of(await client.receive())
            assert (refused.id, refused.code) == (third, "protocol.TooManyRequests")
            handler.gate("a").set()
            done = {(await client.receive()).id, (await client.receive()).id}
            assert done == {first, second}
            client.close()

    run(scenario())


def test_too_many_connections(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, Handler(), max_connections=1) as server:
            first = await Client.connect(server.address)
            assert isinstance(await first.call(HealthRequest()), Reply)
            second = await RawPeer.connect(server.address)
            error = error_of(await second.next_response())
            assert error.code == "enclave.TooManyConnections"
            assert await second.next_response() is None
            assert isinstance(await first.call(HealthRequest()), Reply)
            first.close()
            second.close()

    run(scenario())


def test_graceful_shutdown_finishes_in_flight_and_wipes(tmp_path):
    async def scenario() -> None:
        handler = Handler()
        wiped = threading.Event()
        async with serving(tmp_path, handler, on_shutdown=wiped.set) as server:
            client = await Client.connect(server.address)
            pending = await client.send(AttestRequest(nonce=b"wait:drain"))
            await _entered(handler, "drain")
            stopping = asyncio.ensure_future(server.shutdown())
            await asyncio.sleep(0)
            with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
                await RawPeer.connect(server.address)
            assert not wiped.is_set()
            handler.gate("drain").set()
            reply = await client.receive()
            assert reply.id == pending
            assert isinstance(reply, Reply)
            await stopping
            assert wiped.is_set()
            assert await client.at_eof()
            client.close()

    run(scenario())


def test_shutdown_deadline_answers_stragglers(tmp_path):
    async def scenario() -> None:
        handler = Handler()
        async with serving(tmp_path, handler, shutdown_grace_s=0.2) as server:
            client = await Client.connect(server.address)
            pending = await client.send(AttestRequest(nonce=b"wait:stuck"))
            await _entered(handler, "stuck")
            await server.shutdown()
            error = error_of(await client.receive())
            assert (error.id, error.code) == (pending, "enclave.ShuttingDown")
            client.close()

    run(scenario())


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_in_flight"):
        ServerLimits(max_in_flight=0)
    with pytest.raises(ValueError, match="request_timeout_s"):
        ServerLimits(request_timeout_s=0)


def test_a_client_at_the_in_flight_limit_is_never_refused(tmp_path):
    """A slot is freed before its reply is written, not when the request's task ends (a loop
    iteration or more later): a client keeping exactly max_in_flight requests outstanding, with
    its own event loop, must never see TooManyRequests."""
    from nitrokms.parent.rpc import AsyncEnclaveClient, RPCError

    limit, rounds = 8, 100

    async def client_side(path: str) -> list[str]:
        failures: list[str] = []
        async with AsyncEnclaveClient(f"unix://{path}", max_in_flight=limit) as client:

            async def worker() -> None:
                for _ in range(rounds):
                    try:
                        await client.health()
                    except RPCError as exc:
                        failures.append(exc.code)

            await asyncio.gather(*(worker() for _ in range(limit)))
        return failures

    async def scenario() -> None:
        async with serving(tmp_path, Handler(), max_in_flight=limit):
            path = str(tmp_path / "rpc.sock")
            failures = await asyncio.to_thread(asyncio.run, client_side(path))
            assert failures == []

    run(scenario())


# --- memory, fairness and the control listener (issue 15) ----------------------------------------

MiB = 1024 * 1024


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def _accepted(server: RPCServer, count: int) -> None:
    """Wait until the server has taken `count` connections in (accepting is asynchronous)."""
    await _until(lambda: server.connection_count >= count)


def _frame(envelope: dict[str, object]) -> bytes:
    body = cbor2.dumps(envelope)
    return header(len(body)) + body


def _attest_frame(request_id: int, nonce: bytes = b"n" * 1024) -> bytes:
    return _frame({"v": 1, "id": request_id, "op": "Attest", "body": {"nonce": nonce}})


def test_a_peer_that_reads_no_replies_is_not_read_either_and_is_closed(tmp_path):
    """Requests whose replies (1 KiB each) the peer never reads: the server stops reading the peer
    once its bytes pass the connection budget, so the peer's own sends block; after the send
    timeout the connection is closed and every byte it held is released."""

    async def scenario() -> None:
        async with serving(
            tmp_path,
            Handler(),
            send_timeout_s=1.5,
            max_frame_bytes=64 * 1024,
            connection_buffer_bytes=512 * 1024,
        ) as server:
            peer = await RawPeer.connect(server.address)
            await _accepted(server, 1)
            burst = b"".join(_attest_frame(i) for i in range(1, 65))
            loop = asyncio.get_running_loop()
            started, peak, blocked = loop.time(), 0, False
            while server.connection_count and loop.time() - started < 10:
                peer.writer.write(burst)
                try:
                    await asyncio.wait_for(peer.writer.drain(), 0.1)
                except TimeoutError:
                    blocked = True
                except ConnectionError:
                    break
                peak = max(peak, server.budget.held)
            assert blocked, "the server kept reading a peer that reads nothing"
            assert server.connection_count == 0, "the non-reading peer was never closed"
            # the budget, plus what one read admits and the replies of requests in flight
            assert peak <= 512 * 1024 + 64 * 1024 + 64 * 2048, peak
            assert server.budget.held == 0
            peer.close()

    run(scenario())


def test_a_closed_connection_does_not_keep_replies_its_peer_never_reads(tmp_path):
    """A peer asks for 1 MiB of replies, reads none, then gets itself closed (an invalid
    request): the unsent replies go with the connection once the send timeout passes, not when
    the peer reads them (never)."""

    async def scenario() -> None:
        async with serving(tmp_path, Handler(), send_timeout_s=0.5, max_bad_requests=1) as server:
            peer = await RawPeer.connect(server.address)
            bad = _frame({"v": 1, "id": 99, "op": "Attest", "body": {"nonsense": 1}})
            await peer.send_raw(b"".join(_attest_frame(i, b"big") for i in range(1, 65)))
            await _accepted(server, 1)
            await _until(lambda: server.budget.held >= 512 * 1024)  # replies piling up unread
            await peer.send_raw(bad)
            await _until(lambda: server.connection_count == 0)
            assert server.budget.held == 0
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while data := await peer.reader.read(65536):
                    received += len(data)
            assert received < 64 * 16000, "the unsent replies were kept for a peer gone silent"
            peer.close()

    run(scenario())


def test_a_peer_that_hangs_up_does_not_leave_its_backlog_running(tmp_path):
    """Five KMS-bound requests on one worker, then the client closes (not a half-close): once a
    reply finds it gone, the requests still queued are dropped instead of run for nobody."""

    async def scenario() -> None:
        handler = Handler()
        async with serving(tmp_path, handler, workers=1) as server:
            lane = server.scheduler.lanes["kms"]
            client = await Client.connect(server.address)
            for i in range(5):
                await client.send(AttestRequest(nonce=b"kms wait:b%d" % i))
            await _entered(handler, "b0")
            client.close()
            await client.writer.wait_closed()
            handler.gate("b0").set()  # its reply meets the closed connection; b1 starts meanwhile
            await _entered(handler, "b1")
            await _until(lambda: server.connection_count == 0)
            handler.release_all()
            await _until(lambda: lane.busy == 0)
            assert handler.calls == 2, f"{handler.calls} of 5 requests ran after the hang-up"

    run(scenario())


def test_replies_drain_to_a_slow_reader_without_closing_it(tmp_path):
    """1 MiB of replies (64 x 16 KiB, past the kernel's socket buffers) to a peer that takes one
    every 20 ms: over a second in all, far past the send timeout, but never without progress."""

    async def scenario() -> None:
        async with serving(
            tmp_path,
            Handler(),
            send_timeout_s=0.3,
            max_frame_bytes=64 * 1024,
            connection_buffer_bytes=256 * 1024,
        ) as server:
            client = await Client.connect(server.address)
            for _ in range(2):
                ids = [await client.send(AttestRequest(nonce=b"big")) for _ in range(64)]
                got: list[Response] = []
                while len(got) < len(ids):
                    got.append(await client.receive())
                    await asyncio.sleep(0.02)
                assert sorted(r.id or 0 for r in got) == ids
                assert all(isinstance(r, Reply) for r in got), [error_of(r) for r in got][:1]
            client.close()

    run(scenario())


def test_a_connection_sending_only_invalid_requests_is_closed_after_a_few(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, Handler(), max_bad_requests=3) as server:
            peer = await RawPeer.connect(server.address)
            bad = b"".join(
                _frame({"v": 1, "id": i, "op": "Attest", "body": {"nonsense": i}})
                for i in range(1, 11)
            )
            await peer.send_raw(bad)
            codes = []
            while (response := await peer.next_response()) is not None:
                codes.append(error_of(response).code)
            assert codes == ["protocol.InvalidField"] * 3 + ["enclave.TooManyBadRequests"]
            good = await Client.connect(server.address)
            assert isinstance(await good.call(HealthRequest()), Reply)
            good.close()
            peer.close()

    run(scenario())


def test_local_work_is_not_queued_behind_kms_bound_work(tmp_path):
    async def scenario() -> None:
        handler = Handler()
        async with serving(tmp_path, handler, workers=2, local_workers=1) as server:
            hogs = [await Client.connect(server.address) for _ in range(4)]
            for hog in hogs:
                for _ in range(8):
                    await hog.send(AttestRequest(nonce=b"kms wait:kms"))
            victim = await Client.connect(server.address)
            reply = await asyncio.wait_for(victim.call(AttestRequest(nonce=b"local")), 5)
            assert isinstance(reply, Reply)
            for peer in (*hogs, victim):
                peer.close()

    run(scenario())


def test_a_lane_is_shared_round_robin_within_each_connections_quota(tmp_path):
    """Alone, a connection may use every worker of a lane; once another connection waits, each
    freed worker goes to whoever is under its quota."""

    async def scenario() -> None:
        handler = Handler()
        async with serving(tmp_path, handler, workers=4, max_workers_per_connection=2) as server:
            lane = server.scheduler.lanes["kms"]
            greedy = await Client.connect(server.address)
            for i in range(10):
                await greedy.send(AttestRequest(nonce=b"kms wait:g%d" % i))
            for i in range(4):
                await _entered(handler, f"g{i}")
            assert (lane.busy, lane.waiting) == (4, 6)  # alone: the whole lane
            other = await Client.connect(server.address)
            await other.send(AttestRequest(nonce=b"kms wait:other"))
            await _accepted(server, 2)
            handler.gate("g0").set()
            await _entered(handler, "other")  # the freed worker went to the newcomer
            assert (lane.busy, lane.waiting) == (4, 6)
            handler.gate("g1").set()
            await _entered(handler, "g4")  # nobody else waits: greedy borrows again
            handler.release_all()
            got = [await greedy.receive() for _ in range(10)]
            assert all(isinstance(r, Reply) for r in got)
            assert isinstance(await other.receive(), Reply)
            greedy.close()
            other.close()

    run(scenario())


def test_a_request_that_waited_past_its_deadline_never_runs(tmp_path):
    async def scenario() -> None:
        handler = Handler()
        async with serving(tmp_path, handler, workers=1, request_timeout_s=0.3) as server:
            client = await Client.connect(server.address)
            await client.send(AttestRequest(nonce=b"kms wait:first"))
            await _entered(handler, "first")
            calls = handler.calls
            queued = await client.send(AttestRequest(nonce=b"kms second"))
            first, second = await client.receive(), await client.receive()
            assert {error_of(first).code, error_of(second).code} == {"enclave.Timeout"}
            handler.gate("first").set()
            # The lane's one worker is free again; a new request runs after anything still
            # queued, so once it is answered an expired job that was wrongly kept has run too.
            assert isinstance(await client.call(AttestRequest(nonce=b"kms third")), Reply)
            assert handler.calls == calls + 1, "the expired request ran anyway"
            assert queued in (first.id, second.id)
            client.close()

    run(scenario())


def test_the_control_listener_serves_the_provider_while_the_service_is_full(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, Handler(), max_connections=2) as server:
            control = await server.start_control(UnixAddress(str(tmp_path / "control.sock")))
            holders = [await RawPeer.connect(server.address) for _ in range(2)]
            for holder in holders:
                await holder.send_raw(b"\x00")  # slow: never a whole frame
            refused = await RawPeer.connect(server.address)
            assert error_of(await refused.next_response()).code == "enclave.TooManyConnections"
            provider = await Client.connect(control)
            assert isinstance(await provider.call(HealthRequest()), Reply)
            other = error_of(await provider.call(AttestRequest(nonce=b"x")))
            assert other.code == "enclave.OperationNotAllowed"
            for peer in (*holders, refused, provider):
                peer.close()

    run(scenario())
