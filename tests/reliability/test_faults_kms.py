"""KMS misbehaving (through the local KMS's fault plan): errors, throttling, slowness, resets.

The enclave retries up to `--kms-max-attempts` (4 by default) in total, so a fault that outlasts
the retries reaches the client as the typed KMS error, a shorter one is invisible, and in every
case the next good request succeeds. "Bounded" is checked by counting the faults KMS used up.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from nitrokms.parent.rpc import EnclaveClient
from nitrokms.parent.rpc.errors import RemoteError
from nitrokms.sim.kms.faults import remaining, write_plan

ATTEMPTS = 4  # the enclave's default --kms-max-attempts
THROTTLED = {"status": 400, "type": "ThrottlingException", "message": "Rate exceeded"}
INTERNAL = {"status": 500, "type": "KMSInternalException", "message": "injected"}
UNAVAILABLE = {"status": 503, "type": "ServiceUnavailableException", "message": "injected"}
RESET = {"reset": True}


def _faults(fault: dict[str, Any], count: int) -> list[dict[str, Any]]:
    return [{"operation": "GenerateDataKey", **fault} for _ in range(count)]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (THROTTLED, "kms.ThrottlingException"),
        (INTERNAL, "kms.KMSInternalException"),
        (UNAVAILABLE, "kms.ServiceUnavailableException"),
        (RESET, "kms.Unreachable"),
    ],
    ids=["throttling", "http-500", "http-503", "connection-reset"],
)
def test_persistent_fault_gives_typed_error_after_bounded_retries(
    client: EnclaveClient, key_id: str, fault_plan: Path, fault: dict[str, Any], code: str
) -> None:
    write_plan(fault_plan, _faults(fault, ATTEMPTS + 2))
    with pytest.raises(RemoteError) as caught:
        client.generate_data_key(key_id)
    assert caught.value.code == code
    assert remaining(fault_plan) == 2, "the enclave made more or fewer attempts than its bound"
    write_plan(fault_plan, [])
    assert client.generate_data_key(key_id).handle


@pytest.mark.parametrize("fault", [THROTTLED, INTERNAL, RESET], ids=["throttling", "500", "reset"])
def test_transient_fault_is_retried_invisibly(
    client: EnclaveClient, key_id: str, fault_plan: Path, fault: dict[str, Any]
) -> None:
    write_plan(fault_plan, _faults(fault, ATTEMPTS - 1))
    assert client.generate_data_key(key_id).handle
    assert remaining(fault_plan) == 0


def test_slow_kms_is_waited_for(client: EnclaveClient, key_id: str, fault_plan: Path) -> None:
    write_plan(fault_plan, _faults({"delay_s": 2.0}, 1))
    started = time.monotonic()
    result = client.generate_data_key(key_id)
    assert result.handle
    assert time.monotonic() - started >= 2.0
    assert client.seal(b"after a slow KMS", handle=result.handle).envelope


def test_faults_during_unseal_reload_are_typed_and_recoverable(
    client: EnclaveClient, key_id: str, fault_plan: Path
) -> None:
    """Unseal of an envelope whose key is not held goes to KMS Decrypt; faults there are typed."""
    sealed = client.seal(b"payload", key_id=key_id, encryption_context={"a": "b"})
    assert sealed.handle is not None
    client.forget_key(sealed.handle)
    write_plan(fault_plan, [{"operation": "Decrypt", **THROTTLED} for _ in range(ATTEMPTS)])
    with pytest.raises(RemoteError) as caught:
        client.unseal(sealed.envelope, encryption_context={"a": "b"})
    assert caught.value.code == "kms.ThrottlingException"
    assert client.unseal(sealed.envelope, encryption_context={"a": "b"}) == b"payload"
