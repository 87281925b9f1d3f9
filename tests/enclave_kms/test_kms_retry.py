"""The lean path's retry rules against botocore's standard retry mode, case by case."""

from __future__ import annotations

import functools
import itertools

import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from botocore.retries import standard
from nitrokms.enclave import kms_retry

CODES = [
    None, "ThrottlingException", "LimitExceededException", "RequestTimeoutException",
    "PriorRequestNotComplete", "KMSInternalException", "NotFoundException",
    "InvalidCiphertextException", "AccessDeniedException", "DependencyTimeoutException",
    "UnsupportedOperationException", "SomethingNew", "400", "429", "500",
]  # fmt: skip
STATUSES = [400, 403, 404, 429, 500, 501, 502, 503, 504]
OPERATIONS = list(kms_retry.MODELED_ERRORS)


@pytest.fixture(scope="module")
def model():
    return botocore.session.Session().get_service_model("kms")


def context(model, operation, code, status, *, attempt=1, headers=None):
    response = AWSResponse("https://kms", status, headers or {}, None)
    parsed = {"Error": {"Code": code, "Message": ""}} if code is not None else {}
    return standard.RetryContext(
        attempt_number=attempt,
        operation_model=model.operation_model(operation),
        http_response=response,
        parsed_response=parsed,
    )


def test_modeled_errors_are_botocore_s(model):
    for operation, names in kms_retry.MODELED_ERRORS.items():
        shapes = model.operation_model(operation).error_shapes
        assert names == {shape.name for shape in shapes}, operation
        assert not any(shape.metadata.get("retryable") for shape in shapes)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_retryable_and_throttling_as_botocore_decides(model, operation):
    conditions = standard.StandardRetryConditions(max_attempts=10)
    throttling = standard.ThrottlingErrorDetector(standard.RetryEventAdapter())
    for code, status in itertools.product(CODES, STATUSES):
        ctx = context(model, operation, code, status)
        assert kms_retry.is_retryable(operation, code, status) == conditions.is_retryable(ctx), (
            code, status,
        )  # fmt: skip
        assert kms_retry.is_throttling(operation, code, status) == (
            throttling.is_throttling_error_from_context(ctx)
        ), (code, status)


def test_connection_failures_are_retryable():
    assert kms_retry.is_retryable("GenerateDataKey", None, None)
    assert not kms_retry.is_throttling("GenerateDataKey", None, None)


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 12])
@pytest.mark.parametrize("code", ["ThrottlingException", "KMSInternalException"])
@pytest.mark.parametrize("retry_after", [None, "10", "2500", "90000", "-5", "soon"])
def test_backoff_matches_botocore(model, attempt, code, retry_after):
    headers = {} if retry_after is None else {"x-amz-retry-after": retry_after}
    ctx = context(model, "GenerateDataKey", code, 500, attempt=attempt, headers=headers)
    detector = standard.ThrottlingErrorDetector(standard.RetryEventAdapter())
    for draw in (0.0, 0.37, 0.999):
        fixed = functools.partial(float, draw)
        theirs = standard.ExponentialBackoff(
            random=fixed, service_name="kms", throttling_detector=detector
        ).delay_amount(ctx)
        throttled = kms_retry.is_throttling("GenerateDataKey", code, 500)
        ours = kms_retry.backoff_s(attempt, throttled, retry_after, rand=fixed)
        assert ours == pytest.approx(theirs)


def test_quota_spends_and_refills_as_botocore_s():
    ours = kms_retry.RetryQuota()
    theirs = standard.quota.RetryQuota()
    for throttled in [False] * 30 + [True] * 20 + [False] * 10:
        taken = ours.acquire(throttled)
        cost = 5 if throttled else 14
        assert bool(taken) == theirs.acquire(cost)
        assert ours.available == theirs.available_capacity
    ours.release(14)
    theirs.release(14)
    ours.release(0)
    theirs.release(1)
    assert ours.available == theirs.available_capacity
