"""The baseline for the end-to-end benchmark: the kmstool-enclave-cli pattern, in Python.

What Python users of Nitro Enclaves do today is shell out to `kmstool-enclave-cli` once per key:
a fresh process that makes its own RSA key, asks the NSM for an attestation document carrying it,
opens a fresh TLS connection to KMS through the vsock proxy, calls GenerateDataKey with
`Recipient`, decrypts `CiphertextForRecipient` and exits. This module is that pattern built from
this project's own pieces (NSMClient on whatever answers at /dev/nsm, boto3 with the attested
hooks, the CMS reader, the same CONNECT-to-relay path the enclave service uses), so that only the
architecture differs from the enclave service:

    python -m tests.bench.kmstool_pattern fetch --key ARN --relay unix://... --endpoint H:P --ca PEM
        one call; prints a JSON line with the CiphertextBlob (base64) and the plaintext length.
    python -m tests.bench.kmstool_pattern drive --count N --concurrency C [fetch options]
        starts N `fetch` processes, C at a time, and prints one JSON line: each process's
        wall time from spawn to exit (seconds) and the total wall time.

Run both under `python -m nitrokms.sim nsm run` in the enclave's network namespace (bench_e2e
does). Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from argv; the
plaintext data key is never printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

FETCH_TIMEOUT_S = 120.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.kmstool_pattern")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("fetch", "drive"):
        command = sub.add_parser(name)
        command.add_argument("--key", required=True, help="KMS key id or ARN")
        command.add_argument("--relay", required=True, help="relay address (unix://...)")
        command.add_argument("--endpoint", required=True, help="KMS HOST:PORT (TLS name)")
        command.add_argument("--ca", required=True, help="CA bundle for the KMS certificate")
        command.add_argument("--region", default="us-east-1")
        if name == "drive":
            command.add_argument("--count", type=int, required=True)
            command.add_argument("--concurrency", type=int, required=True)
    return parser


def _fetch_args(args: argparse.Namespace) -> list[str]:
    return ["--key", args.key, "--relay", args.relay, "--endpoint", args.endpoint,
            "--ca", args.ca, "--region", args.region]  # fmt: skip


def fetch(args: argparse.Namespace) -> int:
    """One kmstool-style call. Exits non-zero with the error on stderr if anything fails."""
    import boto3
    from botocore.config import Config
    from nitrokms.enclave.attested_kms import attach_recipient
    from nitrokms.enclave.keypool import RecipientKeyPool
    from nitrokms.enclave.network import ConnectProxy, ThreadedConnectProxy
    from nitrokms.enclave.nsm import NSMClient
    from nitrokms.proto.addresses import parse_address

    host, _, port = args.endpoint.rpartition(":")
    pool = RecipientKeyPool(size=1)  # this process's own RSA key, made now
    proxy = ConnectProxy(host, relay=parse_address(args.relay), kms_port=int(port))
    with NSMClient.open() as nsm, ThreadedConnectProxy(proxy) as tunnel:
        client: Any = boto3.client(
            "kms",
            region_name=args.region,
            endpoint_url=f"https://{args.endpoint}",
            verify=args.ca,
            config=Config(proxies={"https": tunnel.proxy_url}, retries={"max_attempts": 1}),
        )
        attach_recipient(client, attestor=nsm.get_attestation_doc, pool=pool)
        reply = client.generate_data_key(KeyId=args.key, KeySpec="AES_256")
    pool.close()
    blob = base64.b64encode(reply["CiphertextBlob"]).decode()
    print(json.dumps({"ciphertext_blob": blob, "plaintext_bytes": len(reply["Plaintext"])}))
    return 0


def drive(args: argparse.Namespace) -> int:
    """Run `count` fetch processes, `concurrency` at a time; print their wall times as JSON."""
    command = [sys.executable, "-m", "tests.bench.kmstool_pattern", "fetch", *_fetch_args(args)]

    def one(_: int) -> float:
        started = time.perf_counter()
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S, check=False
        )
        elapsed = time.perf_counter() - started
        if done.returncode != 0 or '"plaintext_bytes": 32' not in done.stdout:
            raise RuntimeError(f"fetch failed ({done.returncode}): {done.stderr[-2000:]}")
        return elapsed

    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as workers:
        samples = list(workers.map(one, range(args.count)))
    print(json.dumps({"samples_s": samples, "wall_s": time.perf_counter() - started}))
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return fetch(args) if args.command == "fetch" else drive(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
