"""Attested GenerateDataKey through the enclave service, against a same-run baseline.

    .venv/bin/python -m tests.bench.bench_enclave [--requests N]

Stack: one `World` (local KMS, parent relay, the enclave under the simulated NSM, isolated, with
credentials from the credential provider). Measured, at concurrency 1 and 16:
- enclave: RPC GenerateDataKey from a parent-side client (RPC + thread hop + attestation document
  + CONNECT proxy + relay + TLS request to KMS + CMS decrypt + keyring);
- baseline (time inside KMS as a client sees it): the same GenerateDataKey with a Recipient (a
  fresh pre-made attestation document per call) sent by boto3 straight to the local KMS over a
  reused TLS connection, with no CMS decryption; baseline and enclave alternate in rounds
  (B E E B ...), so both see the same moments of a shared machine;
- the RPC floor: Health round trips.
Each enclave figure is reported as a ratio to the baseline at the same concurrency; the overhead
(enclave minus baseline median) is printed too. The whole-World figures are in `bench_e2e`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from nitrokms.proto import messages as m
from nitrokms.proto.addresses import Address, parse_address
from nitrokms.proto.messages import Reply
from nitrokms.sim.world import World

from tests.bench.common import Figure, figure, summarize, table
from tests.enclave.rpc_client import Client

WARMUP = 20


ROUNDS = 8  # baseline and enclave alternate in rounds (B E E B ...): same moments, same load


async def _timed_concurrently(
    call: Callable[[], Awaitable[None]], requests: int, concurrency: int
) -> list[float]:
    samples: list[float] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    return samples


class _Direct:
    """boto3 + Recipient straight to the local KMS, a thread per concurrent caller."""

    def __init__(self, world: World, key_arn: str, documents: list[bytes], concurrency: int):
        import botocore.config

        config = botocore.config.Config(max_pool_connections=concurrency)
        self.client = world.kms_as_parent(config=config)
        self.key_arn, self.documents, self.concurrency = key_arn, documents, concurrency
        self.used = 0

    def once(self, index: int) -> float:
        recipient = {
            "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            "AttestationDocument": self.documents[index % len(self.documents)],
        }
        started = time.perf_counter()
        reply = self.client.generate_data_key(
            KeyId=self.key_arn, KeySpec="AES_256", Recipient=recipient
        )
        assert reply["CiphertextForRecipient"]
        return time.perf_counter() - started

    def run(self, requests: int) -> list[float]:
        start, self.used = self.used, self.used + requests
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self.once, range(start, start + requests)))


def _documents(nsm_state: Path, count: int) -> list[bytes]:
    """Fresh documents, as the enclave sends one per call (KMS cannot reuse a verification)."""
    from nitrokms.enclave.nsm import NSMClient, TransportBackend
    from nitrokms.sim.nsm.server import SimulatedNSM

    simulated = SimulatedNSM(nsm_state)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    nsm = NSMClient(TransportBackend(simulated.simulator))
    return [nsm.get_attestation_doc(public_key=spki) for _ in range(count)]


async def _runs(
    address: Address, key_arn: str, direct: dict[int, _Direct], requests: int
) -> dict[str, list[float]]:
    client = await Client.connect(address)

    async def generate() -> None:
        reply = await client.call(m.GenerateDataKeyRequest(key_id=key_arn, key_spec="AES_256"))
        assert isinstance(reply, Reply), reply

    async def health() -> None:
        assert isinstance(await client.call(m.HealthRequest()), Reply)

    for _ in range(WARMUP):
        await generate()
    for baseline in direct.values():
        await asyncio.to_thread(baseline.run, WARMUP)
    results: dict[str, list[float]] = {"health c=1": []}
    for concurrency in direct:
        results[f"enclave c={concurrency}"], results[f"baseline c={concurrency}"] = [], []
    chunk = max(16, requests // ROUNDS // 16 * 16)  # whole calls for 16 workers per round
    for index in range(ROUNDS):
        for concurrency, baseline in direct.items():
            order = ("baseline", "enclave") if index % 2 == 0 else ("enclave", "baseline")
            for side in order:
                if side == "enclave":
                    samples = await _timed_concurrently(generate, chunk, concurrency)
                else:
                    samples = await asyncio.to_thread(baseline.run, chunk)
                results[f"{side} c={concurrency}"] += samples
        results["health c=1"] += await _timed_concurrently(health, chunk, 1)
    client.close()
    return results


def run(quick: bool = False, requests: int | None = None) -> list[Figure]:
    """Enclave service GenerateDataKey at c=1 and c=16 against boto3 straight to the local KMS,
    interleaved in rounds."""
    requests = requests or (32 if quick else 384)
    with (
        tempfile.TemporaryDirectory(prefix="bench-enclave-") as tmp,
        World(Path(tmp), enclave_args=("--log-level", "WARNING", "--pool-size", "4")) as world,
    ):
        address = parse_address(world.enclave_address)
        key_arn = world.kms_admin().create_key()["KeyMetadata"]["Arn"]
        documents = _documents(world.nsm_state, 2 * (requests + WARMUP))
        direct = {c: _Direct(world, key_arn, documents[c % 2 :: 2], c) for c in (1, 16)}
        results = asyncio.run(_runs(address, key_arn, direct, requests))
    stats = {name: summarize(samples, 1000) for name, samples in results.items()}
    name = "boto3 + Recipient straight to KMS"
    return [
        figure("enclave", "RPC GenerateDataKey, c=1", stats["enclave c=1"], "ms", name,
               stats["baseline c=1"].median),
        figure("enclave", "RPC GenerateDataKey, c=16", stats["enclave c=16"], "ms", name,
               stats["baseline c=16"].median),
        figure("enclave", "RPC Health (floor), c=1", stats["health c=1"], "ms", name,
               stats["baseline c=1"].median),
    ]  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_enclave")
    parser.add_argument("--requests", type=int, default=384, help="per measurement (mult. of 128)")
    figures = run(requests=parser.parse_args(argv).requests)
    print(table(figures))
    for f in figures[:2]:
        print(f"{f.name}: overhead over direct median {f.median - f.baseline:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
