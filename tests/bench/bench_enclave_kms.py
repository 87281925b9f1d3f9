"""Attested GenerateDataKey against the local KMS.

Run: `.venv/bin/python -m tests.bench.bench_enclave_kms [--n N]`.


For each concurrency (1 and 16) it runs the same boto3 client setup twice: a plain GenerateDataKey
(the baseline, no Recipient) and the attested one through `EnclaveKMS` (pooled key, fresh document
from the simulated NSM, CMS decrypt). Each call's "KMS span" is the time between botocore's
`before-send` and `before-parse` events (network plus the server); overhead is the rest of the
call. The enclave's own cost is the attested overhead minus the baseline overhead (botocore's own
serialisation and signing are in both). Target: <= 2 ms median with a warm pool and reused
connections. The local KMS runs as its own process (`python -m tests.harness kms serve`) so its
work does not compete with the client for the GIL. Component timings (document, CMS decrypt,
pool acquire) are printed too; the document here is signed by the simulator in-process (ES384),
where real hardware does it in the NSM.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from enclave.cms import decrypt_enveloped_data
from enclave.keypool import RecipientKeyPool
from enclave.kms import EnclaveKMS
from enclave.nsm.backend import TransportBackend
from enclave.nsm.client import NSMClient
from tests.enclave_kms.conftest import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    attested_policy,
)
from tests.harness.kms.cms_encoder import encrypt_for_recipient
from tests.harness.nsm.pki import SimulatedPKI
from tests.harness.nsm.simulator import NSMSimulator, boot_pcrs, new_module_id

_spans = threading.local()


@contextmanager
def _kms_process(state: Path, root: Path) -> Iterator[str]:
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY_ID)
    env["AWS_SECRET_ACCESS_KEY"] = SECRET_ACCESS_KEY
    command = [sys.executable, "-m", "tests.harness", "kms", "serve", "--state", str(state),
               "--attestation-root", str(root), "--region", REGION]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("https://"):
            raise SystemExit(f"local KMS did not start: {url!r}")
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _mark_send(**_: Any) -> None:
    _spans.sent = time.perf_counter()


def _mark_parse(**_: Any) -> None:
    _spans.received = time.perf_counter()


def _instrument(client: Any) -> Any:
    client.meta.events.register("before-send.kms.GenerateDataKey", _mark_send)
    client.meta.events.register("before-parse.kms.GenerateDataKey", _mark_parse)
    return client


def _timed(call: Callable[[], object]) -> tuple[float, float]:
    start = time.perf_counter()
    call()
    total = time.perf_counter() - start
    return total, _spans.received - _spans.sent


def _run(call: Callable[[], object], n: int, concurrency: int) -> list[tuple[float, float]]:
    for _ in range(min(10, n)):
        call()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        samples = list(pool.map(lambda _: _timed(call), range(n)))
    print(f"  throughput {n / (time.perf_counter() - start):7.1f} calls/s", end="")
    return samples


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _row(name: str, samples: list[tuple[float, float]]) -> float:
    totals = [t * 1000 for t, _ in samples]
    overheads = [(t - s) * 1000 for t, s in samples]
    print(
        f"  {name:<9} total median {statistics.median(totals):6.2f} ms"
        f"  p99 {_pct(totals, 0.99):6.2f} ms"
        f" | overhead median {statistics.median(overheads):6.2f} ms"
        f"  p99 {_pct(overheads, 0.99):6.2f} ms"
    )
    return statistics.median(overheads)


def _micro(name: str, fn: Callable[[], object], n: int = 200) -> None:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    print(f"  {name:<34} median {statistics.median(samples):6.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200, help="calls per configuration")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        pki = SimulatedPKI.load_or_create(base / "nsm", region=REGION)
        simulator = NSMSimulator(
            pki, module_id=new_module_id("i-0123456789abcdef0"),
            pcrs=boot_pcrs(instance_id="i-0123456789abcdef0"),
        )  # fmt: skip
        nsm = NSMClient(TransportBackend(simulator))
        root = base / "root.pem"
        root.write_bytes(pki.root_certificate_pem)
        ca_path = base / "kms" / "ca.pem"
        with (
            _kms_process(base / "kms", root) as url,
            RecipientKeyPool(size=2, max_uses=100_000) as pool,
        ):
            pool.wait_ready(60)
            kms = EnclaveKMS(REGION, endpoint_url=url, ca_bundle=str(ca_path),
                             attestor=nsm.get_attestation_doc, pool=pool)  # fmt: skip
            kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
            client = _instrument(kms.client())
            plain = _instrument(
                kms._session.create_client(  # the same session and config, no hooks
                    "kms", region_name=REGION, endpoint_url=url, verify=str(ca_path),
                    aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
                    config=kms._config,
                )
            )  # fmt: skip
            open_key = plain.create_key()["KeyMetadata"]["Arn"]
            attested_key = client.create_key(Policy=attested_policy(simulator.pcr(0).hex()))[
                "KeyMetadata"
            ]["Arn"]
            print(f"attested GenerateDataKey, local KMS, n={args.n} per row")
            for concurrency in (1, 16):
                print(f"concurrency {concurrency}:")
                base_overhead = _row(
                    "plain",
                    _run(lambda: plain.generate_data_key(KeyId=open_key, KeySpec="AES_256"),
                         args.n, concurrency),
                )  # fmt: skip
                attested_overhead = _row(
                    "attested",
                    _run(lambda: kms.generate_data_key(attested_key), args.n, concurrency),
                )
                print(
                    f"  enclave overhead (attested - plain, median): "
                    f"{attested_overhead - base_overhead:.2f} ms (target <= 2 ms)"
                )
            print("components (single thread):")
            key = pool.acquire()
            blob = encrypt_for_recipient(b"k" * 32, key.spki_der)
            _micro("pool.acquire (warm)", pool.acquire, 1000)
            _micro("attestation document (simulated NSM)",
                   lambda: nsm.get_attestation_doc(public_key=key.spki_der))  # fmt: skip
            _micro("CMS decrypt (RSA-2048 OAEP + AES)",
                   lambda: decrypt_enveloped_data(blob, {key.ski: key.private_key}))  # fmt: skip


if __name__ == "__main__":
    main()
