"""No secret in any log, error message, argv or client-visible output.

The world runs with known secrets (each credential's secret access key and session token, which
the test reads back from the world's 0600 files) and this test adds its own marker values: a
sealed plaintext and a set of rejected credentials. It then provokes the error paths that are
most likely to echo input, and scans every process log of the package's world (which, when the
whole suite runs, also holds the logs of every fault and hostile-parent test before it), the
command lines of the running processes, and everything the client saw.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from nitrokms.parent.rpc.errors import RPCError
from nitrokms.sim.world import World

from tests.reliability.support import CONTEXT, MARKER_PLAINTEXT, leaks, read_logs, world_secrets

MARKER_SECRET_KEY = "MARKERsecretKEY/do+not+log/4f1d2c3b5a697887"
MARKER_SESSION_TOKEN = "MARKERsessionTOKEN" + "Zx9" * 40


def _provoke(world: World, key_id: str) -> dict[str, str]:
    """Exercise success and error paths carrying the markers; return what the client saw."""
    seen: dict[str, str] = {}
    with world.client() as client:
        sealed = client.seal(MARKER_PLAINTEXT, key_id=key_id, encryption_context=CONTEXT)
        seen["seal result"] = repr(sealed)
        assert client.unseal(sealed.envelope, encryption_context=CONTEXT) == MARKER_PLAINTEXT
        attempts = {
            "unseal, wrong context": lambda: client.unseal(
                sealed.envelope, encryption_context={"tenant": "x"}
            ),
            "unseal, tampered": lambda: client.unseal(sealed.envelope[:-1] + b"\x00"),
            "expired credentials": lambda: client.set_credentials(
                "ASIAMARKERMARKER0001", MARKER_SECRET_KEY, world.region, MARKER_SESSION_TOKEN,
                dt.datetime(2001, 1, 1, tzinfo=dt.UTC),
            ),
            "bad region credentials": lambda: client.set_credentials(
                "ASIAMARKERMARKER0002", MARKER_SECRET_KEY, "not a region", MARKER_SESSION_TOKEN
            ),
            "seal under unknown handle": lambda: client.seal(MARKER_PLAINTEXT, handle="kh-00"),
        }  # fmt: skip
        for name, attempt in attempts.items():
            with pytest.raises(RPCError) as caught:
                attempt()
            seen[name] = f"{caught.value!s} {caught.value!r}"
        seen["health"] = repr(client.health())
        seen["describe"] = repr(client.describe())
        seen["client"] = repr(client)
    return seen


def _cmdlines(world: World) -> dict[str, str]:
    found = {}
    for name in world.logs:
        process = world.process(name)
        path = Path(f"/proc/{process.pid}/cmdline")
        if process.returncode is None and path.exists():
            found[f"argv of {name}"] = path.read_bytes().replace(b"\0", b" ").decode()
    return found


def test_no_secret_in_logs_errors_argv_or_output(world: World, key_id: str) -> None:
    seen = _provoke(world, key_id)
    secrets: dict[str, str | bytes] = dict(world_secrets(world))
    assert len(secrets) >= 3, "expected the admin secret and the parent's secret and token"
    secrets.update(
        marker_plaintext=MARKER_PLAINTEXT,
        marker_secret=MARKER_SECRET_KEY,
        marker_token=MARKER_SESSION_TOKEN,
    )
    logs = read_logs(sorted(world.log_dir.glob("*.log")))
    assert {"kms", "relay", "enclave", "credentials"} <= {Path(p).stem for p in logs}
    texts = {**logs, **_cmdlines(world), **seen}
    found = leaks(texts, secrets)
    assert not found, found
    total = sum(len(t) for t in texts.values())
    print(f"\nsecrets: {len(secrets)} values, {len(texts)} texts ({total} chars) scanned, 0 found")


def test_the_scan_finds_a_planted_secret(world: World) -> None:
    """The scan itself works: a secret written into a log is reported, in any encoding."""
    planted = world.log_dir / "planted.txt"
    planted.write_text(f"oops {MARKER_PLAINTEXT.hex()} and {MARKER_SECRET_KEY}\n")
    try:
        found = leaks(
            read_logs([planted]),
            {"plaintext": MARKER_PLAINTEXT, "secret": MARKER_SECRET_KEY, "absent": "nope-nope"},
        )
    finally:
        planted.unlink()
    assert sorted(f.split(" in ")[0] for f in found) == ["plaintext", "secret"]
