"""Attested fetches through the whole world under concurrency, with RSS sampled throughout.

An attested fetch is GenerateDataKey with Recipient: a fresh attestation document from the NSM,
KMS over TLS through the relay, CMS decrypted inside the enclave (then ForgetKey, so the
keyring's size is not what is measured). The bounded run is in `make test`; the 10,000-fetch
run at concurrency 64 is `slow` (`make soak`).
"""

from __future__ import annotations

import asyncio

import pytest
from nitrokms.sim.world import World

from tests.reliability.support import CONTEXT, gdk_call, run_load, sample_rss

# RSS may grow while caches, pools and allocator arenas warm up, but not with the request count.
MAX_RSS_GROWTH_KIB = 96 * 1024


def _load(world: World, key_id: str, total: int, concurrency: int) -> None:
    pids = {"enclave": world.enclave_pid, "relay": world.process("relay").pid}
    with sample_rss(pids) as rss:
        result = asyncio.run(
            run_load(
                world.enclave_address, gdk_call(key_id, CONTEXT), total=total,
                concurrency=concurrency, connections=max(1, concurrency // 16),
            )
        )  # fmt: skip
    rate = result.total / result.seconds
    print(
        f"\nload: {result.ok}/{total} attested fetches at concurrency {concurrency} in "
        f"{result.seconds:.1f} s ({rate:.0f}/s), errors {dict(result.errors)}; "
        f"enclave RSS {rss['enclave']}; relay RSS {rss['relay']}"
    )
    assert result.ok == total, result.messages[:5]
    assert not result.errors
    for name, series in rss.items():
        assert series.peak - series.start < MAX_RSS_GROWTH_KIB, f"{name}: {series}"


def test_bounded_load(world: World, key_id: str) -> None:
    _load(world, key_id, total=300, concurrency=16)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak_ten_thousand_attested_fetches_at_concurrency_64(world: World, key_id: str) -> None:
    _load(world, key_id, total=10_000, concurrency=64)
