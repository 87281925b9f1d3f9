"""The request-handling layer of moto's split: JSON parameters in, JSON result out.

`KMSApplication.handle` is sans-I/O: it takes the received request (method, target, headers, body)
and returns the HTTP status and JSON body; the server only moves bytes. It authenticates (SigV4),
finds the operation, parses the JSON and hands it to the group of operations that serves it
(`OPERATION_GROUPS`; the order of checks inside every operation is in `operations.py`).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nitrokms.sim.kms.aliases import AliasOperations
from nitrokms.sim.kms.asymmetric import AsymmetricOperations
from nitrokms.sim.kms.auth import Credential, ReceivedRequest, SigV4Verifier
from nitrokms.sim.kms.authorizer import Authorizer
from nitrokms.sim.kms.dataplane import DataPlane
from nitrokms.sim.kms.exceptions import (
    KMSInternalException,
    KMSServiceError,
    SerializationException,
    UnknownOperationException,
)
from nitrokms.sim.kms.grants import GrantOperations
from nitrokms.sim.kms.macs import MacOperations
from nitrokms.sim.kms.management import KeyManagement
from nitrokms.sim.kms.models import KeyStore
from nitrokms.sim.kms.operations import Operations
from nitrokms.sim.kms.params import Params
from nitrokms.sim.kms.recipient import RecipientReader
from nitrokms.sim.kms.rotation import RotationOperations
from nitrokms.sim.kms.tags import TagOperations

log = logging.getLogger("nitrokms.sim.kms")

TARGET_PREFIX = "TrentService."
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
OPERATION_GROUPS: tuple[type[Operations], ...] = (
    KeyManagement, AliasOperations, TagOperations, RotationOperations, GrantOperations,
    DataPlane, AsymmetricOperations, MacOperations,
)  # fmt: skip
OPERATIONS = tuple(name for group in OPERATION_GROUPS for name in group.OPERATIONS)

Operation = Callable[[Params, Credential], dict[str, Any]]


@dataclass(frozen=True)
class Response:
    status: int
    body: dict[str, Any]

    def encode(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


class KMSApplication:
    """One account's KMS in one region: authentication, authorisation and the operations."""

    def __init__(
        self,
        store: KeyStore,
        verifier: SigV4Verifier,
        recipients: RecipientReader,
        *,
        encrypt_for_recipient: Callable[[bytes, bytes], bytes] | None = None,
    ) -> None:
        self.store = store
        self._verifier = verifier
        authorizer = Authorizer(store.grants)
        self._operations: dict[str, Operation] = {}
        for group in OPERATION_GROUPS:
            handler = group(store, authorizer, recipients, encrypt_for_recipient)
            self._operations |= {name: getattr(handler, f"op_{name}") for name in group.OPERATIONS}

    def handle(self, request: ReceivedRequest) -> Response:
        """Answer one request; every failure becomes a KMS error reply, never an exception."""
        try:
            return Response(200, self._dispatch(request))
        except KMSServiceError as exc:
            return Response(exc.status, exc.to_json())
        except Exception:
            log.exception("internal error handling %s", request.header("X-Amz-Target"))
            internal = KMSInternalException()
            return Response(internal.status, internal.to_json())

    def _dispatch(self, request: ReceivedRequest) -> dict[str, Any]:
        caller = self._verifier.authenticate(request)
        target = request.header("X-Amz-Target") or ""
        operation = target.removeprefix(TARGET_PREFIX)
        if request.method != "POST" or not target.startswith(TARGET_PREFIX):
            raise UnknownOperationException("Expected POST with X-Amz-Target TrentService.<Op>")
        handler = self._operations.get(operation)
        if handler is None:
            raise UnknownOperationException(f"Unknown operation {operation[:64]!r}")
        try:
            raw = json.loads(request.body or b"{}")
        except (ValueError, RecursionError):
            raise SerializationException("The request body is not valid JSON") from None
        if not isinstance(raw, dict):
            raise SerializationException("The request body must be a JSON object")
        return handler(Params(raw), caller)


def request_id() -> str:
    return str(uuid.uuid4())
