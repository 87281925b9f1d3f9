"""RPC client throughput over a unix socket against the scripted test server.

Run `.venv/bin/python -m tests.bench.bench_rpc`. The baseline is a bare request/response exchange
of the same frame bytes on raw asyncio streams (no protocol state, no futures), one at a time; the
client is measured one request at a time, with 64 requests in flight on one connection, and
through the blocking API from 8 threads. Overhead = client time per sequential call minus baseline.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from parent.rpc import AsyncEnclaveClient, EnclaveClient
from proto import messages as m
from proto.addresses import UnixAddress, open_connection, start_server
from proto.connection import ClientConnection, ServerConnection
from tests.rpc.fakes import FakeEnclave, ServerThread

ROUNDS = 2000
IN_FLIGHT = 64


async def _baseline_ms(address: UnixAddress) -> float:
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
    for _ in range(ROUNDS):
        writer.write(request)
        await reader.readexactly(len(reply))
    elapsed = time.perf_counter() - start
    writer.close()
    await done.wait()
    server.close()
    await server.wait_closed()
    return elapsed * 1000 / ROUNDS


async def _client_ms(address: UnixAddress, concurrency: int) -> float:
    async with AsyncEnclaveClient(address) as client:
        await client.health()
        start = time.perf_counter()
        for _ in range(ROUNDS // concurrency):
            await asyncio.gather(*(client.health() for _ in range(concurrency)))
        return (time.perf_counter() - start) * 1000 / ROUNDS


def _sync_ms(address: UnixAddress, threads: int) -> float:
    with EnclaveClient(address) as client, ThreadPoolExecutor(threads) as pool:
        client.health()
        start = time.perf_counter()
        list(pool.map(lambda _: client.health(), range(ROUNDS)))
        return (time.perf_counter() - start) * 1000 / ROUNDS


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="rpcb", dir="/tmp") as tmp:
        raw = UnixAddress(str(Path(tmp) / "raw.sock"))
        baseline = asyncio.run(_baseline_ms(raw))
        address = UnixAddress(str(Path(tmp) / "enclave.sock"))
        with ServerThread(address, FakeEnclave()):
            sequential = asyncio.run(_client_ms(address, 1))
            concurrent = asyncio.run(_client_ms(address, IN_FLIGHT))
            threaded = _sync_ms(address, 8)
    print(f"baseline raw frame round trip:          {baseline:.3f} ms/op")
    print(f"async client, 1 in flight:              {sequential:.3f} ms/op")
    print(f"async client, {IN_FLIGHT} in flight:             {concurrent:.3f} ms/op")
    print(f"sync client, 8 threads:                 {threaded:.3f} ms/op")
    print(f"client overhead per sequential call:    {sequential - baseline:.3f} ms")
    print(f"pipelining speed-up (64 vs 1):          {sequential / concurrent:.1f}x")


if __name__ == "__main__":
    main()
