"""Run inside `unshare -n` and `nsm run`: the enclave side of an attested fetch, production code
(pre-attested pool, the lean KMS path straight through the relay stream).

Prints `OK <bytes>` on success. Credentials come from the environment, standing in for the
parent's SetCredentials.
"""

from __future__ import annotations

import argparse
import os
import sys

from nitrokms.enclave.keypool import RecipientKeyPool
from nitrokms.enclave.kms import EnclaveKMS
from nitrokms.enclave.network import bring_up_loopback, interface_is_up
from nitrokms.enclave.nsm.client import NSMClient
from nitrokms.proto.addresses import parse_address
from nitrokms.proto.keys import KeyRequest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--relay", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args(argv)
    if interface_is_up("lo"):
        print("lo was already up: not an isolated namespace", file=sys.stderr)
        return 3
    assert bring_up_loopback() is True
    assert bring_up_loopback() is False
    host = f"kms.{args.region}.amazonaws.com"
    with (
        NSMClient.open() as nsm,
        RecipientKeyPool(size=1, attestor=nsm.get_attestation_doc) as pool,
    ):
        kms = EnclaveKMS(
            args.region,
            endpoint_url=f"https://{host}",
            ca_bundle=args.ca,
            relay=parse_address(args.relay),
            pool=pool,
        )
        kms.set_credentials(
            os.environ["PROBE_ACCESS_KEY_ID"], os.environ["PROBE_SECRET_ACCESS_KEY"]
        )
        made = kms.generate_data_key(KeyRequest(args.key_id))
        assert kms.decrypt(made.ciphertext_blob).plaintext == made.plaintext
        print(f"OK {len(made.plaintext)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
