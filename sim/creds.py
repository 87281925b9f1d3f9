"""Expiring AWS credentials for the simulated world, the way boto3 gets them in production.

`python -m nitrokms.sim creds --pool FILE --ttl S` is a `credential_process` (AWS config file):
each run prints the next credential set of a pool as the JSON boto3 expects, with `Expiration`
now + S seconds, so boto3 hands the credential provider `RefreshableCredentials` that expire and
are refreshed by running the command again.

The pool is generated per world (`write_pool`), written both to this file and to the local KMS's
`--credentials` file, so every set the command hands out is one the KMS accepts. Sets are handed
out in turn (cycling), under a file lock. The local KMS does not know expiry: an expired set still
signs valid requests there. Expiry is enforced where it matters for these tests, in the enclave
(which refuses to use credentials past their `expiration_ms`) and in boto3 (which refreshes).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from nitrokms.sim.kms.auth import Credential, load_credentials

POOL_SIZE: Final = 64
_COUNTER_SUFFIX: Final = ".next"


def new_credential(principal_arn: str, *, session: bool) -> Credential:
    """Random credentials: an `ASIA...` id with a session token, or a long-term `AKIA...` id."""
    prefix = "ASIA" if session else "AKIA"
    return Credential(
        access_key_id=prefix + secrets.token_hex(8).upper(),
        secret_access_key=secrets.token_urlsafe(30),
        principal_arn=principal_arn,
        session_token=secrets.token_urlsafe(48) if session else None,
    )


def credentials_json(credentials: list[Credential]) -> str:
    """The local KMS's `--credentials` file format (secrets included: write it mode 0600)."""
    entries = []
    for c in credentials:
        entry = {
            "access_key_id": c.access_key_id,
            "secret_access_key": c.secret_access_key,
            "principal_arn": c.principal_arn,
        }
        if c.session_token is not None:
            entry["session_token"] = c.session_token
        entries.append(entry)
    return json.dumps(entries, indent=1)


def write_secret_file(path: Path, text: str) -> None:
    """Create `path` readable by its owner only, before any secret is written to it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_pool(path: Path, principal_arn: str, size: int = POOL_SIZE) -> list[Credential]:
    """A fresh pool of session credentials for `principal_arn`, saved at `path`."""
    pool = [new_credential(principal_arn, session=True) for _ in range(size)]
    write_secret_file(path, credentials_json(pool))
    path.with_name(path.name + _COUNTER_SUFFIX).unlink(missing_ok=True)
    return pool


def next_credential(pool_path: Path) -> Credential:
    """The pool's next set, in turn. Raises ValueError for an unusable pool file."""
    pool = load_credentials(pool_path)
    counter = pool_path.with_name(pool_path.name + _COUNTER_SUFFIX)
    with counter.open("a+", encoding="ascii") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        text = handle.read().strip()
        index = int(text) if text.isdigit() else 0
        handle.seek(0)
        handle.truncate()
        handle.write(str(index + 1))
    return pool[index % len(pool)]


def process_output(credential: Credential, ttl_s: float, now: datetime) -> dict[str, object]:
    """The `credential_process` JSON document (AWS CLI/SDK format, Version 1)."""
    expiration = (now + timedelta(seconds=ttl_s)).astimezone(UTC)
    output: dict[str, object] = {
        "Version": 1,
        "AccessKeyId": credential.access_key_id,
        "SecretAccessKey": credential.secret_access_key,
        "Expiration": expiration.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if credential.session_token is not None:
        output["SessionToken"] = credential.session_token
    return output


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 86400), got {text!r}")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nitrokms.sim creds",
        description="credential_process for the simulated world: print the next pooled "
        "credential set with an expiration TTL seconds from now",
    )
    parser.add_argument("--pool", type=Path, required=True, help="pool file (JSON list)")
    parser.add_argument("--ttl", type=_positive, required=True, metavar="S", help="lifetime")
    args = parser.parse_args(argv)
    try:
        credential = next_credential(args.pool)
    except (OSError, ValueError) as exc:
        print(f"creds: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(process_output(credential, args.ttl, datetime.now(UTC))))
    return 0
