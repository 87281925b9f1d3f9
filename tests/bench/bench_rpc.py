"""RPC client throughput over a unix socket against the scripted test server.

Run `.venv/bin/python -m tests.bench.bench_rpc`. The baseline is a bare request/response exchange
of the same frame bytes on raw asyncio streams (no protocol state, no futures), one at a time; the
client is measured one request at a time, with 64 requests in flight on one connection, and
through the blocking API from 8 threads; each is reported as a ratio to the baseline.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nitrokms.parent.rpc import AsyncEnclaveClient, EnclaveClient
from nitrokms.proto import messages as m
from nitrokms.proto.addresses import UnixAddress
from nitrokms.proto.connection import ClientConnection, ServerConnection
from nitrokms.transport.sockets import open_connection, start_server

from tests.bench.common import Figure, aggregate, table
from tests.rpc.fakes import FakeEnclave, ServerThread

ROUNDS = 2000
IN_FLIGHT = 64


async def _baseline_ms(address: UnixAddress, rounds: int) -> float:
    _, request = ClientConnection().send_request(m.HealthRequest())
    result = FakeEnclave().answer(m.HealthRequest())
    assert isinstance(result, m.Body)
    reply = ServerConnection().send_reply(1, result)

    done = asyncio.Event()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readexactly(len(request))
                writer.write(reply)
        except asyncio.IncompleteReadError:
            writer.close()
        finally:
            done.set()

    server = await start_server(echo, address)
    reader, writer = await open_connection(address)
    start = time.perf_counter()
    for _ in range(rounds):
        writer.write(request)
        await reader.readexactly(len(reply))
    elapsed = time.perf_counter() - start
    writer.close()
    await done.wait()
    server.close()
    await server.wait_closed()
    return elapsed * 1000 / rounds


async def _client_ms(address: UnixAddress, concurrency: int, rounds: int) -> float:
    async with AsyncEnclaveClient(address) as client:
        await client.health()
        start = time.perf_counter()
        for _ in range(rounds // concurrency):
            await asyncio.gather(*(client.health() for _ in range(concurrency)))
        return (time.perf_counter() - start) * 1000 / rounds


def _sync_ms(address: UnixAddress, threads: int, rounds: int) -> float:
    with EnclaveClient(address) as client, ThreadPoolExecutor(threads) as pool:
        client.health()
        start = time.perf_counter()
        list(pool.map(lambda _: client.health(), range(rounds)))
        return (time.perf_counter() - start) * 1000 / rounds


def run(quick: bool = False) -> list[Figure]:
    """Client cost per call (sequential, pipelined, threaded) against the raw frame round trip."""
    rounds = 400 if quick else ROUNDS
    with tempfile.TemporaryDirectory(prefix="rpcb", dir="/tmp") as tmp:
        raw = UnixAddress(str(Path(tmp) / "raw.sock"))
        baseline = asyncio.run(_baseline_ms(raw, rounds))
        address = UnixAddress(str(Path(tmp) / "enclave.sock"))
        with ServerThread(address, FakeEnclave()):
            sequential = asyncio.run(_client_ms(address, 1, rounds))
            concurrent = asyncio.run(_client_ms(address, IN_FLIGHT, rounds))
            threaded = _sync_ms(address, 8, rounds)
    name = "raw frame round trip"
    return [
        aggregate("rpc", "async client, 1 in flight", sequential, "ms/op", rounds, name, baseline),
        aggregate("rpc", f"async client, {IN_FLIGHT} in flight", concurrent, "ms/op", rounds,
                  name, baseline),
        aggregate("rpc", "sync client, 8 threads", threaded, "ms/op", rounds, name, baseline),
    ]  # fmt: skip


if __name__ == "__main__":
    print(table(run()))
