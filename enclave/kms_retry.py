"""When to retry a KMS call and how long to wait: botocore's "standard" retry mode, as data.

The same rules botocore 1.3x-1.4x applies to a KMS client created with
`retries={"mode": "standard", "total_max_attempts": N}` (botocore/retries/standard.py), so the
enclave's own KMS path retries exactly what a boto3 client would:
- retryable: the transient error codes, HTTP 500/502/503/504, a connection failure or timeout,
  the throttling error codes, and HTTP 429 whose error code is not one the operation models;
- backoff: full jitter, `random() * min(base * 2 ** (attempt - 1), 20)` seconds, base 1 s for
  throttling and 50 ms otherwise, raised to `x-amz-retry-after` (capped at 5 s more);
- a retry quota shared by every call of the client: 500 units, a retry costs 5 (throttling) or
  14, a success gives back what its retry took (or 1 unit when it needed none).
One deliberate difference: a certificate or host-name verification failure is not retried
(botocore retries it as a connection error); a man in the middle does not go away in 50 ms.
The tests check the tables against botocore's own.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping

TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"}
)
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException",
})  # fmt: skip
THROTTLING_STATUS = 429
_KEY_ERRORS = (
    "NotFoundException", "DisabledException", "KeyUnavailableException",
    "DependencyTimeoutException", "InvalidKeyUsageException", "InvalidGrantTokenException",
    "KMSInternalException", "KMSInvalidStateException", "DryRunOperationException",
)  # fmt: skip
# The errors each operation's model lists (botocore's kms service-2.json); none is "retryable".
MODELED_ERRORS: Mapping[str, frozenset[str]] = {
    "GenerateDataKey": frozenset(_KEY_ERRORS),
    "GenerateDataKeyWithoutPlaintext": frozenset(_KEY_ERRORS),
    "Decrypt": frozenset((*_KEY_ERRORS, "InvalidCiphertextException", "IncorrectKeyException")),
    "GenerateRandom": frozenset({
        "DependencyTimeoutException", "KMSInternalException", "UnsupportedOperationException",
        "CustomKeyStoreNotFoundException", "CustomKeyStoreInvalidStateException",
    }),
}  # fmt: skip
MAX_BACKOFF_S = 20.0
THROTTLING_BASE_S = 1.0
BASE_S = 0.05
RETRY_AFTER_HEADER = "x-amz-retry-after"
RETRY_AFTER_MAX_EXTRA_S = 5.0
QUOTA_CAPACITY = 500
RETRY_COST = 14
THROTTLING_RETRY_COST = 5
NO_RETRY_INCREMENT = 1


def is_throttling(operation: str, code: str | None, status: int | None) -> bool:
    if code in THROTTLING_CODES:
        return True
    return status == THROTTLING_STATUS and code not in MODELED_ERRORS.get(operation, ())


def is_retryable(operation: str, code: str | None, status: int | None) -> bool:
    """For an error response (`code` and `status`) or, with both None, a connection failure."""
    if code is None and status is None:
        return True
    return (
        code in TRANSIENT_CODES
        or status in TRANSIENT_STATUSES
        or is_throttling(operation, code, status)
    )


def backoff_s(
    attempt: int,
    throttled: bool,
    retry_after_ms: str | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retrying after failed attempt number `attempt` (1-based)."""
    base = THROTTLING_BASE_S if throttled else BASE_S
    delay: float = rand() * min(base * 2.0 ** (attempt - 1), MAX_BACKOFF_S)
    if retry_after_ms is not None:
        try:
            retry_after = int(retry_after_ms) / 1000.0
        except (ValueError, OverflowError):
            return delay
        if retry_after >= 0:
            return max(delay, min(retry_after, delay + RETRY_AFTER_MAX_EXTRA_S))
    return delay


class RetryQuota:
    """The client-wide retry budget (thread-safe)."""

    def __init__(self, capacity: int = QUOTA_CAPACITY) -> None:
        self.capacity = self.available = capacity
        self._lock = threading.Lock()

    def acquire(self, throttled: bool) -> int:
        """Units taken for one retry, or 0 when the budget is spent (then: do not retry)."""
        cost = THROTTLING_RETRY_COST if throttled else RETRY_COST
        with self._lock:
            if cost > self.available:
                return 0
            self.available -= cost
            return cost

    def release(self, taken: int) -> None:
        """After a successful call: give back the last retry's units, or one unit without one."""
        with self._lock:
            self.available = min(self.capacity, self.available + (taken or NO_RETRY_INCREMENT))
